"""The face sets the clustering benchmark runs on, embedded by facesearch's own pipeline.

Each source is embedded once into an ``.npz`` under the cache folder (``--cache``, default
``bench/cache/cluster``, ignored by git and never committed): ``paths (N,) str`` relative to
the source folder, ``people (N,) str`` (the folder that names the person), ``embeddings (N, 128)
float32`` (zero rows where no face was found) and ``found (N,) bool``. Sources:

* ``lfw``: every LFW image (13,233), the face nearest the centre (LFW's convention), with the
  pipeline's documented low-threshold fallback when the detector finds none.
* ``lfw_degraded``: every image of the LFW people with at least 10 images (4,324), degraded the
  way photos in the wild are (:func:`degrade`, seeded per image), written as JPEG files into the
  cache, then embedded like ``lfw``. Faces the detector misses stay missing (an index would not
  hold them either).
* ``att``: AT&T / ORL (40 people x 10 greyscale 92x112 photos), face nearest the centre.
* ``photos``: ``data/photos`` (33 people, photos in the wild of every size), largest face.

:func:`load_sets` assembles the benchmark's sets from these (see its docstring). Run directly
to (re)make the cache::

    python bench/cluster_data.py --threads 2
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("cluster_data")

DEFAULT_CACHE = REPO / "bench" / "cache" / "cluster"
DEFAULT_DATA = REPO.parent / "shared" / "data"
SOURCES = ("lfw", "lfw_degraded", "att", "photos")

#: Degradation ranges: face width in pixels after downscaling, Gaussian blur sigma (pixels of the
#: downscaled image), brightness gain, JPEG quality.
FACE_PX = (40.0, 80.0)
BLUR_SIGMA = (0.0, 1.5)
GAIN = (0.45, 1.6)
JPEG_QUALITY = 30
SEED = 2024


@dataclass(frozen=True)
class FaceSet:
    """One benchmark set: ``xb (N, D) float32`` unit rows, ``true (N,) int64`` person ids,
    ``kind`` a short description of its shape."""

    name: str
    xb: np.ndarray
    true: np.ndarray
    kind: str

    @property
    def people(self) -> int:
        return int(len(np.unique(self.true)))


# --------------------------------------------------------------------------- degrading


def degrade(image: np.ndarray, face_width: float, rng: np.random.Generator) -> bytes:
    """A JPEG (quality 30) of ``image`` ``(H, W, 3) uint8`` as a small, poor photo of the face.

    The image is downscaled (area filter) so that the face, ``face_width`` pixels wide in it,
    becomes 40-80 px wide; blurred with a Gaussian of sigma 0-1.5 px; its brightness multiplied
    by 0.45-1.6 (under- and over-exposure, clipped); then JPEG-compressed at quality 30. Every
    draw is uniform from ``rng``.
    """
    from PIL import Image, ImageFilter

    target = rng.uniform(*FACE_PX)
    scale = min(1.0, target / max(face_width, 1.0))
    sigma = rng.uniform(*BLUR_SIGMA)
    gain = rng.uniform(*GAIN)
    h, w = image.shape[:2]
    im = Image.fromarray(image).resize(
        (max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.BOX
    )
    if sigma > 0.05:
        im = im.filter(ImageFilter.GaussianBlur(sigma))
    arr = np.clip(np.asarray(im, dtype=np.float32) * gain, 0, 255).astype(np.uint8)
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def write_atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def make_degraded(pipe: object, lfw: Path, out: Path, files: list[Path]) -> None:
    """Degraded copies of ``files`` (LFW images) under ``out``, same relative paths, seeded per
    image (``SEED`` and its position in the sorted list)."""
    from facesearch.image import load_image

    done = 0
    for i, path in enumerate(files):
        dst = out / path.relative_to(lfw)
        if dst.exists():
            continue
        image = load_image(path)
        face, _ = pipe.face_with_fallback(image)  # type: ignore[attr-defined]
        width = face.detection.width if face is not None else 0.45 * image.shape[1]
        rng = np.random.default_rng([SEED, i])
        write_atomic_bytes(dst, degrade(image, width, rng))
        done += 1
        if done % 500 == 0:
            log.info("  degraded %d / %d", i + 1, len(files))


# --------------------------------------------------------------------------- embedding


def embed_files(
    pipe: object, files: list[Path], pick: str, chunk: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """One face per file: ``(N, D) float32`` embeddings (zeros where none) and ``(N,) bool``.

    ``pick``: ``"central"`` (the face nearest the image centre, with the pipeline's
    low-threshold fallback when none is found) or ``"largest"``.
    """
    from facesearch.image import ImageError, load_image

    dim = int(pipe.embedder.dim)  # type: ignore[attr-defined]
    xb = np.zeros((len(files), dim), np.float32)
    found = np.zeros(len(files), dtype=bool)
    t0 = time.perf_counter()
    for start in range(0, len(files), chunk):
        part = files[start : start + chunk]
        images, where = [], []
        for j, p in enumerate(part):
            try:
                images.append(load_image(p))
                where.append(start + j)
            except ImageError as e:
                log.warning("skipped %s: %s", p, e)
        dets = pipe.detector.detect_batch(images)  # type: ignore[attr-defined]
        picked = []
        for img, d in zip(images, dets, strict=True):
            if d and pick == "largest":
                picked.append([max(d, key=lambda x: x.area)])
            elif d:
                h, w = img.shape[:2]
                cx, cy = w / 2.0, h / 2.0
                picked.append(
                    [min(d, key=lambda x: (x.center[0] - cx) ** 2 + (x.center[1] - cy) ** 2)]
                )
            else:
                face, _ = pipe.face_with_fallback(img)  # type: ignore[attr-defined]
                picked.append([] if face is None else [face.detection])
        faces = pipe.faces_batch(images, picked)  # type: ignore[attr-defined]
        for pos, fl in zip(where, faces, strict=True):
            if fl:
                xb[pos] = fl[0].embedding
                found[pos] = True
        if (start // chunk) % 20 == 0:
            rate = (start + len(part)) / (time.perf_counter() - t0)
            log.info("  %d / %d (%.1f photos/s)", start + len(part), len(files), rate)
    return xb, found


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def lfw_files(lfw: Path, min_images: int = 1) -> list[Path]:
    """LFW's images (sorted), of the people with at least ``min_images`` of them."""
    files = []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        imgs = sorted(person.glob("*.jpg"))
        if len(imgs) >= min_images:
            files += imgs
    return files


