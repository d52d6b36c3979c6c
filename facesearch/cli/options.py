"""What the commands share: option decorators, opening a collection, the models, progress
bars and a few renderers."""

from __future__ import annotations

import contextlib
import dataclasses
import math
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


class FiniteFloat(click.FloatRange):
    """The float type of every option: a finite number (``nan``, ``inf`` and literals that
    overflow, such as ``1e999``, are refused: a NaN threshold would silently make every face
    "unknown"), optionally within a range (:class:`click.FloatRange`'s arguments)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a valid float.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(f)


def model_option(f: F) -> F:
    return click.option(
        "--model",
        "model",
        default="sface",
        show_default=True,
        help="Embedding model: 'sface' (shipped), 'sface+dlib' (shipped: SFace fused with "
        "dlib's ResNet, 256-d, slower; README 'Models') or a model file made by "
        "'facesearch train'.",
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
        type=FiniteFloat(0.0, 4.0),
        default=None,
        help="Distance threshold tau on d = |f(a)-f(b)|^2 (default: the model's calibrated tau).",
    )(f)


def fallback_option(f: F) -> F:
    return click.option(
        "--fallback/--no-fallback",
        "fallback",
        default=True,
        show_default=True,
        help="Search a photo in which no face is found again, upscaled 2x (photos up to 800 px: "
        "crops, thumbnails); such faces are recorded as found by the 'upscaled' pass.",
    )(f)


def aligned_option(f: F) -> F:
    return click.option(
        "--aligned",
        is_flag=True,
        help="The photos are face crops on the alignment template (square, such as 112x112 "
        "ArcFace crops, or 96x112): each is one face, embedded as it is, without detection.",
    )(f)


def detection_options(f: F) -> F:
    """``--aligned`` and ``--fallback/--no-fallback`` of the commands that embed photos."""
    return aligned_option(fallback_option(f))


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
    """Collection options of a subcommand, falling back to those given to its group.

    What was given on the command line wins: the subcommand's own option first, then its
    group's (``facesearch people --home X rename A B`` and ``people rename A B --home X`` both
    mean X); ``FACESEARCH_HOME`` and the defaults only fill in what neither was given.
    """
    from click.core import ParameterSource

    values: dict[str, Any] = {"home": home, "collection": collection, "db_url": db_url}
    parent = ctx.parent
    if parent is not None:
        for key in values:
            if ctx.get_parameter_source(key) is ParameterSource.COMMANDLINE:
                continue
            if key in parent.params and (
                parent.get_parameter_source(key) is ParameterSource.COMMANDLINE
            ):
                values[key] = parent.params[key]
    return values["home"], values["collection"], values["db_url"]


def lock_timeout() -> float | None:
    """``FACESEARCH_LOCK_TIMEOUT`` in seconds (``None``: the library's default)."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise click.UsageError(
            f"{LOCK_TIMEOUT_ENV} must be a finite number of seconds >= 0, got {raw!r}"
        )
    return seconds


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


def make_models(
    model: str = "sface", flip: bool | None = None, engine: str = "auto", *, fallback: bool = True
) -> Models:
    """The :class:`Models` of ``--model``, ``--flip``, ``--engine`` and ``--no-fallback``."""
    from facesearch.pipeline import Models, PipelineConfig

    config = PipelineConfig(model=model, engine=engine, fallback=fallback)
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
