"""Face crops and photo images cached in a collection folder (facesearch.thumbnails)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.errors import FacesearchError
from facesearch.thumbnails import (
    PhotoChangedError,
    PhotoFile,
    ThumbnailCache,
    cut_square,
    square_crop_box,
)


def _photo(path: Path, w: int = 400, h: int = 300, seed: int = 0) -> PhotoFile:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    pixels[100:200, 150:250] = (255, 0, 0)  # the "face": a red square
    Image.fromarray(pixels).save(path, quality=95)
    return PhotoFile(1, str(path), path.stat().st_size)


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_square_box_is_centred_and_grown() -> None:
    x1, y1, x2, y2 = square_crop_box((150, 100, 250, 200), margin=0.25)
    assert x2 - x1 == y2 - y1 == 150
    assert (x1 + x2) / 2 == 200 and (y1 + y2) / 2 == 150


def test_cut_square_fills_outside_with_grey() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    out = cut_square(image, (-5, -5, 5, 5))
    assert out.shape == (10, 10, 3)
    assert (out[:5, :5] == 128).all() and (out[5:, 5:] == 0).all()


def test_face_crop_is_cached_and_shows_the_face(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.jpg")
    cache = ThumbnailCache(tmp_path / "col")
    box = (150.0, 100.0, 250.0, 200.0)
    assert cache.cached_face(7, photo.path, 64) is None
    data = cache.face(7, box, photo, 64)
    crop = _decode(data)
    assert crop.shape == (64, 64, 3)
    centre = crop[24:40, 24:40].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 200 and centre[1] < 60  # red in the middle
    assert cache.cached_face(7, photo.path, 64) == data
    files = list((tmp_path / "col" / "thumbnails" / "faces").rglob("*.jpg"))
    assert [f.name.split("_")[:2] for f in files] == [["7", "64"]]
    assert cache.cached_face_ids() == [7]


def test_changed_photo_is_refused_and_old_crops_never_served(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.jpg")
    cache = ThumbnailCache(tmp_path / "col")
    box = (150.0, 100.0, 250.0, 200.0)
    cache.face(3, box, photo, 64)
    _photo(tmp_path / "p.jpg", w=500, seed=1)  # another picture at the same path
    assert cache.cached_face(3, photo.path, 64) is None
    with pytest.raises(PhotoChangedError, match="changed since it was indexed"):
        cache.face(3, box, photo, 64)
    # re-indexed: the store records the new size, the crop is made again, the old one deleted
    fresh = PhotoFile(1, photo.path, (tmp_path / "p.jpg").stat().st_size)
    cache.face(3, box, fresh, 64)
    assert len(list((tmp_path / "col" / "thumbnails" / "faces").rglob("3_64_*.jpg"))) == 1


def test_gone_photo_keeps_its_cached_crop(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.jpg")
    cache = ThumbnailCache(tmp_path / "col")
    data = cache.face(5, (150, 100, 250, 200), photo, 96)
    os.remove(photo.path)
    assert cache.face(5, (150, 100, 250, 200), photo, 96) == data
    with pytest.raises(PhotoChangedError, match="gone"):
        cache.face(5, (150, 100, 250, 200), photo, 128)  # never made at this size


def test_forget_faces_deletes_every_size(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.jpg")
    cache = ThumbnailCache(tmp_path / "col")
    for size in (64, 96):
        cache.face(11, (150, 100, 250, 200), photo, size)
    cache.face(12, (150, 100, 250, 200), photo, 64)
    assert cache.forget_faces([11]) == 2
    assert cache.cached_face_ids() == [12]


def test_photo_image_is_downscaled(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.jpg", w=800, h=600)
    cache = ThumbnailCache(tmp_path / "col")
    img = _decode(cache.photo(photo, 200))
    assert img.shape == (150, 200, 3)
    assert cache.cached_photo(photo.id, photo.path, 200) is not None
    assert cache.forget_photos([photo.id]) == 1


def test_large_photo_is_cut_from_a_reduced_decode(data: Path, tmp_path: Path) -> None:
    """A small face crop of a big JPEG comes from a DCT-reduced decode, and still shows the
    same pixels as a crop of the full decode."""
    src = next(p for p in sorted((data / "photos").rglob("*.jpg")) if p.stat().st_size > 300_000)
    path = tmp_path / src.name
    shutil.copy(src, path)
    with Image.open(path) as im:
        w, h = im.size
    box = (w * 0.3, h * 0.3, w * 0.7, h * 0.7)
    photo = PhotoFile(1, str(path), path.stat().st_size)
    reduced = _decode(ThumbnailCache(tmp_path / "a").face(1, box, photo, 64)).astype(float)
    from facesearch.image import load_image
    from facesearch.thumbnails import _jpeg

    full = _decode(_jpeg(cut_square(load_image(path), square_crop_box(box)), (64, 64)))
    assert np.abs(reduced - full.astype(float)).mean() < 6.0


def test_sizes_out_of_range_are_refused(tmp_path: Path) -> None:
    cache = ThumbnailCache(tmp_path)
    with pytest.raises(FacesearchError, match="thumbnail size must be in 32..512"):
        cache.cached_face(1, str(tmp_path / "x.jpg"), 4)
