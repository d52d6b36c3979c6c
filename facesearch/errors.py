"""One base error and a few specific ones.

Every error says what was wrong, the value seen, and what to do. The CLI turns any
:class:`FacesearchError` into a clean message and a non-zero exit; nothing else is caught.
"""

from __future__ import annotations

from pathlib import Path


class FacesearchError(Exception):
    """Base class of every error facesearch raises on purpose."""


class ImageError(FacesearchError):
    """A file or buffer could not be decoded into an image.

    ``source`` names the file (or ``<bytes>``), ``reason`` says why: empty, truncated,
    not an image, too large, unsupported mode.
    """

    def __init__(self, source: str | Path, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"cannot read image {self.source}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across processes
        return (type(self), (self.source, self.reason))


class NoFaceError(FacesearchError):
    """A photo in which a face was required has none."""

    def __init__(self, source: str | Path, detail: str = "") -> None:
        self.source = str(source)
        self.detail = detail
        msg = f"no face found in {self.source}"
        super().__init__(msg + (f" ({detail})" if detail else ""))

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across processes
        return (type(self), (self.source, self.detail))


class ModelError(FacesearchError):
    """A model file is missing, corrupt, or does not fit what it is used for."""


class IncompatibleModelError(ModelError):
    """Vectors of two models that were not trained to be comparable were mixed."""


class CollectionError(FacesearchError):
    """A collection is missing, locked, of an older schema, or otherwise unusable."""


class IndexMismatchError(CollectionError):
    """The vector index does not match the SQL store it is a cache of."""


class OptionalDependencyError(FacesearchError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the
    ``pip install`` to run."""
