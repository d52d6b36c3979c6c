"""facesearch.image: every format and pixel mode to RGB uint8, and every bad file to ImageError."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import oracles
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageOps

from facesearch.errors import ImageError
from facesearch.image import (
    MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    image_size,
    load_image,
    load_image_reduced,
)

#: Files in the shared odd/ and negatives/ folders that must fail, and the reason's start.
EXPECTED_ERRORS = {
    "empty.jpg": "empty file",
    "not_an_image.jpg": "not an image",
    "truncated.jpg": "truncated",
}


def _check_rgb(a: np.ndarray) -> None:
    assert isinstance(a, np.ndarray)
    assert a.ndim == 3 and a.shape[2] == 3 and a.shape[0] > 0 and a.shape[1] > 0
    assert a.dtype == np.uint8
    assert a.flags.c_contiguous and a.flags.writeable


def _quadrants(h: int = 40, w: int = 60) -> np.ndarray:
    """A non-square RGB test card with four distinct, JPEG-robust colour blocks."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (230, 30, 30)
    a[: h // 2, w // 2 :] = (30, 230, 30)
    a[h // 2 :, : w // 2] = (30, 30, 230)
    a[h // 2 :, w // 2 :] = (230, 230, 30)
    return a


def _save(im: Image.Image, path: Path, **kw: Any) -> Path:
    im.save(path, **kw)
    return path


# ----------------------------------------------------------------------- the shared data


def _shared_files(data: Path) -> list[Path]:
    files = sorted((data / "odd").iterdir()) + sorted((data / "negatives").iterdir())
    assert len(files) >= 30, f"expected the odd/ and negatives/ folders, found {len(files)} files"
    return files


def test_every_shared_odd_and_negative_file(data: Path) -> None:
    seen_errors = set()
    for path in _shared_files(data):
        expected = EXPECTED_ERRORS.get(path.name)
        if expected is None:
            a = load_image(path)
            _check_rgb(a)
            assert image_size(path) == (a.shape[1], a.shape[0]), path.name
        else:
            # image_size reads only the header, which a truncated file still has.
            calls = (load_image,) if expected == "truncated" else (load_image, image_size)
            for call in calls:
                with pytest.raises(ImageError) as info:
                    call(path)
                assert info.value.source == str(path)
                assert info.value.reason.startswith(expected), (path.name, info.value.reason)
                assert path.name in str(info.value)
            seen_errors.add(path.name)
    assert seen_errors == set(EXPECTED_ERRORS)


def test_shared_files_match_opencv(data: Path) -> None:
    """Lossless files decode to exactly OpenCV's pixels (the reference pipeline's decoder;
    bit-exact for PNG, so the pinned OpenCV only)."""
    cv2 = oracles.exact("opencv-python-headless", "the reference pipeline's decoder")
    for path in _shared_files(data):
        if path.name in EXPECTED_ERRORS:
            continue
        ours = load_image(path)
        ref = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert ours.shape == ref.shape, path.name
        diff = np.abs(ours.astype(int) - ref.astype(int))
        if path.suffix == ".png":  # RGBA files here are fully opaque: white = dropped alpha
            assert diff.max() == 0, path.name
        else:  # two JPEG decoders: +-few levels on some pixels
            assert diff.mean() < 1.0, (path.name, diff.mean())


# ------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("suffix", "kw", "exact"),
    [
        (".png", {}, True),
        (".bmp", {}, True),
        (".tif", {}, True),
        (".tiff", {"compression": "tiff_lzw"}, True),
        (".ppm", {}, True),
        (".webp", {"lossless": True}, True),
        (".webp", {"quality": 90}, False),
        (".jpg", {"quality": 95}, False),
        (".gif", {}, True),  # 4 colours: the palette is exact
    ],
)
def test_formats(tmp_path: Path, suffix: str, kw: dict[str, object], exact: bool) -> None:
    a = _quadrants()
    path = _save(Image.fromarray(a), tmp_path / f"card{suffix}", **kw)
    assert suffix in SUPPORTED_SUFFIXES
    out = load_image(path)
    _check_rgb(out)
    assert out.shape == a.shape
    diff = np.abs(out.astype(int) - a.astype(int))
    assert diff.max() == 0 if exact else diff.mean() < 4, diff.mean()
    assert image_size(path) == (60, 40)


def test_pgm_8_and_16_bit(tmp_path: Path) -> None:
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    p8 = tmp_path / "g8.pgm"
    p8.write_bytes(b"P5\n4 3\n255\n" + g.tobytes())
    assert np.array_equal(load_image(p8), np.repeat(g[:, :, None], 3, 2))

    v = np.array([[0, 1, 128, 129], [256, 32767, 32768, 65535], [1000, 20000, 40000, 60000]])
    p16 = tmp_path / "g16.pgm"
    p16.write_bytes(b"P5\n4 3\n65535\n" + v.astype(">u2").tobytes())
    out = load_image(p16)
    want = np.round(v * 255 / 65535).astype(np.uint8)
    assert np.array_equal(out[:, :, 0], want) and np.array_equal(out[:, :, 2], want)

    # 12-bit data (maxval 4095) spans the full 8-bit range too, not 1/16 of it.
    p12 = tmp_path / "g12.pgm"
    p12.write_bytes(b"P5\n2 1\n4095\n" + np.array([0, 4095], ">u2").tobytes())
    assert load_image(p12)[0, :, 0].tolist() == [0, 255]


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    v = np.linspace(0, 65535, 64 * 8).astype(np.uint16).reshape(8, 64)
    path = _save(Image.fromarray(v), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I;16")
    out = load_image(path)
    _check_rgb(out)
    want = np.round(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(out[:, :, 1], want)
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200


def test_16_bit_rgb_png(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV writes 16-bit colour PNGs")
    v = np.random.default_rng(0).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), v[:, :, ::-1])
    out = load_image(path)
    assert np.abs(out.astype(int) - (v >> 8).astype(int)).max() <= 1


def test_float_and_int32_tiff(tmp_path: Path) -> None:
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert load_image(_save(Image.fromarray(f), tmp_path / "f.tif"))[0, :, 0].tolist() == [
        0,
        128,
        255,
    ]
    wide = np.array([[-5.0, 45.0, 95.0]], np.float32)  # outside [0, 1]: stretched
    assert load_image(_save(Image.fromarray(wide), tmp_path / "w.tif"))[0, :, 0].tolist() == [
        0,
        128,
        255,
    ]
    big = np.array([[0, 1 << 20, 1 << 21]], np.int32)  # beyond 16 bits: stretched
    im = Image.fromarray(big)
    assert im.mode == "I"
    assert load_image(_save(im, tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 128, 255]


def test_greyscale_and_bilevel(tmp_path: Path) -> None:
    g = (np.arange(50 * 30) % 256).astype(np.uint8).reshape(30, 50)
    out = load_image(_save(Image.fromarray(g), tmp_path / "g.png"))
    assert np.array_equal(out, np.repeat(g[:, :, None], 3, 2))
    b = Image.fromarray(g > 127)  # mode "1"
    assert b.mode == "1"
    out = load_image(_save(b, tmp_path / "b.png"))
    assert np.array_equal(out[:, :, 0], np.where(g > 127, 255, 0))


def test_cmyk_jpeg(tmp_path: Path) -> None:
    a = _quadrants()
    im = Image.fromarray(a).convert("CMYK")
    path = _save(im, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    _check_rgb(out)
    assert np.abs(out.astype(int) - a.astype(int)).mean() < 4


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, :2, 3] = 255  # opaque
    rgba[:, 2:4, 3] = 0  # transparent, green stored underneath
    rgba[:, 4:, 3] = 128  # half
    out = load_image(_save(Image.fromarray(rgba), tmp_path / "a.png"))
    _check_rgb(out)
    assert out[0, 0].tolist() == [10, 200, 30]
    assert out[0, 2].tolist() == [255, 255, 255]
    want = [round((c * 128 + 255 * 127) / 255) for c in (10, 200, 30)]
    assert out[0, 4].tolist() == want

    la = Image.fromarray(rgba[..., [1, 3]], "LA")
    out = load_image(_save(la, tmp_path / "la.png"))
    assert out[0, 0].tolist() == [200] * 3 and out[0, 2].tolist() == [255] * 3

    opaque = rgba.copy()
    opaque[..., 3] = 255  # fully opaque RGBA: exactly the colour channels (= dropped alpha)
    out = load_image(_save(Image.fromarray(opaque), tmp_path / "o.png"))
    assert np.array_equal(out, opaque[..., :3])


def test_palette_gif_and_transparency(tmp_path: Path) -> None:
    p = Image.new("P", (8, 5))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    px = np.zeros((5, 8), np.uint8)
    px[:, 3:6] = 1
    px[:, 6:] = 2
    p.putdata(px.ravel().tolist())
    out = load_image(_save(p, tmp_path / "p.gif"))
    assert out[0, 4].tolist() == [255, 0, 0] and out[0, 7].tolist() == [0, 0, 255]
    out = load_image(_save(p, tmp_path / "t.gif", transparency=1))
    assert out[0, 4].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]
    out = load_image(_save(p, tmp_path / "t.png", transparency=bytes([255, 0, 255])))
    assert out[0, 4].tolist() == [255, 255, 255] and out[0, 7].tolist() == [0, 0, 255]


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (6, 4), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = load_image(path)
    assert np.abs(out.astype(int) - [200, 0, 0]).max() <= 2


def test_heic(tmp_path: Path) -> None:
    heif = pytest.importorskip("pillow_heif", reason="pillow-heif is needed for HEIC")
    heif.register_heif_opener()  # for writing the test file only
    a = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.heic"
    try:
        Image.fromarray(a).save(path, quality=95, exif=exif.tobytes())
    except Exception as e:  # noqa: BLE001 - a build without an HEVC encoder
        pytest.skip(f"pillow-heif cannot write HEIC here: {e}")
    out = load_image(path)
    _check_rgb(out)
    assert out.shape == (60, 40, 3)  # orientation 6 applied once (by libheif), not twice
    assert np.abs(out.astype(int) - np.rot90(a, -1).astype(int)).mean() < 6
    assert image_size(path) == (40, 60)
    assert np.array_equal(load_image(path.read_bytes()), out)


def test_avif(tmp_path: Path) -> None:
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    a = _quadrants()
    path = _save(Image.fromarray(a), tmp_path / "card.avif", quality=90)
    assert np.abs(load_image(path).astype(int) - a.astype(int)).mean() < 6


def test_heif_plugin_is_imported_lazily() -> None:
    code = (
        "import sys, facesearch.image; "
        "assert 'pillow_heif' not in sys.modules, 'pillow_heif imported at import time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_supported_suffixes() -> None:
    assert all(s.startswith(".") and s == s.lower() for s in SUPPORTED_SUFFIXES)
    for s in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"):
        assert s in SUPPORTED_SUFFIXES
    assert {".heic", ".heif"} <= SUPPORTED_SUFFIXES


# ------------------------------------------------------------------ EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    a = np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(Image.fromarray(a), tmp_path / "o.png", exif=exif.tobytes())
    want = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    out = load_image(path)
    assert np.array_equal(out, want)
    assert image_size(path) == (out.shape[1], out.shape[0])
    assert out.shape[:2] == ((60, 40) if orientation >= 5 else (40, 60))


def test_exif_orientation_6_jpeg_is_rotated_clockwise(tmp_path: Path) -> None:
    a = _quadrants()  # 60 wide, 40 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(Image.fromarray(a), tmp_path / "o6.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.shape == (60, 40, 3)
    assert np.abs(out.astype(int) - np.rot90(a, -1).astype(int)).mean() < 4
    assert image_size(path) == (40, 60)
    assert np.array_equal(load_image(path.read_bytes()), out)


# ------------------------------------------------------------------------- bad input


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but holds almost no data (a bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_quadrants()), tmp_path / "card.png")
    with pytest.raises(ImageError, match="too large: 60x40 = 2,400 pixels") as info:
        load_image(path, max_pixels=2399)
    assert info.value.reason.startswith("too large")
    assert load_image(path, max_pixels=2400).shape == (40, 60, 3)
    with pytest.raises(ImageError, match="too large"):
        load_image_reduced(path, 10, max_pixels=100)

    # Declared 100 Mpx (over Pillow's warning limit): refused from the header, before any
    # allocation, and Pillow's DecompressionBombWarning does not escape even under -W error.
    bomb = _png_header_only(10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="too large"):
            load_image(bomb, max_pixels=50_000_000)
    # Declared 2.5 Gpx: over MAX_PIXELS and over Pillow's own hard limit.
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(50_000, 50_000))
    assert MAX_PIXELS < 50_000 * 50_000
    with pytest.raises(ImageError, match="too large") as info:
        load_image(huge)
    assert info.value.source == str(huge)
    with pytest.raises(ImageError, match="too large"):
        image_size(huge)


def test_missing_directory_empty(tmp_path: Path) -> None:
    for source, reason in (
        (tmp_path / "nope.jpg", "file not found"),
        (tmp_path, "is a directory"),
        (b"", "empty file"),
    ):
        with pytest.raises(ImageError) as info:
            load_image(source)
        assert info.value.reason.startswith(reason)
        assert info.value.source == ("<bytes>" if source == b"" else str(source))
    empty = tmp_path / "e.png"
    empty.touch()
    with pytest.raises(ImageError, match="empty file"):
        load_image(empty)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file"
)
def test_permission_denied(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_quadrants()), tmp_path / "card.png")
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)