def make_source(name: str, data: Path, cache: Path, threads: int) -> None:
    """Embed one source into ``cache/NAME.npz`` (and, for ``lfw_degraded``, its images)."""
    from facesearch.pipeline import FacePipeline, PipelineConfig

    pipe = FacePipeline(PipelineConfig(threads=threads, engine="numpy"))
    lfw = data / "lfw" / "images"
    pick = "central"
    if name == "lfw":
        root, files = lfw, lfw_files(lfw)
    elif name == "lfw_degraded":
        root = cache / "lfw_degraded"
        src = lfw_files(lfw, 10)
        log.info("degrading %d LFW images into %s", len(src), root)
        make_degraded(pipe, lfw, root, src)
        files = [root / p.relative_to(lfw) for p in src]
    elif name == "att":
        root = data / "att_faces"
        files = sorted(root.glob("s*/*.pgm"), key=lambda p: (int(p.parent.name[1:]), p.name))
    elif name == "photos":
        root = data / "photos"
        files = sorted(p for p in root.glob("*/*") if p.is_file())
        pick = "largest"
    else:
        raise ValueError(f"unknown source {name!r}; one of {SOURCES}")
    log.info("embedding %s: %d files", name, len(files))
    xb, found = embed_files(pipe, files, pick)
    rel = np.array([str(p.relative_to(root)) for p in files])
    people = np.array([p.parent.name for p in files])
    save_npz(cache / f"{name}.npz", paths=rel, people=people, embeddings=xb, found=found)
    log.info("%s: %d of %d files with a face", name, int(found.sum()), len(files))


