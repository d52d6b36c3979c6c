"""``facesearch train`` as a library call: folder in, model file out."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import FacesearchError
from facesearch.models.modelfile import SHIPPED, file_sha256, load_model, save_model
from facesearch.train.data import CropMode, FaceSet, load_face_folder, make_cropper
from facesearch.train.loop import TrainResult, TrainSettings, train
from facesearch.train.validation import split_people

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRun:
    """What :func:`train_folder` produced: the saved file's meta and the run itself."""

    path: Path
    meta: dict[str, Any]
    result: TrainResult


def model_ref(name_or_path: str, meta: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "sha256"}`` of a model: sha256 of its file (the shipped weight file for sface)."""
    if name_or_path == SHIPPED:
        return {"name": SHIPPED, "sha256": meta.get("sha256")}
    return {"name": meta["name"], "sha256": file_sha256(name_or_path)}


def load_training_data(
    data: str | os.PathLike[str],
    crop_mode: CropMode = "detect",
    *,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> FaceSet:
    """Aligned crops of a folder labelled by subfolders (detector + aligner by default)."""
    from tqdm import tqdm

    pipeline = None
    if crop_mode == "detect":
        from facesearch.models.sface import Embedder
        from facesearch.models.yunet import Detector
        from facesearch.pipeline import FacePipeline

        # The embedder is not used for cropping: an unfused stand-in avoids loading twice.
        pipeline = FacePipeline(detector=Detector(), embedder=Embedder(fuse=False))
    bar = tqdm(desc="faces", unit="photo", disable=not progress, dynamic_ncols=True, leave=False)

    def on_total(n: int) -> None:
        bar.total = n
        bar.refresh()

    try:
        return load_face_folder(
            data,
            make_cropper(crop_mode, pipeline),
            mode=crop_mode,
            cache=cache,
            progress=bar.update,
            on_total=on_total,
        )
    finally:
        bar.close()


def train_folder(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: TrainSettings,
    *,
    crop_mode: CropMode = "detect",
    cache: str | os.PathLike[str] | None = None,
    progress: bool = False,
    faces: FaceSet | None = None,
) -> TrainRun:
    """Fine-tune ``settings.base`` on the labelled folder ``data`` and save it to ``out``.

    People are split into training and validation (``settings.val_fraction``, by person);
    ``faces`` may be given to skip detection (crops already computed for ``data``).
    """
    import torch

    import facesearch

    base, base_meta = load_model(settings.base)
    old = None
    old_meta: dict[str, Any] | None = None
    if settings.compatible_with:
        old, old_meta = load_model(settings.compatible_with)
    if faces is None:
        faces = load_training_data(data, crop_mode, cache=cache, progress=progress)
    if len(faces.people) < 3:
        raise FacesearchError(
            f"{data}: found faces of {len(faces.people)} people; training needs at least 3 "
            "(2 for the batches, 1 more for validation)"
        )
    tr, va = split_people(faces.labels, settings.val_fraction, seed=settings.seed)
    train_set = faces.subset(tr)
    val_set = faces.subset(va) if va.any() else None
    eligible = int((np.unique(train_set.labels, return_counts=True)[1] >= 2).sum())
    if eligible < 2:
        raise FacesearchError(
            f"{data}: only {eligible} training people have 2 or more photos with a face; "
            "triplets need at least 2 such people"
        )
    result = train(base, train_set, val_set, settings, old=old, progress=progress)
    lineage: list[str] = []
    if old_meta is not None:
        lineage = [str(old_meta["name"])] + [
            n for n in old_meta.get("lineage") or [] if n != old_meta["name"]
        ]
    meta = result.meta()
    meta["data"]["folder"] = Path(data).name
    meta["data"]["people"] = len(faces.people)
    meta["data"]["images"] = len(faces)
    meta["data"]["skipped_photos"] = len(faces.skipped)
    meta["data"]["crops"] = crop_mode
    meta.update(
        parent=model_ref(settings.base, base_meta),
        compatible_with=(
            model_ref(settings.compatible_with, old_meta)
            if settings.compatible_with and old_meta
            else None
        ),
        lineage=lineage,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        facesearch_version=getattr(facesearch, "__version__", None),
        torch_version=str(torch.__version__),
    )
    if meta["threshold"] is None:
        log.warning("no validation people: the model file has no calibrated threshold")
    full = save_model(out, result.model, meta)
    return TrainRun(Path(out), full, result)
