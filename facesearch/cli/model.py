"""Model commands of a collection: ``model list|add|use`` and ``reindex``.

See :mod:`facesearch.model_upgrade` for what registering and re-embedding do.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from facesearch import api
from facesearch.cli.group import main
from facesearch.cli.options import (
    batch_options,
    collection_args,
    collection_options,
    echo_failures,
    json_option,
    make_models,
    open_collection,
    progress_bar,
)

if TYPE_CHECKING:
    from facesearch.model_upgrade import ReindexReport


@main.group("model", invoke_without_command=True)
@collection_options
@json_option
@click.pass_context
def model(
    ctx: click.Context, home: str, collection: str, db_url: str | None, as_json: bool
) -> None:
    """List the embedding models registered in a collection (subcommands: add, use).

    The active model embeds queries; the index holds the faces of the active model and of
    every model compatible with it (trained with --compatible-with), which are searched
    directly.
    """
    if ctx.invoked_subcommand is not None:
        return
    with open_collection(home, collection, db_url) as col:
        listing = api.list_models(col)
    if as_json:
        click.echo(json.dumps(listing.to_dict(), indent=1))
        return
    if not listing.models:
        click.echo("no model yet (index photos first)")
        return
    width = max(5, *(len(m.name) for m in listing.models))
    click.echo(f"  {'model':<{width}}  {'faces':>6}  compatible with  file")
    for m in listing.models:
        mark = "*" if m.active else " " if m.searchable else "-"
        click.echo(
            f"{mark} {m.name:<{width}}  {m.faces:>6}  {m.compatible_with or '-':<15}  "
            f"{m.path or '-'}"
        )
    click.echo("* active (embeds queries); - not searchable with it (another embedding space)")


@model.command("add")
@click.argument("model_file", metavar="MODEL")
@collection_options
@click.pass_context
def model_add(
    ctx: click.Context, model_file: str, home: str, collection: str, db_url: str | None
) -> None:
    """Register MODEL ('sface' or a model file) and make it embed the queries.

    MODEL must be compatible with the collection's active model (trained with
    'facesearch train ... --compatible-with OLD'): the stored faces keep their vectors and are
    searched directly with the new model's queries. An incompatible model is refused and
    nothing changes ('facesearch reindex --model MODEL --re-embed-all' moves the collection to
    it instead). 'facesearch reindex --model MODEL' re-embeds the stored faces later.
    """
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        info = api.add_model(col, model_file)
        others = sum(m.faces for m in api.list_models(col).models if m.name != info.name)
    base = f" (compatible with {info.compatible_with})" if info.compatible_with else ""
    click.echo(f"model {info.name}{base} registered: queries are embedded with it")
    if others:
        click.echo(
            f"{others} faces keep their older vectors and are searched directly; "
            f"'facesearch reindex --model {model_file}' re-embeds them"
        )


@model.command("use")
@click.argument("name")
@collection_options
@click.pass_context
def model_use(
    ctx: click.Context, name: str, home: str, collection: str, db_url: str | None
) -> None:
    """Make the registered model NAME embed the queries (e.g. go back to an older model).

    NAME must be compatible with the active model.
    """
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        info = api.use_model(col, name)
    click.echo(f"model {info.name} is active: queries are embedded with it")


@main.command()
@click.option(
    "--model",
    "model_file",
    required=True,
    help="The new model: 'sface' or a file made by 'facesearch train'.",
)
@click.option(
    "--re-embed-all",
    is_flag=True,
    help="Accept a model that is not compatible with the collection's: every face is "
    "re-embedded and the model is used for queries only once all are done.",
)
@batch_options
@collection_options
@json_option
def reindex(
    model_file: str,
    re_embed_all: bool,
    batch_size: int,
    workers: int | None,
    home: str,
    collection: str,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Re-embed the collection's faces with a new model (from the stored photos).

    A compatible model (trained with --compatible-with the collection's model) is registered
    and embeds queries at once; old and new vectors are compared directly, so the collection
    stays searchable while faces are re-embedded. An incompatible model is refused unless
    --re-embed-all: then queries keep the old model until every face is re-embedded.

    Faces are aligned from their stored landmarks (no detection); a photo whose file is gone
    or changed is skipped and reported (its faces keep their vectors). Committed every
    --batch-size photos: Ctrl-C or a kill keeps what was committed, and the same command
    continues with the faces not yet re-embedded.
    """
    with open_collection(home, collection, db_url) as col, progress_bar("face") as bar:
        report = api.reindex(
            col, model_file, models=make_models(), re_embed_all=re_embed_all,
            batch_size=batch_size, workers=workers, progress=lambda p: bar(p.total, p.done, ""),
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        _print_report(report)
    if report.interrupted:
        click.echo(
            "interrupted: the faces committed so far keep their new vectors; run the same "
            "command again to continue",
            err=True,
        )
        sys.exit(130)


def _print_report(r: ReindexReport) -> None:
    click.echo(
        f"faces:   {r.reembedded} re-embedded with {r.model} ({r.photos} photos), "
        f"{r.faces - r.todo} already were, {r.skipped} skipped"
    )
    secs = max(r.seconds, 1e-9)
    click.echo(f"time:    {r.seconds:.1f} s ({r.reembedded / secs:.1f} faces/s)")
    if r.active:
        click.echo(f"model:   {r.model} is active: queries are embedded with it")
    elif r.remaining:
        click.echo(
            f"model:   {r.model} is not active yet: {r.remaining} faces are not re-embedded "
            "(queries keep the old model until all are; fix the photos below, or remove them "
            "with 'facesearch index PATH --prune', and run the command again)"
        )
    echo_failures("skipped:", r.failures)


__all__ = ["model", "reindex"]