def load_source(cache: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``paths (N,) str``, ``people (N,) str``, ``embeddings (N, D) float32`` of the files with a
    face, from ``cache/NAME.npz``."""
    path = cache / f"{name}.npz"
    if not path.exists():
        raise SystemExit(f"{path} not found: run python bench/cluster_data.py --sources {name}")
    with np.load(path, allow_pickle=False) as z:
        found = z["found"]
        paths, people = z["paths"][found].astype(str), z["people"][found].astype(str)
        xb = np.asarray(z["embeddings"][found], dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    return paths, people, np.ascontiguousarray(xb)


# --------------------------------------------------------------------------- sets


def _ids(people: np.ndarray) -> np.ndarray:
    return np.unique(people, return_inverse=True)[1].astype(np.int64)


def mixture(
    paths: np.ndarray,
    people: np.ndarray,
    big_min: int = 100,
    big_max: int = 200,
    small_max: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """Positions of a mixture: every person with ``>= big_min`` faces (at most ``big_max`` of
    them, drawn with ``seed``) among every person with ``1 .. small_max`` faces."""
    rng = np.random.default_rng(seed)
    uniq, inv, counts = np.unique(people, return_inverse=True, return_counts=True)
    keep: list[np.ndarray] = []
    for p in np.flatnonzero(counts >= big_min):
        pos = np.flatnonzero(inv == p)
        keep.append(np.sort(rng.choice(pos, min(big_max, len(pos)), replace=False)))
    keep.append(np.flatnonzero(counts[inv] <= small_max))
    return np.sort(np.concatenate(keep))


def load_sets(cache: Path, wanted: Callable[[str], bool] = lambda _: True) -> list[FaceSet]:
    """The benchmark's sets, of different shapes:

    * LFW all: 5,749 people, most with one photo.
    * LFW >= 10: the 158 people with at least 10 images.
    * LFW >= 10 degraded: the same people, every photo degraded (:func:`degrade`).
    * LFW >= 10 mixed quality: the same people, each photo clean or degraded (seeded coin).
    * AT&T: 40 people x 10 photos, greyscale, small.
    * photos: ``data/photos``, 33 people, in the wild.
    * mixture: the 5 LFW people with >= 100 images (up to 200 each) among the 5,139 people with
      1-3 images (:func:`mixture`).
    * mixture, mixed quality: the same, the photos of the 5 people clean or degraded (coin).
    """
    sets: list[FaceSet] = []
    lp, lpeople, lxb = load_source(cache, "lfw")
    dp, dpeople, dxb = load_source(cache, "lfw_degraded")
    ten = np.isin(lpeople, dpeople)
    if wanted("lfw_all"):
        sets.append(FaceSet("LFW all", lxb, _ids(lpeople), "5,749 people, 4,069 with one photo"))
    if wanted("lfw10"):
        sets.append(
            FaceSet("LFW >= 10", lxb[ten], _ids(lpeople[ten]), "158 people with 10-530 photos")
        )
    if wanted("lfw10_degraded"):
        sets.append(
            FaceSet(
                "LFW >= 10 degraded",
                dxb,
                _ids(dpeople),
                "the same people, every photo 40-80 px faces, blur, exposure, JPEG q30",
            )
        )
    # mixed quality: per image a seeded coin chooses the clean or the degraded embedding
    clean_of = {p: i for i, p in enumerate(lp)}
    coin = np.random.default_rng(SEED).random(len(dp)) < 0.5
    mixed_xb = np.stack([dxb[i] if coin[i] else lxb[clean_of[p]] for i, p in enumerate(dp)])
    if wanted("lfw10_mixed"):
        sets.append(
            FaceSet(
                "LFW >= 10 mixed quality",
                mixed_xb,
                _ids(dpeople),
                "the same people, each photo clean or degraded (seeded coin)",
            )
        )
    if wanted("att"):
        _, ap, axb = load_source(cache, "att")
        sets.append(FaceSet("AT&T", axb, _ids(ap), "40 people x 10 small greyscale photos"))
    if wanted("photos"):
        _, pp, pxb = load_source(cache, "photos")
        sets.append(FaceSet("photos", pxb, _ids(pp), "33 people, 1-14 photos in the wild"))
    sel = mixture(lp, lpeople)
    if wanted("mixture"):
        sets.append(
            FaceSet(
                "mixture",
                lxb[sel],
                _ids(lpeople[sel]),
                "5 people with 109-200 photos among 5,139 with 1-3",
            )
        )
    if wanted("mixture_mixed"):
        mixed_of = {p: i for i, p in enumerate(dp)}
        xm = lxb[sel].copy()
        for row, pos in enumerate(sel.tolist()):
            j = mixed_of.get(lp[pos])
            if j is not None:
                xm[row] = mixed_xb[j]
        sets.append(
            FaceSet(
                "mixture, mixed quality",
                xm,
                _ids(lpeople[sel]),
                "as mixture, the 5 people's photos clean or degraded",
            )
        )
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="embed again even if cached")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for name in args.sources.split(","):
        if (args.cache / f"{name}.npz").exists() and not args.force:
            log.info("%s: cached", name)
            continue
        make_source(name, args.data, args.cache, args.threads)
    for s in load_sets(args.cache):
        print(f"{s.name}: {len(s.xb)} faces, {s.people} people ({s.kind})")


if __name__ == "__main__":
    main()
