"""The optional native kernels (``facesearch/_native.c``), loaded once; no torch import.

The extension is built when the package is installed and a C compiler is there. Every kernel has a
Python equivalent, used when :data:`NATIVE` is ``None``: :func:`facesearch.models.kernels.prelu_`
(``torch.prelu``) and :func:`facesearch.align.warp_affine` (numpy) give the same results bit for
bit; the convolutions of :mod:`facesearch.models.npengine` (numpy) agree to float32 rounding.
Without the extension the numpy engine is 2-4x slower per face, so bulk work (``facesearch index``)
then loads torch instead.
"""

from __future__ import annotations

import logging
from types import ModuleType

logger = logging.getLogger(__name__)


def _load() -> ModuleType | None:
    try:
        from facesearch import _native  # type: ignore[attr-defined]
    except ImportError:  # not built (no C compiler at install): the Python kernels instead
        logger.debug("facesearch._native is not built: its kernels run in PyTorch and numpy")
        return None
    return _native


#: The extension module, or ``None`` when it is not built.
NATIVE: ModuleType | None = _load()


def native_available() -> bool:
    """Whether the native kernels are built and loaded."""
    return NATIVE is not None


__all__ = ["NATIVE", "native_available"]
