"""Photo sets as users have them, made from the shared data by facesearch's own code.

Nothing here is committed data: every builder writes into a folder the caller gives (a pytest
``tmp_path``, or a temporary folder of a bench script) from ``../shared/data``.

- :func:`make_crops`: face crops as exports of other tools look, made by facesearch's own
  detection and alignment from LFW: on the ArcFace template at 112 px (PNG and JPEG) and at
  160 px, tighter and looser than the template, the 96x112 template of older models, and
  unaligned square box crops (MTCNN-style).
- :func:`make_suffixless`: photos named without an image suffix (``subject01.happy``: GIF,
  PGM, JPEG, PNG), beside files that are not images.
- :func:`make_linked_views`: a photo library and labelled views of it built with symbolic
  links (linked files, linked folders, relative and absolute targets).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Crop variants of :func:`make_crops`: name -> (output size (w, h), zoom about the crop centre
#: relative to the ArcFace template, file suffix). ``zoom > 1``: tighter (the face is larger).
#: ``box160`` is not aligned: the detector's box made square (+10%) and resized to 160 px.
CROP_VARIANTS: dict[str, tuple[tuple[int, int], float, str]] = {
    "arcface112": ((112, 112), 1.0, ".png"),
    "arcface112_jpeg": ((112, 112), 1.0, ".jpg"),
    "arcface160": ((160, 160), 1.0, ".png"),
    "tight112": ((112, 112), 1.15, ".png"),
    "loose112": ((112, 112), 0.8, ".png"),
    "sphere96x112": ((96, 112), 1.0, ".png"),
    "box160": ((160, 160), 0.0, ".png"),
}


def lfw_sample(data: Path, n: int, *, seed: int = 0) -> list[Path]:
    """``n`` LFW images drawn without replacement (seeded), sorted by path."""
    images = sorted((data / "lfw" / "images").glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(images), size=min(n, len(images)), replace=False)
    return sorted(images[int(i)] for i in picked)


def central_face(pipeline: Any, image: np.ndarray) -> Any:
    """The detection nearest the image centre (LFW's named person), with the pipeline's
    documented low-score fallback; ``None`` when there is no face even then."""
    face, _ = pipeline.face_with_fallback(image)
    return None if face is None else face.detection


def crop(image: np.ndarray, detection: Any, variant: str) -> np.ndarray:
    """One crop of ``image`` ``(H, W, 3) uint8`` around ``detection``: ``(h, w, 3) uint8``."""
    from facesearch.align import estimate_norm, warp_affine

    (w, h), zoom, _ = CROP_VARIANTS[variant]
    if variant == "box160":
        x1, y1, x2, y2 = detection.box
        side = 1.1 * max(x2 - x1, y2 - y1)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        k = w / side  # a square around the box, scaled to w x w (black outside the photo)
        box = np.array([[k, 0.0, -k * (cx - side / 2)], [0.0, k, -k * (cy - side / 2)]])
        return warp_affine(image, box, w)
    side = max(w, h)
    m = estimate_norm(detection.landmarks_array(), side)  # (2, 3): photo -> crop
    c = side / 2.0
    m = np.concatenate([zoom * m[:, :2], (zoom * m[:, 2] + c * (1 - zoom))[:, None]], axis=1)
    out = warp_affine(image, m, side)
    if w < side:  # the 96x112 template is the 112x112 one without 8 px at each side
        out = np.ascontiguousarray(out[:, (side - w) // 2 : (side - w) // 2 + w])
    return out


def make_crops(
    pipeline: Any,
    sources: Sequence[Path],
    out: Path,
    variants: Iterable[str] = tuple(CROP_VARIANTS),
) -> dict[str, list[Path]]:
    """Crops of the central face of each of ``sources`` into ``out/<variant>/<Name>/``.

    Returns ``variant -> [crop files]`` in the order of ``sources`` (an image in which no face
    is found even by the fallback gives no crop).
    """
    from facesearch.image import load_image

    variants = list(variants)
    made: dict[str, list[Path]] = {v: [] for v in variants}
    for src in sources:
        image = load_image(src)
        det = central_face(pipeline, image)
        if det is None:
            continue
        for v in variants:
            target = out / v / src.parent.name / (src.stem + CROP_VARIANTS[v][2])
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop(image, det, v)).save(target, quality=90)
            made[v].append(target)
    return made


#: Files of :func:`make_suffixless`: name -> (source under the data folder, format to write or
#: ``None`` to copy the bytes).
SUFFIXLESS: dict[str, tuple[str, str | None]] = {
    "subject01.happy": ("att_faces/s1/1.pgm", "GIF"),
    "subject01.sad": ("att_faces/s1/2.pgm", "GIF"),
    "subject02.normal": ("att_faces/s2/1.pgm", None),
    "subject03.glasses": ("lfw/images/Aaron_Peirsol/Aaron_Peirsol_0001.jpg", None),
    "subject04.wink": ("photos/BBT_Amy/amy1.png", None),
    "subject05": ("photos/BBT_Raj/raj1.png", "JPEG"),
}
#: Files without an image suffix that are not images (they must be skipped, and counted).
NOT_IMAGES: dict[str, bytes] = {
    "Readme": b"The Yale faces, renamed.\n",
    "subject06.notes": b"P9 this only looks like a netpbm header\n",
    "clip.mov": b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ",
    "empty.bin": b"",
}


def make_suffixless(data: Path, out: Path) -> list[Path]:
    """Photos without an image suffix (:data:`SUFFIXLESS`) and files that are not images
    (:data:`NOT_IMAGES`) in ``out``; returns the photos."""
    out.mkdir(parents=True, exist_ok=True)
    photos = []
    for name, (source, fmt) in SUFFIXLESS.items():
        target = out / name
        if fmt is None:
            shutil.copyfile(data / source, target)
        else:
            Image.open(data / source).convert("L" if fmt == "GIF" else "RGB").save(target, fmt)
        photos.append(target)
    for name, content in NOT_IMAGES.items():
        (out / name).write_bytes(content)
    return photos


def make_linked_views(data: Path, root: Path, people: dict[str, Sequence[str]]) -> dict[str, Path]:
    """A library and two labelled views of it built with symbolic links, under ``root``.

    - ``library/``: the real files, flat, named ``<person>_<file>`` (no person folders);
    - ``by_file/<person>/<file>``: a folder per person holding links to the library's files
      (relative targets);
    - ``by_folder/<person>``: a link (absolute target) to ``library_people/<person>/``, real
      folders holding the files of one person each.

    ``people``: person -> files under ``data/photos/<person>/``. Returns the four folders.
    """
    lib, grouped = root / "library", root / "library_people"
    by_file, by_folder = root / "by_file", root / "by_folder"
    for folder in (lib, grouped, by_file, by_folder):
        folder.mkdir(parents=True)
    for person, files in people.items():
        (by_file / person).mkdir()
        (grouped / person).mkdir()
        for f in files:
            real = lib / f"{person}_{f}"
            shutil.copyfile(data / "photos" / person / f, real)
            real.chmod(0o644)
            os.symlink(os.path.relpath(real, by_file / person), by_file / person / f)
            shutil.copyfile(data / "photos" / person / f, grouped / person / f)
            (grouped / person / f).chmod(0o644)
        os.symlink(grouped / person, by_folder / person, target_is_directory=True)
    return {"library": lib, "library_people": grouped, "by_file": by_file, "by_folder": by_folder}


__all__ = [
    "CROP_VARIANTS",
    "NOT_IMAGES",
    "SUFFIXLESS",
    "central_face",
    "crop",
    "lfw_sample",
    "make_crops",
    "make_linked_views",
    "make_suffixless",
]
