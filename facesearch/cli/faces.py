"""Commands on photos, no collection needed: ``detect``, ``verify``, ``evaluate lfw``."""

from __future__ import annotations

import json
import sys

import click

from facesearch import api
from facesearch.cli.group import main
from facesearch.cli.options import (
    engine_option,
    json_option,
    make_models,
    model_option,
    progress_bar,
    threshold_option,
)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
def detect(images: tuple[str, ...], as_json: bool) -> None:
    """Find faces in IMAGES: box [x1, y1, x2, y2], 5 landmarks, score."""
    found = api.detect_photos(images, models=make_models())
    for item in found:
        if item.error is not None:
            click.echo(f"error: {api.ImageError(item.source, item.error)}", err=True)
    out = [item.to_dict() for item in found]
    failed = sum(item.error is not None for item in found)
    if as_json:
        click.echo(json.dumps(out, indent=1))
    else:
        for row in out:
            if "error" in row:
                continue
            click.echo(f"{row['image']}: {len(row['faces'])} face(s)")
            for f in row["faces"]:
                x1, y1, x2, y2 = f["box"]
                click.echo(
                    f"  box [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]  score {f['score']:.3f}"
                )
    if failed:
        sys.exit(1)


@main.command()
@click.argument("image_a", type=click.Path(dir_okay=False))
@click.argument("image_b", type=click.Path(dir_okay=False))
@click.option(
    "--all", "all_pairs", is_flag=True, help="Compare every face of A with every face of B."
)
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
    res = api.verify(image_a, image_b, models=make_models(model, flip, engine),
                     threshold=threshold, all_pairs=all_pairs)  # fmt: skip
    if as_json:
        click.echo(json.dumps(res.to_dict()))
    elif all_pairs:
        click.echo(f"threshold tau = {res.threshold:.3f} (same person when d < tau)")
        for p in res.pairs:
            verdict = "same person" if p.same else "different people"
            d = p.to_dict()
            click.echo(f"A face {p.face_a} {d['box_a']}  B face {p.face_b} {d['box_b']}  "
                       f"d = {d['distance']:.3f}  {verdict}")  # fmt: skip
    else:
        click.echo(f"distance  {res.distance:.3f}")
        click.echo(f"threshold {res.threshold:.3f}")
        click.echo("same person" if res.same else "different people")


@main.group()
def evaluate() -> None:
    """Measure accuracy on labelled data (LFW verification, clustering)."""


@evaluate.command("lfw")
@click.option(
    "--pairs",
    "pairs_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="pairs.txt (View 2, 10 folds) or pairsDevTrain/DevTest.txt (View 1).",
)
@click.option(
    "--images",
    "images_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The LFW images folder (Name/Name_0001.jpg).",
)
@model_option
@click.option("--flip/--no-flip", default=None, help="Flip augmentation (default: the model's).")
@json_option
def evaluate_lfw(
    pairs_path: str, images_dir: str, model: str, flip: bool | None, as_json: bool
) -> None:
    """LFW verification protocol: 10-fold accuracy, VAL@FAR=1e-3, ROC AUC, thresholds."""
    with progress_bar("img") as bar:
        report = api.evaluate_lfw(pairs_path, images_dir, models=make_models(model, flip),
                                  progress=lambda done, total: bar(total, done, ""))  # fmt: skip
    if as_json:
        click.echo(json.dumps(report, indent=1, default=float))
        return
    r = report
    click.echo(
        f"pairs              {r['n_pairs']}  (images {r['images']}, "
        f"fallback detections {r['fallback_images']}, no face {r['no_face_images']})"
    )
    click.echo(f"accuracy           {100 * r['accuracy']:.2f}% ± {100 * r['accuracy_std']:.2f}")
    click.echo(f"VAL @ FAR=1e-3     {100 * r['val_at_far_1e-3']:.2f}% ± {100 * r['val_std']:.2f}")
    click.echo(f"ROC AUC            {r['auc']:.5f}")
    click.echo(f"threshold tau      {r['threshold']:.4f} (mean of the fitted per-fold thresholds)")
    if "default_threshold_accuracy" in r and r["default_threshold_accuracy"] is not None:
        click.echo(
            f"accuracy at the default tau {r['default_threshold']:.4f}: "
            f"{100 * r['default_threshold_accuracy']:.2f}%"
        )
