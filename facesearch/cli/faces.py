"""Commands on photos, no collection needed: ``detect``, ``verify``, ``evaluate lfw``."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import click

from facesearch.cli import main
from facesearch.cli.options import engine_option, json_option, model_option, threshold_option


def resolve_engine(model: str, engine: str = "auto") -> str:
    """``--engine``: 'auto' is numpy for the shipped model (no torch import), else torch.
    'bulk' (many photos: ``evaluate``, ``enroll``): numpy for the shipped model when the native
    kernels are built (as fast per face as torch, and no torch import), else torch."""
    if engine == "bulk":
        from facesearch.native import native_available

        return "numpy" if str(model) == "sface" and native_available() else "torch"
    if engine == "auto":
        return "numpy" if str(model) == "sface" else "torch"
    if engine == "numpy" and str(model) != "sface":
        raise click.UsageError(f"--engine numpy runs the shipped model 'sface' only, not {model}")
    return engine


def pipeline_config(model: str, flip: bool | None = None, engine: str = "bulk") -> Any:
    """The :class:`~facesearch.pipeline.PipelineConfig` :func:`make_pipeline` builds from."""
    from facesearch.pipeline import PipelineConfig

    engine = resolve_engine(model, engine)
    flip_setting = {} if flip is None else {"flip": flip}  # None: the config's default
    return PipelineConfig(model=model, engine=engine, **flip_setting)


def make_pipeline(model: str, flip: bool | None = None, engine: str = "bulk") -> Any:
    """Build the pipeline for ``--model`` (imports torch lazily, and only for engine torch)."""
    from facesearch.cli import startup_done
    from facesearch.pipeline import FacePipeline

    pipe = FacePipeline(pipeline_config(model, flip, engine))
    startup_done()
    return pipe


def shipped_threshold(purpose: str = "verify") -> float:
    """The shipped SFace's LFW-calibrated tau for 'verify' (1:1) or 'identify' (1:K)."""
    from facesearch.distance import DEFAULT_IDENTIFY_THRESHOLD, DEFAULT_VERIFY_THRESHOLD

    return DEFAULT_IDENTIFY_THRESHOLD if purpose == "identify" else DEFAULT_VERIFY_THRESHOLD


def model_threshold(pipeline: Any, purpose: str = "verify") -> float:
    """The calibrated tau of the pipeline's model for ``purpose`` 'verify' (1:1) or 'identify' (1:K).

    The shipped SFace uses the LFW calibration of :mod:`facesearch.distance`; a model file
    carries its own verification tau (and an identification one when it recorded it; else the
    verification tau is used for both).
    """
    from facesearch.distance import DEFAULT_THRESHOLD

    meta = getattr(pipeline.embedder, "meta", None) or {}
    if purpose == "identify" and meta.get("identify_threshold") is not None:
        return float(meta["identify_threshold"])
    if pipeline.model_name == "sface":
        return shipped_threshold(purpose)
    t = getattr(pipeline.embedder, "threshold", None)
    return float(t) if t is not None else DEFAULT_THRESHOLD


def _box(face: Any) -> list[float]:
    return [round(float(v), 1) for v in face.detection.box]


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
def detect(images: tuple[str, ...], as_json: bool) -> None:
    """Find faces in IMAGES: box [x1, y1, x2, y2], 5 landmarks, score."""
    from facesearch.errors import ImageError
    from facesearch.image import load_image
    from facesearch.models.yunet import Detector

    detector = Detector()
    out = []
    failed = 0
    for path in images:
        try:
            dets = detector.detect(load_image(path))
        except ImageError as exc:
            failed += 1
            click.echo(f"error: {exc}", err=True)
            out.append({"image": path, "error": exc.reason, "faces": []})
            continue
        out.append({"image": path, "faces": [d.to_dict() for d in dets]})
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        for item in out:
            if "error" in item:
                continue
            click.echo(f"{item['image']}: {len(item['faces'])} face(s)")
            for f in item["faces"]:
                x1, y1, x2, y2 = f["box"]
                click.echo(f"  box [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]  score {f['score']:.3f}")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("image_a", type=click.Path(dir_okay=False))
