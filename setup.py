"""Build of the optional native kernels; everything else is in pyproject.toml.

``facesearch._native`` (``facesearch/_native.c``, plain C, no dependency) speeds up SFace's
PReLUs. It is optional: without a C compiler the build goes on without it and facesearch runs
the PyTorch equivalent (same results, a slower embedder).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("facesearch._native", ["facesearch/_native.c"], optional=True)],
)
