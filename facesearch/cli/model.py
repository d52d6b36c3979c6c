"""Model commands of a collection: ``model list|add|use`` and ``reindex``.

See :mod:`facesearch.upgrade` for what registering and re-embedding do.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from facesearch.cli import main
from facesearch.cli.collection import _collection_args, _open
from facesearch.cli.options import batch_options, collection_options, json_option


def _model_rows(col: Any) -> tuple[str | None, list[dict[str, Any]]]:
    from facesearch import store as st
    from facesearch.collection import ACTIVE_MODEL_KEY

    with col.session() as s:
        active = st.get_meta(s, ACTIVE_MODEL_KEY)
        models = st.list_models(s)
        space = set(st.model_space(s, active)[1]) if active is not None else set()
    rows = [
        {
            "name": m.name,
            "dim": m.dim,
            "faces": m.faces,
            "compatible_with": m.compatible_with,
            "active": m.name == active,
            "searchable": m.name in space,
            "path": m.path,
            "threshold": m.threshold,
        }
        for m in models
    ]
    return active, rows


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
    with _open(home, collection, db_url) as col:
        active, rows = _model_rows(col)
    if as_json:
        click.echo(json.dumps({"active": active, "models": rows}, indent=1))
        return
    if not rows:
        click.echo("no model yet (index photos first)")
        return
    width = max(5, *(len(r["name"]) for r in rows))
    click.echo(f"  {'model':<{width}}  {'faces':>6}  compatible with  file")
    for r in rows:
        mark = "*" if r["active"] else " " if r["searchable"] else "-"
        click.echo(
            f"{mark} {r['name']:<{width}}  {r['faces']:>6}  {r['compatible_with'] or '-':<15}  "
            f"{r['path'] or '-'}"
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
    from facesearch.upgrade import add_model

    with _open(*_collection_args(ctx, home, collection, db_url)) as col:
        info = add_model(col, model_file)
        _, rows = _model_rows(col)
    others = sum(r["faces"] for r in rows if r["name"] != info.name)
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
    from facesearch.upgrade import use_model

    with _open(*_collection_args(ctx, home, collection, db_url)) as col:
        info = use_model(col, name)
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
    from tqdm import tqdm

    from facesearch.indexer import default_workers
    from facesearch.pipeline import load_embedder
    from facesearch.upgrade import ReindexProgress, ReindexSettings, reindex_collection

    settings = ReindexSettings(
        batch_size=batch_size, workers=workers or default_workers(), re_embed_all=re_embed_all
    )
    # the lock is taken before loading the network: a second writer is refused at once
    with _open(home, collection, db_url) as col, col.lock():
        embedder = _load_embedder(load_embedder, model_file)
        bars: list[Any] = []

        def progress(p: ReindexProgress) -> None:
            if not bars:
                bars.append(
                    tqdm(
                        total=p.total,
                        unit="face",
                        disable=not sys.stderr.isatty(),
                        file=sys.stderr,
                        dynamic_ncols=True,
                        smoothing=0.1,
                    )
                )
            bars[0].update(p.done - bars[0].n)

        try:
            report = reindex_collection(
                col,
                embedder,
                settings,
                source=None if model_file == "sface" else model_file,
                progress=progress,
            )
        finally:
            for bar in bars:
                bar.close()
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


def _load_embedder(load: Any, model_file: str) -> Any:
    """Indirection for tests (they share one embedder per model file)."""
    return load(model_file)


def _print_report(r: Any) -> None:
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
    if r.failures:
        click.echo("skipped:", err=True)
        for path, error in r.failures[:20]:
            click.echo(f"  {path}: {error}", err=True)
        if len(r.failures) > 20:
            click.echo(f"  ... and {len(r.failures) - 20} more", err=True)


__all__ = ["model", "reindex"]