@click.argument("image_b", type=click.Path(dir_okay=False))
@click.option("--all", "all_pairs", is_flag=True, help="Compare every face of A with every face of B.")
@threshold_option
@model_option
@click.option("--flip/--no-flip", default=None, help="Flip augmentation (default: the model's).")
@engine_option
@json_option
def verify(
    image_a: str,
    image_b: str,
    all_pairs: bool,
    threshold: float | None,
    model: str,
    flip: bool | None,
    engine: str,
    as_json: bool,
) -> None:
    """1:1 verification: are the faces in IMAGE_A and IMAGE_B the same person?

    Uses the largest face of each photo (``--all``: every pair). Same person when the
    distance d = |f(a) - f(b)|^2 is below the threshold tau. Exit status 0 either way;
    1 when a photo cannot be read or has no face.
    """
    from facesearch.distance import distance
    from facesearch.errors import NoFaceError
    from facesearch.image import load_image

    pipe = make_pipeline(model, flip, engine)
    tau = threshold if threshold is not None else model_threshold(pipe)
    img_a, img_b = load_image(image_a), load_image(image_b)
    if all_pairs:
        fa, fb = pipe.faces(img_a), pipe.faces(img_b)
        for src, fl in ((image_a, fa), (image_b, fb)):
            if not fl:
                raise NoFaceError(src)
        rows = []
        for (i, a), (j, b) in itertools.product(enumerate(fa), enumerate(fb)):
            d = float(distance(a.embedding, b.embedding))
            rows.append({"face_a": i, "box_a": _box(a), "face_b": j, "box_b": _box(b),
                         "distance": round(d, 4), "same": d < tau})
        best = min(rows, key=lambda r: r["distance"])
        if as_json:
            click.echo(json.dumps({"distance": best["distance"], "threshold": tau,
                                   "same": any(r["same"] for r in rows), "pairs": rows,
                                   "model": pipe.model_name}))
            return
        click.echo(f"threshold tau = {tau:.3f} (same person when d < tau)")
        for r in rows:
            verdict = "same person" if r["same"] else "different people"
            click.echo(f"A face {r['face_a']} {r['box_a']}  B face {r['face_b']} {r['box_b']}  "
                       f"d = {r['distance']:.3f}  {verdict}")
        return
    a = pipe.largest_face(img_a, image_a)
    b = pipe.largest_face(img_b, image_b)
    d = float(distance(a.embedding, b.embedding))
    same = d < tau
    if as_json:
        click.echo(json.dumps({"distance": round(d, 4), "threshold": tau, "same": same,
                               "box_a": _box(a), "box_b": _box(b), "model": pipe.model_name}))
        return
    click.echo(f"distance  {d:.3f}")
    click.echo(f"threshold {tau:.3f}")
    click.echo("same person" if same else "different people")


@main.group()
def evaluate() -> None:
    """Measure accuracy on labelled data (LFW verification, clustering)."""


@evaluate.command("lfw")
@click.option("--pairs", "pairs_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="pairs.txt (View 2, 10 folds) or pairsDevTrain/DevTest.txt (View 1).")
@click.option("--images", "images_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The LFW images folder (Name/Name_0001.jpg).")
@model_option
@click.option("--flip/--no-flip", default=None, help="Flip augmentation (default: the model's).")
@json_option
def evaluate_lfw(pairs_path: str, images_dir: str, model: str, flip: bool | None,
                 as_json: bool) -> None:
    """LFW verification protocol: 10-fold accuracy, VAL@FAR=1e-3, ROC AUC, thresholds."""
    from tqdm import tqdm

    from facesearch.evaluate import read_pairs
    from facesearch.lfw import evaluate_pairs

    pairs = read_pairs(pairs_path)
    pipe = make_pipeline(model, flip)
    bar = tqdm(unit="img", disable=not sys.stderr.isatty(), file=sys.stderr)

    def total(n: int) -> None:
        bar.total = n

    report = evaluate_pairs(pipe, pairs, Path(images_dir), default_threshold=model_threshold(pipe),
                            progress=bar.update, on_total=total)
    bar.close()
    if as_json:
        click.echo(json.dumps(report, indent=1, default=float))
        return
    r = report
    click.echo(f"pairs              {r['n_pairs']}  (images {r['images']}, "
               f"fallback detections {r['fallback_images']}, no face {r['no_face_images']})")
    click.echo(f"accuracy           {100 * r['accuracy']:.2f}% ± {100 * r['accuracy_std']:.2f}")
    click.echo(f"VAL @ FAR=1e-3     {100 * r['val_at_far_1e-3']:.2f}% ± {100 * r['val_std']:.2f}")
    click.echo(f"ROC AUC            {r['auc']:.5f}")
    click.echo(f"threshold tau      {r['threshold']:.4f} (mean of the fitted per-fold thresholds)")
    if "default_threshold_accuracy" in r and r["default_threshold_accuracy"] is not None:
        click.echo(f"accuracy at the default tau {r['default_threshold']:.4f}: "
                   f"{100 * r['default_threshold_accuracy']:.2f}%")
