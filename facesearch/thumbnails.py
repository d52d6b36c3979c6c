"""JPEG face crops and downscaled photos, cached on disk inside a collection folder.

A face crop is a square around the face box, grown by :data:`CROP_MARGIN` of the box's larger
side on every side (hair and chin show, which is what a person recognises), cut from the photo
the face was indexed from and scaled to ``size`` x ``size`` pixels. Where the square leaves
the photo it is filled with grey, so the face stays centred. A photo image is the whole photo
scaled to a long side of at most ``max_side`` pixels. Both come out as JPEG bytes.

Cache layout (``FOLDER`` is the collection folder)::

    FOLDER/thumbnails/faces/<face_id % 1000>/<face_id>_<size>_<stamp>.jpg
    FOLDER/thumbnails/photos/<photo_id % 1000>/<photo_id>_<max_side>_<stamp>.jpg

``stamp`` is the photo file's size and modification time in nanoseconds (hex) when the crop
was made: a photo that changes on disk gets a new stamp, so its old crops are never served
(they are deleted when the new one is written). Before cutting, the file is compared with what
was recorded when it was indexed (size, and the modification time when given): a photo
replaced by another since then raises :class:`PhotoChangedError` instead of cropping the old
box out of a new picture. A photo whose file is gone keeps serving the crops made while it was
there. Files are written atomically (temp file + rename), so concurrent readers see a whole
crop or none. Entries are found by integer id only: no part of a path comes from a caller.

Nothing here touches the store: callers pass what they read from the collection.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.errors import FacesearchError, ImageError

logger = logging.getLogger(__name__)

#: Margin around a face box in a crop, as a fraction of the box's larger side.
CROP_MARGIN: float = 0.25
#: Allowed crop sizes (pixels per side) and the default.
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 32, 512, 160
#: Allowed long sides of a photo image and the default.
MIN_SIDE, MAX_SIDE, DEFAULT_SIDE = 64, 4096, 1600
#: JPEG quality of every file written.
JPEG_QUALITY: int = 88
#: Grey of the area outside the photo in a crop.
_FILL = 128
#: Decoded photos kept in memory (a page of thumbnails asks for several faces of one photo).
_DECODED_KEPT = 3
_SUBDIR = "thumbnails"
_SHARDS = 1000


class PhotoChangedError(FacesearchError):
    """The photo file differs from the one indexed (or is gone and nothing is cached)."""


@dataclass(frozen=True, slots=True)
class PhotoFile:
    """What the collection recorded about a photo file: path, byte size and (optionally)
    modification time in seconds, as the indexer saw them."""

    id: int
    path: str
    size: int | None = None
    mtime: float | None = None


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_size:x}-{st.st_mtime_ns:x}"


def _check_size(size: int, lo: int, hi: int, what: str) -> int:
    if not lo <= int(size) <= hi:
        raise FacesearchError(f"{what} must be in {lo}..{hi} pixels, got {size}")
    return int(size)


def square_crop_box(box: Sequence[float], margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """The square ``(x1, y1, x2, y2)`` (integers, may leave the photo) centred on ``box``,
    of side ``max(w, h) * (1 + 2 * margin)``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = int(np.floor(cx - side / 2.0)), int(np.floor(cy - side / 2.0))
    n = int(np.ceil(side))
    return left, top, left + n, top + n


