"""Build of the optional native kernels; everything else is in pyproject.toml.

``facesearch._native`` (``facesearch/_native.c``, plain C, no dependency) holds the
convolutions of the numpy engine, SFace's PReLUs for PyTorch and the face alignment. It is
optional: without a C compiler the build goes on without it and facesearch runs the PyTorch and
numpy equivalents (same results to float32 rounding, slower).
"""

import os

from setuptools import Extension, setup

# No fused multiply-adds the source does not write: the warp must round as the numpy code does.
FLAGS = [] if os.name == "nt" else ["-ffp-contract=off"]

setup(
    ext_modules=[
        Extension(
            "facesearch._native",
            ["facesearch/_native.c"],
            extra_compile_args=FLAGS,
            optional=True,
        )
    ],
)
