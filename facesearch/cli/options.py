"""Option decorators shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)  # type: ignore[return-value]


def model_option(f: F) -> F:
    return click.option(
        "--model",
        "model",
        default="sface",
        show_default=True,
        help="Embedding model: 'sface' (shipped) or a model file made by 'facesearch train'.",
    )(f)  # type: ignore[return-value]


def engine_option(f: F) -> F:
    return click.option(
        "--engine",
        "engine",
        type=click.Choice(["auto", "numpy", "torch"]),
        default="auto",
        show_default=True,
        help="Network engine: 'numpy' starts ~2 s sooner (no torch import) and, with the native "
        "kernels built, is as fast per face as 'torch'; 'auto': numpy for the shipped model, "
        "torch for a model file.",
    )(f)  # type: ignore[return-value]


def threshold_option(f: F) -> F:
    return click.option(
        "--threshold",
        "threshold",
        type=click.FloatRange(0.0, 4.0),
        default=None,
        help="Distance threshold tau on d = |f(a)-f(b)|^2 (default: the model's calibrated tau).",
    )(f)  # type: ignore[return-value]


def batch_options(f: F) -> F:
    """``--batch-size`` and ``--workers`` of the commands that read photos in bulk."""
    f = click.option(
        "--workers",
        type=click.IntRange(1, 64),
        default=None,
        help="Threads reading and decoding photos  [default: one per core, at most 4]",
    )(f)
    return click.option(  # type: ignore[return-value]
        "--batch-size",
        type=click.IntRange(1, 100_000),
        default=64,
        show_default=True,
        help="Photos per database commit (an interrupted run loses at most one batch).",
    )(f)


def collection_options(f: F) -> F:
    f = click.option(
        "--db",
        "db_url",
        default=None,
        help="SQLAlchemy URL of the store (e.g. postgresql+psycopg://...); default: SQLite in the collection folder.",
    )(f)
    f = click.option(
        "--collection",
        "collection",
        default="default",
        show_default=True,
        help="Collection name.",
    )(f)
    f = click.option(
        "--home",
        "home",
        envvar="FACESEARCH_HOME",
        type=click.Path(file_okay=False),
        default="indexes",
        show_default=True,
        help="Folder holding collections (env FACESEARCH_HOME).",
    )(f)
    return f