def cut_square(image: np.ndarray, square: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of ``square`` from ``image`` ``(H, W, 3) uint8``, grey where it leaves the
    image: ``(side, side, 3) uint8``."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = square
    out = np.full((y2 - y1, x2 - x1, 3), _FILL, dtype=np.uint8)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if sx1 < sx2 and sy1 < sy2:
        out[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    return out


def _jpeg(pixels: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    import io

    from PIL import Image

    im = Image.fromarray(pixels)
    if size is not None and im.size != size:
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=False)
    return buf.getvalue()


class ThumbnailCache:
    """Face crops and photo images of one collection, cached under ``folder/thumbnails``.

    Thread-safe: any number of threads may ask at once (a crop asked twice at the same time
    is made twice and written once last; both answers are the same bytes' worth of picture).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.root = Path(folder) / _SUBDIR
        self._decoded: OrderedDict[tuple[str, str], tuple[np.ndarray, float]] = OrderedDict()
        self._decoded_lock = threading.Lock()

    # -- paths ----------------------------------------------------------------------------------

    def _dir(self, kind: str, key: int) -> Path:
        return self.root / kind / f"{int(key) % _SHARDS:03d}"

    def _name(self, key: int, size: int, stamp: str) -> str:
        return f"{int(key)}_{int(size)}_{stamp}.jpg"

    # -- public ---------------------------------------------------------------------------------

    def cached_face(self, face_id: int, photo_path: str, size: int = DEFAULT_SIZE) -> bytes | None:
        """The cached crop of face ``face_id`` for the photo file as it is now, or ``None``
        when it must be made (:meth:`face`). Costs a ``stat`` and a read."""
        size = _check_size(size, MIN_SIZE, MAX_SIZE, "thumbnail size")
        return self._lookup("faces", face_id, size, photo_path)[0]

    def face(
        self,
        face_id: int,
        box: Sequence[float],
        photo: PhotoFile,
        size: int = DEFAULT_SIZE,
    ) -> bytes:
        """The JPEG crop of face ``face_id`` (``box`` ``[x1, y1, x2, y2]`` in pixels of the
        oriented photo), ``size`` x ``size`` pixels; made and cached on first use.

        Raises :class:`PhotoChangedError` when the photo file is gone (and nothing is cached)
        or is not the one indexed, :class:`~facesearch.errors.ImageError` when it cannot be
        decoded any more.
        """
        size = _check_size(size, MIN_SIZE, MAX_SIZE, "thumbnail size")
        data, st, path = self._lookup("faces", face_id, size, photo.path, photo.id)
        if data is not None:
            return data
        assert st is not None and path is not None
        self._check_photo(photo, st)
        square = square_crop_box(box)
        image, scale = self._decode(photo.path, st, self._long_side(photo.path, square, size))
        if scale != 1.0:
            x1, y1, x2, _ = (int(round(v / scale)) for v in square)
            square = (x1, y1, x2, y1 + (x2 - x1))
        data = _jpeg(cut_square(image, square), (size, size))
        self._store(path, data, prefix=f"{int(face_id)}_{size}_")
        return data

    def cached_photo(
        self, photo_id: int, photo_path: str, max_side: int = DEFAULT_SIDE
    ) -> bytes | None:
        """The cached image of a photo as its file is now, or ``None`` (:meth:`photo`)."""
        max_side = _check_size(max_side, MIN_SIDE, MAX_SIDE, "image size")
        return self._lookup("photos", photo_id, max_side, photo_path)[0]

    def photo(self, photo: PhotoFile, max_side: int = DEFAULT_SIDE) -> bytes:
        """The JPEG of the whole photo, long side at most ``max_side``; cached on first use."""
        max_side = _check_size(max_side, MIN_SIDE, MAX_SIDE, "image size")
        data, st, path = self._lookup("photos", photo.id, max_side, photo.path, photo.id)
        if data is not None:
            return data
        assert st is not None and path is not None
        self._check_photo(photo, st)
        image, _ = self._decode(photo.path, st, max_side)
        h, w = image.shape[:2]
        f = min(1.0, max_side / max(h, w))
        out = (max(1, round(w * f)), max(1, round(h * f)))
        data = _jpeg(image, out)
        self._store(path, data, prefix=f"{int(photo.id)}_{max_side}_")
        return data

    def forget_faces(self, face_ids: Sequence[int]) -> int:
        """Delete every cached crop of these faces (any size). Returns the files deleted."""
        n = 0
        for fid in face_ids:
            folder = self._dir("faces", fid)
            for p in _entries(folder, f"{int(fid)}_"):
                p.unlink(missing_ok=True)
                n += 1
        return n

    def forget_photos(self, photo_ids: Sequence[int]) -> int:
        """Delete every cached image of these photos. Returns the files deleted."""
        n = 0
        for pid in photo_ids:
            for p in _entries(self._dir("photos", pid), f"{int(pid)}_"):
                p.unlink(missing_ok=True)
                n += 1
        return n

    def cached_face_ids(self) -> list[int]:
        """Ids of the faces that have at least one cached crop (sorted)."""
        ids: set[int] = set()
        base = self.root / "faces"
        if not base.is_dir():
            return []
        for shard in base.iterdir():
            if shard.is_dir():
                for p in shard.glob("*.jpg"):
                    head = p.name.split("_", 1)[0]
                    if head.isdigit():
                        ids.add(int(head))
        return sorted(ids)

    # -- internals --------------------------------------------------------------------------------

    def _lookup(
        self, kind: str, key: int, size: int, photo_path: str, photo_id: int | None = None
    ) -> tuple[bytes | None, os.stat_result | None, Path | None]:
        """``(cached bytes, None, None)``, or ``(None, stat of the photo, path to write)``
        when nothing is cached for the file as it is now. A photo whose file is gone is
        served its newest cached entry of that size; with none, :class:`PhotoChangedError`
        when ``photo_id`` is given (a caller that would make one), else ``(None, None, None)``.
        """
        folder = self._dir(kind, key)
        try:
            st = os.stat(photo_path)
        except FileNotFoundError:
            kept = sorted(_entries(folder, f"{int(key)}_{size}_"), key=_mtime, reverse=True)
            for p in kept:
                data = _read(p)
                if data is not None:
                    return data, None, None
            if photo_id is None:
                return None, None, None
            raise PhotoChangedError(
                f"photo {photo_id} ({photo_path}) is gone since it was indexed and no crop of "
                "it is cached: put the file back, or remove it with `facesearch index PATH --prune`"
            ) from None
        except OSError as exc:
            raise ImageError(photo_path, f"cannot read: {exc.strerror or exc}") from exc
        path = folder / self._name(key, size, _stamp(st))
        return _read(path), st, path

    @staticmethod
    def _check_photo(photo: PhotoFile, st: os.stat_result) -> None:
        changed = []
        if photo.size is not None and st.st_size != photo.size:
            changed.append(f"{photo.size} bytes when indexed, {st.st_size} now")
        if photo.mtime is not None and abs(st.st_mtime - photo.mtime) > 1e-3:
            changed.append("modified since it was indexed")
        if changed:
            raise PhotoChangedError(
                f"photo {photo.id} ({photo.path}) changed since it was indexed "
                f"({'; '.join(changed)}): index it again (`facesearch index {photo.path}`)"
            )

    @staticmethod
    def _long_side(path: str, square: tuple[int, int, int, int], size: int) -> int | None:
        """The smallest long side to decode the photo at so that the crop keeps ``size``
        pixels across (JPEG DCT scaling makes cutting a small face out of a big photo cheap);
        ``None``: full resolution."""
        from facesearch.image import image_size

        side = square[2] - square[0]
        if side <= 2 * size:
            return None
        w, h = image_size(path)
        return max(1, -(-max(w, h) * size // side))

    def _decode(
        self, path: str, st: os.stat_result, long_side: int | None
    ) -> tuple[np.ndarray, float]:
        """``(image, scale)``: the oriented photo decoded with a long side of at least
        ``long_side`` (``None``: full resolution); ``scale`` is full-resolution pixels per
        pixel of ``image`` (1, 2, 4 or 8). The last few decodes are kept and reused."""
        from facesearch.image import load_image, load_image_reduced

        key = (path, _stamp(st))
        with self._decoded_lock:
            hit = self._decoded.get(key)
            if hit is not None and (
                hit[1] == 1.0 or (long_side is not None and max(hit[0].shape[:2]) >= long_side)
            ):
                self._decoded.move_to_end(key)
                return hit
        if long_side is None:
            decoded: tuple[np.ndarray, float] = (load_image(path), 1.0)
        else:
            decoded = load_image_reduced(path, long_side)
        with self._decoded_lock:
            self._decoded[key] = decoded
            self._decoded.move_to_end(key)
            while len(self._decoded) > _DECODED_KEPT:
                self._decoded.popitem(last=False)
        return decoded

    @staticmethod
    def _store(path: Path, data: bytes, *, prefix: str) -> None:
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jpg", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for old in _entries(folder, prefix):  # crops of an older version of the photo
            if old != path:
                old.unlink(missing_ok=True)


def _entries(folder: Path, prefix: str) -> list[Path]:
    try:
        return [
            folder / n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(".jpg")
        ]
    except FileNotFoundError:
        return []


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


__all__ = [
    "CROP_MARGIN",
    "DEFAULT_SIDE",
    "DEFAULT_SIZE",
    "PhotoChangedError",
    "PhotoFile",
    "ThumbnailCache",
    "cut_square",
    "square_crop_box",
]
