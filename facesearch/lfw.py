"""Run the pipeline over LFW-style pair lists (View 1 or View 2) and score them.

Each image is embedded once. LFW images are tight, centred crops of one named person, so
the face nearest the centre is taken; when the detector finds nothing at its normal
threshold, the documented fallback of :meth:`FacePipeline.face_with_fallback` is used and
counted. An image with no face even then gets no embedding: its pairs are scored as
"different" (d = 4, the largest possible distance), and it is listed in the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.evaluate import Pair, lfw_image_path, verification_report
from facesearch.image import load_image
from facesearch.pipeline import FacePipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedImages:
    """Embeddings of a list of images: ``paths (N,)``, ``xb (N, D) float32``."""

    paths: list[Path]
    xb: np.ndarray
    fallback: list[Path]
    missing: list[Path]


def embed_images(
    pipeline: FacePipeline,
    paths: Sequence[Path],
    *,
    chunk: int = 64,
    progress: Callable[[int], None] | None = None,
) -> EmbeddedImages:
    """Embed the central face of each image (one face per image), decoding in parallel."""
    dim = int(pipeline.embedder.dim)
    xb = np.zeros((len(paths), dim), np.float32)
    fallback: list[Path] = []
    missing: list[Path] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(paths), chunk):
            part = list(paths[start : start + chunk])
            images = list(pool.map(load_image, part))
            dets = pipeline.detector.detect_batch(images)
            picked = []
            for i, (img, d) in enumerate(zip(images, dets, strict=True)):
                if d:
                    h, w = img.shape[:2]
                    c = (w / 2.0, h / 2.0)
                    picked.append(
                        [
                            min(
                                d,
                                key=lambda x: (x.center[0] - c[0]) ** 2 + (x.center[1] - c[1]) ** 2,
                            )
                        ]
                    )
                else:
                    face, _ = pipeline.face_with_fallback(img)
                    if face is None:
                        missing.append(part[i])
                        picked.append([])
                    else:
                        fallback.append(part[i])
                        picked.append([face.detection])
            faces = pipeline.faces_batch(images, picked)
            for i, fl in enumerate(faces):
                if fl:
                    xb[start + i] = fl[0].embedding
            if progress:
                progress(len(part))
    return EmbeddedImages(list(paths), xb, fallback, missing)


def evaluate_pairs(
    pipeline: FacePipeline,
    pairs: Sequence[Pair],
    images_dir: Path,
    *,
    default_threshold: float,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Embed every image named in ``pairs`` once and run the verification protocol."""
    keys = sorted({p.a for p in pairs} | {p.b for p in pairs})
    paths = [lfw_image_path(images_dir, n, i) for n, i in keys]
    if on_total:
        on_total(len(paths))
    emb = embed_images(pipeline, paths, progress=progress)
    row = {k: i for i, k in enumerate(keys)}
    ia = np.array([row[p.a] for p in pairs])
    ib = np.array([row[p.b] for p in pairs])
    d = np.sum((emb.xb[ia] - emb.xb[ib]) ** 2, axis=1)
    # A pair with an image where no face was found at all counts as "different".
    d[(np.abs(emb.xb[ia]).sum(1) == 0) | (np.abs(emb.xb[ib]).sum(1) == 0)] = 4.0
    same = np.array([p.same for p in pairs], bool)
    folds = np.array([p.fold for p in pairs])
    report = dict(verification_report(d, same, folds, default_threshold=default_threshold))
    report.update(
        images=len(paths),
        fallback_images=len(emb.fallback),
        no_face_images=len(emb.missing),
        no_face_paths=[str(p) for p in emb.missing],
        model=pipeline.model_name,
        flip=bool(getattr(pipeline.embedder, "flip", False)),
    )
    return report