def test_not_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for data in (b"hello, I am text\n", rng.bytes(5000), b"\x00" * 100):
        with pytest.raises(ImageError, match="not an image"):
            load_image(data)
    for data in (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n" + rng.bytes(100), b"GIF89a" + b"\x00" * 9):
        with pytest.raises(ImageError, match="corrupt or truncated (JPEG|PNG|GIF) header"):
            load_image(data)
    with pytest.raises(ImageError, match="^cannot read image <bytes>: (truncated|corrupt)"):
        load_image(b"\xff\xd8\xff" + rng.bytes(200))


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".gif", ".tif", ".bmp"])
def test_truncated_files_raise(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)  # noise: incompressible
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=Image.registered_extensions()[suffix])
    data = buf.getvalue()
    assert load_image(data).shape == (64, 80, 3)
    for frac in (0.02, 0.3, 0.6, 0.9):
        with pytest.raises(ImageError) as info:
            load_image(data[: int(len(data) * frac)])
        assert info.value.reason.split()[0] in ("truncated:", "corrupt", "not"), info.value.reason


def test_truncated_jpeg_says_truncated(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_quadrants(400, 600)).save(buf, format="JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        load_image(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------- bytes, threads, round trip


def test_bytes_and_path_agree(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_quadrants()), tmp_path / "c.jpg", quality=90)
    ref = load_image(path)
    data = path.read_bytes()
    for source in (data, bytearray(data), memoryview(data), str(path)):
        assert np.array_equal(load_image(source), ref)
    assert image_size(data) == (60, 40)


