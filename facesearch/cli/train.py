"""``facesearch train``: fine-tune the embedder on a folder labelled by subfolders."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from facesearch import api
from facesearch.cli.group import main
from facesearch.cli.options import json_option

if TYPE_CHECKING:
    from facesearch.train.run import TrainRun

#: Mirrors facesearch.train.split.DEFAULT_FREEZE_UNTIL (not imported: it pulls in torch).
DEFAULT_FREEZE_UNTIL = "conv_14"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


@main.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Model file to write (e.g. mymodel.pt).",
)
@click.option("--epochs", type=click.IntRange(0), default=10, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(0.0, min_open=True),
    default=3e-4,
    show_default=True,
    help="Peak learning rate (AdamW, cosine decay).",
)
@click.option(
    "--freeze-until",
    "freeze_until",
    default=DEFAULT_FREEZE_UNTIL,
    show_default=True,
    metavar="LAYER",
    help="Freeze every layer before LAYER and train LAYER onwards ('none': train "
    "everything; 'list': print the layer names).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.1,
    show_default=True,
    help="Fraction of the PEOPLE held out for validation.",
)
@click.option(
    "--batch-people",
    "-P",
    "people",
    type=click.IntRange(2),
    default=16,
    show_default=True,
    help="People per batch (P).",
)
@click.option(
    "--batch-images",
    "-K",
    "images",
    type=click.IntRange(2),
    default=4,
    show_default=True,
    help="Photos per person per batch (K).",
)
@click.option(
    "--margin",
    type=click.FloatRange(0.0, 4.0, min_open=True),
    default=0.2,
    show_default=True,
    help="Triplet margin alpha on d = |f(a)-f(b)|^2.",
)
@click.option(
    "--mining",
    type=click.Choice(["semi-hard", "batch-hard"]),
    default="semi-hard",
    show_default=True,
)
@click.option(
    "--no-semi-hard",
    "fallback",
    type=click.Choice(["nearest", "skip"]),
    default="nearest",
    show_default=True,
    help="A pair without a semi-hard negative takes the negative nearest the band, or is skipped.",
)
@click.option(
    "--compatible-with",
    "compatible_with",
    default=None,
    metavar="OLD",
    help="Harmonic training: new vectors stay comparable with those of OLD "
    "('sface' or a model file).",
)
@click.option(
    "--new-head",
    is_flag=True,
    help="Re-initialise the embedding layer (pre_fc1, fc1) before training: a new "
    "embedding space (only comparable with old vectors through --compatible-with).",
)
@click.option(
    "--base",
    default="sface",
    show_default=True,
    help="Model to start from: 'sface' or a model file.",
)
@click.option(
    "--crops",
    "crop_mode",
    type=click.Choice(["detect", "aligned", "centre"]),
    default="detect",
    show_default=True,
    help="detect+align faces, photos already aligned crops, or centre square.",
)
@click.option(
    "--cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="Keep the aligned crops in this .npz for the next run.",
)
@click.option(
    "--flip/--no-flip", default=True, show_default=True, help="Random mirror augmentation."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device", default=None, help="torch device (default: cuda when available, else cpu)."
)
@click.option("--threads", type=click.IntRange(1), default=None, help="torch CPU threads.")
@json_option
def train(
    data: str,
    out: str,
    epochs: int,
    lr: float,
    freeze_until: str,
    val_fraction: float,
    people: int,
    images: int,
    margin: float,
    mining: str,
    fallback: str,
    compatible_with: str | None,
    new_head: bool,
    base: str,
    crop_mode: str,
    cache: str | None,
    flip: bool,
    seed: int,
    device: str | None,
    threads: int | None,
    as_json: bool,
) -> None:
    """Fine-tune the embedder on DATA, a folder with one subfolder of photos per person.

    FaceNet triplet loss with online semi-hard mining on P x K batches; the trunk up to
    --freeze-until is frozen (its features are computed once). People are split into
    training and validation; validation verification accuracy is printed before and
    after, and the model file records its parent, data, settings and calibrated
    threshold. Use the result with --model MODEL.
    """
    if freeze_until == "list":
        for name in api.train_layers():
            click.echo(name)
        return
    try:
        api.check_train_layer(freeze_until)
    except api.ArgumentError as e:
        raise click.BadParameter(str(e), param_hint="--freeze-until") from e
    from facesearch.train.loop import TrainSettings

    try:
        settings = TrainSettings(
            epochs=epochs, lr=lr, freeze_until=freeze_until, val_fraction=val_fraction,
            people=people, images=images, margin=margin, mining=mining,  # type: ignore[arg-type]
            fallback=fallback,  # type: ignore[arg-type]
            base=base, compatible_with=compatible_with, flip=flip, new_head=new_head, seed=seed,
            device=device,
        )  # fmt: skip
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    run = api.train(data, out, settings, crop_mode=crop_mode,  # type: ignore[arg-type]
                    cache=cache, threads=threads,
                    progress=sys.stderr.isatty())  # fmt: skip
    if as_json:
        click.echo(json.dumps(_train_doc(run), indent=1))
    else:
        _print_run(run)


def _train_doc(run: TrainRun) -> dict[str, Any]:
    meta = run.meta
    return {
        "model": meta["name"],
        "path": str(run.path),
        "threshold": meta["threshold"],
        "validation": meta["validation"],
        "data": meta["data"],
        "compatible_with": meta["compatible_with"],
        "epochs": [dict(h.items()) for h in meta["history"]],
    }


def _print_run(run: TrainRun) -> None:
    r = run.result
    meta = run.meta
    d = meta["data"]
    click.echo(f"model        {meta['name']}  ->  {run.path}")
    click.echo(
        f"data         {d['people']} people, {d['images']} photos "
        f"({d['skipped_photos']} without a face); train {d['train']['people']} people / "
        f"validation {d['validation'].get('people', 0)} people"
    )
    for h in r.history:
        click.echo(
            f"epoch {h.epoch:3d}    loss {h.loss:.4f}  active {h.active:.3f}  "
            f"d(a,p) {h.d_ap:.3f}  d(a,n) {h.d_an:.3f}  {h.seconds:.1f}s  "
            f"{h.images_per_s:.0f} img/s  val {_pct(h.val_accuracy)}"
        )
    click.echo(f"validation   {_pct(r.val_before)} before  ->  {_pct(r.val_after)} after")
    if r.val_cross is not None:
        click.echo(
            f"cross-model  {_pct(r.val_cross)} (new vs {meta['compatible_with']['name']} vectors)"
        )
    tau = meta["threshold"]
    click.echo(f"threshold    {'-' if tau is None else f'{tau:.4f}'}")
