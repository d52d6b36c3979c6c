"""Training data: a folder labelled by subfolders, turned once into aligned face crops.

``DATA/<person>/<photo>``: every subfolder is one person, every image file in it (any
format :func:`facesearch.image.load_image` reads; hidden files skipped, no recursion below
the person folder) one photo of that person. Each photo gives **one** crop:

- ``"detect"`` (default): the pipeline's detector and aligner; when a photo shows several
  faces the **largest** is taken (the labelled person is normally the main subject) and
  the photo is counted in ``multi_face``; a photo with no face is skipped and listed.
- ``"aligned"``: the photos already are aligned face crops (e.g. 112x112 from another
  aligner); they are only resized to 112x112 (bilinear, antialiased).
- ``"centre"``: a centre square, resized to 112x112. A rough stand-in for photos that are
  tight face crops without landmarks (AT&T faces, thumbnails).

Crops are computed once. ``cache=PATH`` keeps them in an ``.npz`` keyed by relative path,
file size, modification time and crop mode, so re-running training (other settings) decodes
and detects only new or changed photos.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from facesearch.errors import FacesearchError, ImageError

if TYPE_CHECKING:
    from facesearch.pipeline import FacePipeline

log = logging.getLogger(__name__)

CropMode = Literal["detect", "aligned", "centre"]
CROP_MODES: tuple[str, ...] = ("detect", "aligned", "centre")
CROP_SIZE: int = 112
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    | {".pgm", ".ppm", ".pbm", ".pnm", ".heic", ".heif", ".avif"}
)
_CACHE_VERSION = 1


@dataclass(frozen=True)
class FaceSet:
    """Aligned crops with person labels.

    ``crops (N, 112, 112, 3) uint8`` RGB; ``labels (N,) int64`` indexes ``people``;
    ``paths`` are relative to the folder ``root``; ``skipped`` lists photos with no usable
    face (with the reason), ``multi_face`` photos where the largest of several faces was taken.
    """

    crops: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    people: tuple[str, ...]
    paths: tuple[str, ...] = field(repr=False)
    root: str = ""
    skipped: tuple[tuple[str, str], ...] = ()
    multi_face: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = self.crops.shape[0]
        if self.crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or self.crops.dtype != np.uint8:
            raise ValueError(
                f"crops must be (N, 112, 112, 3) uint8, got {self.crops.shape} {self.crops.dtype}"
            )
        if self.labels.shape != (n,) or len(self.paths) != n:
            raise ValueError(
                f"{n} crops but {self.labels.shape} labels and {len(self.paths)} paths"
            )

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def subset(self, mask: np.ndarray) -> FaceSet:
        """The photos where ``mask (N,) bool`` (or an index array) selects; labels are kept."""
        idx = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask)
        return FaceSet(
            self.crops[idx],
            self.labels[idx],
            self.people,
            tuple(self.paths[i] for i in idx),
            self.root,
        )

    def summary(self) -> dict[str, Any]:
        """``{"folder", "people", "images", "people_2plus", "skipped", "multi_face"}``."""
        ids, counts = np.unique(self.labels, return_counts=True)
        return {
            "folder": Path(self.root).name if self.root else "",
            "people": int(ids.size),
            "images": len(self),
            "people_2plus": int((counts >= 2).sum()),
            "skipped": len(self.skipped),
            "multi_face": len(self.multi_face),
        }


def list_labelled_folder(root: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``[(relative path, person)]`` of every image under ``root/<person>/``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FacesearchError(f"training data folder not found: {root}")
    out = []
    for person_dir in sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    ):
        for f in sorted(person_dir.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES:
                out.append((f"{person_dir.name}/{f.name}", person_dir.name))
    if not out:
        raise FacesearchError(
            f"no photos found in {root}: expected one subfolder per person with image files in it"
        )
    return out


def resize_crop(image: np.ndarray, centre: bool = False) -> np.ndarray:
    """``(H, W, 3) uint8 -> (112, 112, 3) uint8``: resize (optionally a centre square first)."""
    from PIL import Image

    if centre:
        h, w = image.shape[:2]
        s = min(h, w)
        y, x = (h - s) // 2, (w - s) // 2
        image = image[y : y + s, x : x + s]
    if image.shape[:2] == (CROP_SIZE, CROP_SIZE):
        return np.ascontiguousarray(image)
    im = Image.fromarray(np.ascontiguousarray(image)).resize(
        (CROP_SIZE, CROP_SIZE), Image.Resampling.BILINEAR, reducing_gap=None
    )
    return np.asarray(im, dtype=np.uint8)


Cropper = Callable[[np.ndarray], tuple[np.ndarray | None, int]]


def make_cropper(mode: CropMode, pipeline: FacePipeline | None = None) -> Cropper:
    """A function ``image -> (crop (112, 112, 3) uint8 or None, faces found)``."""
    if mode == "aligned":
        return lambda im: (resize_crop(im), 1)
    if mode == "centre":
        return lambda im: (resize_crop(im, centre=True), 1)
    if mode != "detect":
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    if pipeline is None:
        raise ValueError("crop mode 'detect' needs a FacePipeline")

    def detect(image: np.ndarray) -> tuple[np.ndarray | None, int]:
        dets = pipeline.detect(image)
        if not dets:
            return None, 0
        best = max(dets, key=lambda d: d.area)
        return pipeline.align(image, [best])[0], len(dets)

    return detect


def _read_cache(cache: Path, mode: str) -> dict[tuple[str, int, int], np.ndarray]:
    if not cache.is_file():
        return {}
    try:
        with np.load(cache, allow_pickle=False) as z:
            if int(z["version"]) != _CACHE_VERSION or str(z["mode"]) != mode:
                log.info("crop cache %s is for another mode or version: recomputing", cache)
                return {}
            return {
                (str(p), int(s), int(t)): c
                for p, s, t, c in zip(z["paths"], z["sizes"], z["mtimes"], z["crops"], strict=True)
            }
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable crop cache %s: %s", cache, e)
        return {}


def _write_cache(
    cache: Path, mode: str, keys: Sequence[tuple[str, int, int]], crops: np.ndarray
) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", suffix=".npz", dir=cache.parent)
    os.close(fd)
    try:
        np.savez(
            tmp,
            version=np.int64(_CACHE_VERSION),
            mode=np.str_(mode),
            paths=np.array([k[0] for k in keys], dtype=str),
            sizes=np.array([k[1] for k in keys], dtype=np.int64),
            mtimes=np.array([k[2] for k in keys], dtype=np.int64),
            crops=crops,
        )
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600
        os.replace(tmp, cache)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_face_folder(
    root: str | os.PathLike[str],
    cropper: Cropper,
    *,
    mode: str = "detect",
    cache: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> FaceSet:
    """Crops of every photo of a labelled folder (see the module docstring).

    ``cropper`` from :func:`make_cropper`; ``mode`` names it in the cache. ``progress(n)`` is
    called after each photo, ``on_total(n)`` once with the number of photos to process.
    """
    from facesearch.image import load_image

    root = Path(root)
    files = list_labelled_folder(root)
    people = tuple(sorted({p for _, p in files}))
    label_of = {p: i for i, p in enumerate(people)}
    cached = _read_cache(Path(cache), mode) if cache else {}
    keys, crops, labels, paths = [], [], [], []
    skipped: list[tuple[str, str]] = []
    multi: list[str] = []
    if on_total:
        on_total(len(files))
    hits = 0
    for rel, person in files:
        st = (root / rel).stat()
        key = (rel, int(st.st_size), int(st.st_mtime_ns))
        crop = cached.get(key)
        if crop is None:
            try:
                image = load_image(root / rel)
            except ImageError as e:
                skipped.append((rel, e.reason))
                if progress:
                    progress(1)
                continue
            crop, n_faces = cropper(image)
            if crop is None:
                skipped.append((rel, "no face found"))
                if progress:
                    progress(1)
                continue
            if n_faces > 1:
                multi.append(rel)
        else:
            hits += 1
        keys.append(key)
        crops.append(crop)
        labels.append(label_of[person])
        paths.append(rel)
        if progress:
            progress(1)
    arr = np.stack(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    if cache and hits < len(keys):
        _write_cache(Path(cache), mode, keys, arr)
    if skipped:
        log.warning(
            "%d of %d photos have no usable face and are left out", len(skipped), len(files)
        )
    log.info("%d crops of %d people (%d from the cache)", len(keys), len(people), hits)
    present = sorted(set(labels))
    if len(present) != len(people):  # a person whose every photo was skipped
        remap = {old: new for new, old in enumerate(present)}
        labels = [remap[x] for x in labels]
        people = tuple(people[i] for i in present)
    return FaceSet(
        arr,
        np.asarray(labels, np.int64),
        people,
        tuple(paths),
        str(root),
        tuple(skipped),
        tuple(multi),
    )