def test_threads_and_warning_filters(data: Path) -> None:
    files = [p for p in _shared_files(data) if p.name not in EXPECTED_ERRORS][:12]
    before = list(warnings.filters)
    serial = [load_image(p) for p in files]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(load_image, files * 2))
    for a, b in zip(serial * 2, parallel, strict=True):
        assert np.array_equal(a, b)
    assert list(warnings.filters) == before


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 17), st.integers(1, 17), st.sampled_from([1, 3])),
    )
)
def test_png_round_trip(a: np.ndarray) -> None:
    im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    out = load_image(buf.getvalue())
    assert np.array_equal(out, np.broadcast_to(a, (*a.shape[:2], 3)))


# ------------------------------------------------------------ reduced (draft) decode


def test_reduced_jpeg_decode(tmp_path: Path) -> None:
    h, w = 600, 1000
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    path = _save(Image.fromarray(a), tmp_path / "big.jpg", quality=95)
    full = load_image(path)
    for long_side, scale in ((1000, 1.0), (501, 1.0), (500, 2.0), (250, 4.0), (125, 8.0), (1, 8.0)):
        small, s = load_image_reduced(path, long_side)
        _check_rgb(small)
        assert s == scale, (long_side, s)
        assert small.shape == (-(-h // int(s)), -(-w // int(s)), 3)
        assert max(small.shape[:2]) >= min(long_side, w)
        # Each reduced pixel is the mean of an s x s block of the full image.
        k = int(s)
        block = full[: h // k * k, : w // k * k].reshape(h // k, k, w // k, k, 3).mean((1, 3))
        diff = np.abs(small[: h // k, : w // k].astype(float) - block)
        assert diff.mean() < 2.0, (long_side, diff.mean())
    with pytest.raises(ValueError, match="long_side"):
        load_image_reduced(path, 0)


def test_reduced_keeps_orientation_and_other_formats(tmp_path: Path) -> None:
    a = np.full((400, 800, 3), 128, np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(a), tmp_path / "o6.jpg", exif=exif.tobytes())
    small, s = load_image_reduced(path, 200)
    assert s == 4.0 and small.shape == (200, 100, 3)
    png = _save(Image.fromarray(a), tmp_path / "p.png")
    small, s = load_image_reduced(png, 200)
    assert s == 1.0 and small.shape == (400, 800, 3)
