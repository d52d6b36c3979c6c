"""One base error and a few specific ones.

Every error says what was wrong, the value seen, and what to do. The CLI turns any
:class:`FacesearchError` into a clean message and a non-zero exit; nothing else is caught.
"""

from __future__ import annotations

import errno
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


class ArgumentError(FacesearchError, ValueError):
    """An argument of a library call is out of range or malformed (a server answers 422)."""


def require_positive(**values: int) -> None:
    """:class:`ArgumentError` naming the first of ``values`` (name=value) that is below 1."""
    for name, value in values.items():
        if value < 1:
            raise ArgumentError(f"{name} must be >= 1, got {value}")


class ModelError(FacesearchError):
    """A model file is missing, corrupt, or does not fit what it is used for."""


class IncompatibleModelError(ModelError):
    """Vectors of two models that were not trained to be comparable were mixed."""


class CollectionError(FacesearchError):
    """A collection is missing, locked, of an older schema, or otherwise unusable."""


class StorageError(CollectionError):
    """The database or the disk under a collection failed: unreachable or lost server, a full
    disk, a corrupt file, a malformed database URL (a server answers 503). The message says
    what, where and what to do; what was committed before is kept."""


class NotFoundError(CollectionError):
    """An unknown face, photo, person or cluster (by id or name), or a missing collection.

    ``kind`` names what was looked up (``face``, ``photo``, ``person``, ``cluster``,
    ``collection``), ``key`` the id or name given.
    """

    def __init__(self, kind: str, key: object, message: str | None = None) -> None:
        self.kind = kind
        self.key = key
        super().__init__(message or f"no {kind} {key!r}")

    def __reduce__(self) -> tuple[type, tuple[str, object, str]]:  # picklable across processes
        return (type(self), (self.kind, self.key, str(self)))


class LockedError(CollectionError):
    """Another writer holds the collection's writer lock (a server answers 409)."""


class IndexMismatchError(CollectionError):
    """The vector index does not match the SQL store it is a cache of."""


def describe_os_error(exc: OSError, doing: str = "") -> str:
    """One line for a file-system failure: what failed, where, and what to do.

    ``doing`` says what was being done (``"writing the vector index"``)."""
    where = exc.filename if exc.filename is not None else ""
    head = f"{doing} {where}".strip() or "a file operation"
    code = exc.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return (
            f"disk full: no space left for {head}: free some space and run the command again "
            "(what was committed before is kept)"
        )
    if code == errno.ENOTDIR:
        return f"{head}: a part of this path is a file, not a folder: give a folder"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {head}: check the permissions of the folder"
    if code == errno.EROFS:
        return f"read-only file system: {head}: use a writable folder"
    return f"{head}: {exc.strerror or exc}"


class OptionalDependencyError(FacesearchError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the
    ``pip install`` to run."""
