"""Decode any supported image file (or bytes) to an RGB ``(H, W, 3) uint8`` array.

Formats: JPEG, PNG (first frame of an APNG), WebP, BMP, TIFF (first page), GIF (first
frame), PGM/PPM/PBM, HEIC/HEIF (through ``pillow-heif``, imported and registered with
Pillow only when a HEIF file is met, so ``import facesearch.image`` stays fast) and AVIF
when Pillow is built with it (Pillow >= 11.3 wheels).

What every decode does:

- **EXIF orientation** is applied (the same table as :func:`PIL.ImageOps.exif_transpose`;
  Pillow also reads the orientation from XMP when there is no EXIF). HEIF files come
  out of libheif already rotated. Coordinates everywhere in facesearch are pixels of
  this oriented image.
- **Pixel modes** all become RGB uint8: greyscale and bilevel are copied into the three
  channels; palette images are expanded; CMYK and YCbCr are converted by Pillow
  (no ICC colour management, like OpenCV); 16-bit images (``I;16*``) are *scaled*,
  ``round(v * 255 / 65535)``, never clipped; 32-bit integer images (``I``) whose values
  fit 0..65535 are taken as 16-bit (that is how Pillow reads 16-bit PGM), others are
  stretched linearly from their minimum to their maximum; float images (``F``) in
  [0, 1] are multiplied by 255, others stretched the same way. 16-bit RGB(A) PNGs are
  reduced to 8 bits by Pillow itself (high byte).
- **Transparency** (RGBA, LA, PA, palette or colour-key transparency) is composited on
  **white**. OpenCV's ``imread`` (the reference pipeline) drops alpha instead, keeping
  whatever colour is stored under transparent pixels; for a fully opaque image both give
  the same pixels, so parity is unaffected. For a cut-out portrait the colour under the
  transparent background is arbitrary (often black, sometimes leftovers of an edit);
  white is what a viewer shows, gives the face a clean, uniform surround, and never
  resurrects hidden content. Half-transparent edge pixels are blended, not hardened.

What raises :class:`~facesearch.errors.ImageError` (``source`` names the file, or
``<bytes>``, and ``reason`` starts with a short stable word):

- ``file not found``, ``is a directory``, ``permission denied``, ``empty file``;
- ``not an image`` (no known signature; a known signature with a broken header says
  ``corrupt`` instead); ``HEIC/HEIF`` without ``pillow-heif`` says what to install;
- ``truncated``: the file ends before the pixel data does. A truncated JPEG is an error,
  never a half-grey image. (This relies on Pillow's default
  ``ImageFile.LOAD_TRUNCATED_IMAGES = False``; code that sets it to True process-wide
  will get padded images from Pillow, and this module cannot tell.)
- ``too large``: the declared width x height exceeds ``max_pixels`` (default
  :data:`MAX_PIXELS`). The check reads only the header, before any pixel is decoded:
  a decompression bomb never allocates. Pillow has its own process-wide hard limit
  (``2 * PIL.Image.MAX_IMAGE_PIXELS``, the same 178,956,970 px by default); a
  ``max_pixels`` above it also needs that raised.
- ``corrupt``: any other decoder failure. ``out of memory`` if the decode runs out.

Pillow's own exceptions never escape as other types, and its warnings (a
decompression-bomb warning, malformed EXIF, ...) are captured and logged at DEBUG level
naming the file. Python's warning filters are process-global before 3.14, so the
capture is done under a lock and covers only the cheap header and EXIF steps; the pixel
decoding itself runs unlocked, so threads decode in parallel.

For detection on big photos, :func:`load_image_reduced` decodes JPEGs directly at 1/2,
1/4 or 1/8 size with libjpeg's DCT scaling (Pillow's *draft* mode), several times
faster than a full decode followed by a resize.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from facesearch.errors import ImageError

log = logging.getLogger(__name__)

#: A path, or the whole content of an image file in memory.
Source = str | os.PathLike[str] | bytes | bytearray | memoryview

#: Default decompression-bomb limit in pixels (width x height as declared by the file
#: header): 178,956,970 px, Pillow's own default hard limit, e.g. 16384 x 10922. A
#: 100-megapixel camera frame fits; decoding one at the limit needs about 1.3 GB.
MAX_PIXELS: int = 178_956_970

#: Lower-case file suffixes :func:`load_image` reads; the folder walker indexes these.
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif",
        ".png", ".apng",
        ".webp",
        ".bmp", ".dib",
        ".tif", ".tiff",
        ".gif",
        ".pgm", ".ppm", ".pbm", ".pnm",
        ".heic", ".heif", ".hif",
        ".avif",
    }
)  # fmt: skip

#: EXIF orientation -> the transpose that undoes it (as PIL.ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112

#: ISO-BMFF major brands of HEIF still images and sequences (as pillow-heif accepts them).
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)

#: File signatures, only to word the error for a file Pillow cannot identify.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)

_WARNINGS_LOCK = threading.Lock()
_HEIF_LOCK = threading.Lock()
_heif_registered = False


# --------------------------------------------------------------------------- public API


def default_workers() -> int:
    """Threads reading and decoding photos: one per core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def load_image(source: Source, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` (a path or the bytes of a file) at full resolution.

    Returns a new, writeable, C-contiguous ``(H, W, 3) uint8`` RGB array, EXIF
    orientation applied. Raises :class:`ImageError` (see the module docstring for the
    reasons) and nothing else for a bad file.
    """
    image, _ = _load(source, max_pixels=max_pixels, long_side=None)
    return image


def load_image_reduced(
    source: Source, long_side: int, *, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, float]:
    """Decode cheaply at a reduced size whose long side is still ``>= long_side``.

    A JPEG is decoded at the smallest DCT scale 1/2, 1/4 or 1/8 that keeps its long
    side at least ``long_side`` pixels (libjpeg scales while decoding, which is several
    times faster than decoding in full and resizing). Other formats, and JPEGs less
    than twice ``long_side``, come back at full resolution. The caller resizes further
    if it needs an exact size.

    Returns ``(image, scale)``: ``image`` as :func:`load_image` gives it and ``scale``
    (1.0, 2.0, 4.0 or 8.0), the full-resolution pixels per returned pixel, the same on
    both axes. A point ``(x, y)`` in ``image`` (pixel edges on integers, as ``cv2.resize``
    maps them) is ``(x * scale, y * scale)`` in the full-resolution oriented photo.
    The ``max_pixels`` check applies to the full declared size.
    """
    if long_side < 1:
        raise ValueError(f"long_side must be >= 1, got {long_side}")
    return _load(source, max_pixels=max_pixels, long_side=long_side)


def image_size(source: Source) -> tuple[int, int]:
    """``(width, height)`` of the image after EXIF orientation, from the header only.

    Cheap: no pixel is decoded (for a PNG, an EXIF chunk placed after the pixel data is
    not seen; writers put it before). Raises :class:`ImageError` like :func:`load_image`,
    including ``too large`` beyond Pillow's own hard limit, but applies no ``max_pixels``.
    """
    name = _source_name(source)
    with _open_source(source, name) as fp:
        try:
            with _capture_warnings(name):
                im = _open_image(fp, name)
                orientation = _orientation(im, header_only=True)
        except ImageError:
            raise
        except Exception as e:  # Pillow raises assorted types on malformed input
            raise _classify(name, e, fp) from e
        width, height = im.size
        im.close()
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# --------------------------------------------------------------------------- internals


def _source_name(source: Source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return os.fspath(source)


@contextmanager
def _open_source(source: Source, name: str) -> Iterator[IO[bytes]]:
    """A binary file object over ``source``, with file-system problems as ImageError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(name, "empty file (0 bytes)")
        yield io.BytesIO(source)
        return
    try:
        st = os.stat(source)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(name, "is a directory, not an image file")
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            raise ImageError(name, "empty file (0 bytes)")
        fp = open(source, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as e:
        raise ImageError(name, "file not found") from e
    except IsADirectoryError as e:
        raise ImageError(name, "is a directory, not an image file") from e
    except PermissionError as e:
        raise ImageError(name, "permission denied") from e
    except OSError as e:
        raise ImageError(name, f"cannot open the file ({e.strerror or e})") from e
    with fp:
        yield fp


@contextmanager
def _capture_warnings(name: str) -> Iterator[None]:
    """Turn Pillow warnings into DEBUG log lines naming the file (thread-safe)."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        log.debug("%s: %s: %s", name, w.category.__name__, w.message)


def _ensure_heif(name: str) -> None:
    """Import pillow-heif and register its Pillow opener, once per process."""
    global _heif_registered
    with _HEIF_LOCK:
        if _heif_registered:
            return
        try:
            import pillow_heif
        except ImportError as e:
            raise ImageError(
                name, "HEIC/HEIF image, but pillow-heif is not installed (pip install pillow-heif)"
            ) from e
        pillow_heif.register_heif_opener()
        _heif_registered = True
        log.debug("registered the pillow-heif opener")


def _open_image(fp: IO[bytes], name: str) -> Image.Image:
    """Image.open (header only), registering the HEIF opener first if the file is HEIF."""
    head = fp.read(12)
    fp.seek(0)
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        _ensure_heif(name)
    return Image.open(fp)


def _orientation(im: Image.Image, *, header_only: bool) -> int:
    """The EXIF orientation 1..8 (1 when absent or invalid)."""
    if header_only and im.format == "PNG" and "exif" not in im.info:
        # PngImageFile.getexif() decodes the whole image to look for a late eXIf chunk;
        # the base method reads what the header gave (text-chunk EXIF, XMP).
        exif = Image.Image.getexif(im)
    else:
        exif = im.getexif()
    value = exif.get(_EXIF_ORIENTATION, 1)
    if not isinstance(value, int) or not 1 <= value <= 8:
        log.debug("ignoring invalid EXIF orientation %r", value)
        return 1
    return value


def _draft_scale(im: Image.Image, long_side: int) -> int:
    """Apply the coarsest JPEG DCT scale keeping the long side >= ``long_side``; return it."""
    if im.format not in ("JPEG", "MPO"):
        return 1
    width, height = im.size
    scale = next((s for s in (8, 4, 2) if max(width, height) // s >= long_side), 1)
    if scale == 1:
        return 1
    # draft() picks the largest of 8/4/2/1 not above min(W // w, H // h).
    drafted = im.draft(None, (max(width // scale, 1), max(height // scale, 1)))
    if drafted is None:
        return 1
    _, box = drafted  # box = (0, 0, W / s, H / s)
    return round(width / box[2])
    return scale


def _load(source: Source, *, max_pixels: int, long_side: int | None) -> tuple[np.ndarray, float]:
    name = _source_name(source)
    with _open_source(source, name) as fp:
        try:
            with _capture_warnings(name):
                im = _open_image(fp, name)
            width, height = im.size
            if width * height > max_pixels:
                raise ImageError(
                    name,
                    f"too large: {width}x{height} = {width * height:,} pixels is over the "
                    f"limit of {max_pixels:,} (decompression-bomb guard; pass a larger "
                    "max_pixels if this image is genuine)",
                )
            scale = _draft_scale(im, long_side) if long_side is not None else 1
            im.load()  # the pixel decode: not under the warnings lock
            with _capture_warnings(name):
                orientation = _orientation(im, header_only=False)
            method = _ORIENTATION_TRANSPOSE.get(orientation)
            if method is not None:
                im = im.transpose(method)
            rgb = _to_rgb(im, name)
        except ImageError:
            raise
        except MemoryError as e:
            raise ImageError(name, "out of memory while decoding") from e
        except Exception as e:  # Pillow raises assorted types on malformed input
            raise _classify(name, e, fp) from e
    return rgb, float(scale)


def _classify(name: str, e: Exception, fp: IO[bytes]) -> ImageError:
    """Word a Pillow failure as an ImageError reason."""
    if isinstance(e, Image.DecompressionBombError):
        return ImageError(name, f"too large: {e}")
    if isinstance(e, UnidentifiedImageError):
        try:
            fp.seek(0)
            head = fp.read(16)
        except (OSError, ValueError):
            head = b""
        for signature, fmt in _SIGNATURES:
            if head.startswith(signature):
                return ImageError(
                    name, f"corrupt or truncated {fmt} header (Pillow cannot identify it)"
                )
        if head[4:8] == b"ftyp":
            return ImageError(name, f"unsupported ISO-BMFF image (brand {head[8:12]!r})")
        return ImageError(name, "not an image (no supported format recognised)")
    message = str(e)
    if isinstance(e, OSError) and "truncated" in message.lower():
        return ImageError(name, f"truncated: the file ends before the image data ({message})")
    return ImageError(name, f"corrupt image data ({type(e).__name__}: {message})")


def _wide_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """One-channel 16/32-bit or float pixels ``(H, W)`` -> ``(H, W) uint8``, scaled."""
    if mode.startswith("I;16"):
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a.min()), float(a.max())
    if mode == "I" and lo >= 0 and hi <= 65535:
        return ((a.astype(np.int64) + 128) // 257).astype(np.uint8)
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError(f"float image with non-finite values (min {lo}, max {hi})")
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    f = (a.astype(np.float64) - lo) * 255.0 / (hi - lo)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Any Pillow image -> new C-contiguous ``(H, W, 3) uint8`` RGB (alpha on white)."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _wide_to_uint8(np.asarray(im), mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))  # (H, W, 4) uint8, straight alpha
        alpha = rgba[:, :, 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgba[:, :, :3])
        # round((c * a + 255 * (255 - a)) / 255); the sum is at most 65025, fits uint16.
        c = rgba[:, :, :3].astype(np.uint16)
        a16 = alpha.astype(np.uint16)
        out = (c * a16 + 255 * (255 - a16) + 127) // 255
        return np.ascontiguousarray(out.astype(np.uint8))
    if mode == "L":
        grey = np.asarray(im)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError as e:
            raise ImageError(name, f"unsupported pixel mode {mode!r} ({e})") from e
    return np.array(im, dtype=np.uint8, order="C")  # a writeable copy
