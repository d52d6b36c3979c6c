"""What the commands share: option decorators, opening a collection, the models, progress
bars and a few renderers."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from facesearch.pipeline import ENGINES

if TYPE_CHECKING:
    from facesearch.api import CollectionRef
    from facesearch.collection import Collection
    from facesearch.pipeline import FacePipeline, Models, PipelineConfig

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)


def model_option(f: F) -> F:
    return click.option(
        "--model",
        "model",
        default="sface",
        show_default=True,
        help="Embedding model: 'sface' (shipped) or a model file made by 'facesearch train'.",
    )(f)


def engine_option(f: F) -> F:
    return click.option(
        "--engine",
        "engine",
        type=click.Choice(ENGINES),
        default="auto",
        show_default=True,
        help="Network engine: 'numpy' starts sooner (no torch import) and, with the native "
        "kernels built, is as fast per face as 'torch'; 'auto': numpy for the shipped model "
        "(with the native kernels, or for a small job), torch otherwise.",
    )(f)


def threshold_option(f: F) -> F:
    return click.option(
        "--threshold",
        "threshold",
        type=click.FloatRange(0.0, 4.0),
        default=None,
        help="Distance threshold tau on d = |f(a)-f(b)|^2 (default: the model's calibrated tau).",
    )(f)


def batch_options(f: F) -> F:
    """``--batch-size`` and ``--workers`` of the commands that read photos in bulk."""
    f = click.option(
        "--workers",
        type=click.IntRange(1, 64),
        default=None,
        help="Threads reading and decoding photos  [default: one per core, at most 4]",
    )(f)
    return click.option(
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
        help="SQLAlchemy URL of the store (e.g. postgresql+psycopg://...); default: SQLite in "
        "the collection folder.",
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


# -- what every command shares -------------------------------------------------------------------

#: Environment variable: seconds a writer waits for another writer (default 10).
LOCK_TIMEOUT_ENV = "FACESEARCH_LOCK_TIMEOUT"


def collection_args(
    ctx: click.Context, home: str, collection: str, db_url: str | None
) -> tuple[str, str, str | None]:
    """Collection options of a subcommand, falling back to those given to its group
    (``facesearch people --home X rename A B`` and ``people rename A B --home X`` both work)."""
    from click.core import ParameterSource

    values: dict[str, Any] = {"home": home, "collection": collection, "db_url": db_url}
    parent = ctx.parent
    if parent is not None:
        for key in values:
            if ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, None) and key in (
                parent.params
            ):
                values[key] = parent.params[key]
    return values["home"], values["collection"], values["db_url"]


def lock_timeout() -> float | None:
    """``FACESEARCH_LOCK_TIMEOUT`` in seconds (``None``: the library's default)."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise click.UsageError(
            f"{LOCK_TIMEOUT_ENV} must be a number of seconds, got {raw!r}"
        ) from None


def collection_ref(home: str, collection: str, db_url: str | None) -> CollectionRef:
    from facesearch.api import CollectionRef

    return CollectionRef(home, collection, db_url, lock_timeout())


def open_collection(
    home: str, collection: str, db_url: str | None, *, create: bool = False
) -> Collection:
    """Open a collection; a writer waits ``FACESEARCH_LOCK_TIMEOUT`` seconds (default 10)."""
    return collection_ref(home, collection, db_url).open(create=create)


def build_pipeline(config: PipelineConfig) -> FacePipeline:
    """The pipelines of the commands' :class:`Models` (tests share theirs through it)."""
    from facesearch.pipeline import FacePipeline
    from facesearch.process import resume_gc

    pipe = FacePipeline(config)
    resume_gc()
    return pipe


def make_models(model: str = "sface", flip: bool | None = None, engine: str = "auto") -> Models:
    """The :class:`Models` of ``--model``, ``--flip`` and ``--engine``."""
    from facesearch.pipeline import Models, PipelineConfig

    config = PipelineConfig(model=model, engine=engine)
    if flip is not None:  # None: the config's default
        config = dataclasses.replace(config, flip=flip)
    return Models(config, factory=lambda c: build_pipeline(c))


@contextlib.contextmanager
def progress_bar(unit: str) -> Iterator[Callable[[int, int, str], None]]:
    """``update(total, done, postfix)`` drawing a bar on stderr (a terminal only)."""
    from tqdm import tqdm

    bars: list[Any] = []  # made on the first event, when the total is known

    def update(total: int, done: int, postfix: str = "") -> None:
        if not bars:
            bars.append(
                tqdm(total=total, unit=unit, disable=not sys.stderr.isatty(), file=sys.stderr,
                     dynamic_ncols=True, smoothing=0.1)
            )  # fmt: skip
        bar = bars[0]
        if postfix:
            bar.set_postfix_str(postfix, refresh=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def echo_failures(title: str, failures: Sequence[tuple[str, str]], shown: int = 20) -> None:
    """``(path, error)`` pairs on stderr, at most ``shown`` then "... and N more"."""
    if not failures:
        return
    click.echo(title, err=True)
    for path, error in failures[:shown]:
        click.echo(f"  {path}: {error}", err=True)
    if len(failures) > shown:
        click.echo(f"  ... and {len(failures) - shown} more", err=True)
