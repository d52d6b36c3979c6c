"""Collection commands: ``index``, ``query``, ``people``, ``enroll``, ``info``, ``db upgrade``.

Every command takes ``--home`` / ``--collection`` / ``--db`` (see
:func:`facesearch.cli.options.collection_options`). Heavy modules are imported inside the
commands. Results go to stdout (a table, or JSON with ``--json``); progress and logs to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from facesearch.cli import main
from facesearch.cli.options import (
    batch_options,
    collection_options,
    engine_option,
    json_option,
    threshold_option,
)

#: ``facesearch index --index-type`` choices (``facesearch.vectors.KINDS``, checked by a test).
INDEX_TYPES = ("auto", "flat", "ivf", "pq")
#: Environment variable: seconds a writer waits for another writer (default 10).
LOCK_TIMEOUT_ENV = "FACESEARCH_LOCK_TIMEOUT"
#: Failed photos listed by the ``index`` summary before "... and N more".
MAX_FAILURES_SHOWN = 20


# -- helpers ------------------------------------------------------------------------------------


def _collection_args(ctx: click.Context, home: str, collection: str, db_url: str | None) -> tuple:
    """Collection options of a subcommand, falling back to those given to its group
    (``facesearch people --home X rename A B`` and ``people rename A B --home X`` both work)."""
    from click.core import ParameterSource

    values = {"home": home, "collection": collection, "db_url": db_url}
    parent = ctx.parent
    if parent is not None:
        for key in values:
            if ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, None) and key in (
                parent.params
            ):
                values[key] = parent.params[key]
    return values["home"], values["collection"], values["db_url"]


def _open(home: str, collection: str, db_url: str | None, *, create: bool = False) -> Any:
    """Open a collection; a writer waits ``FACESEARCH_LOCK_TIMEOUT`` seconds (default 10) for
    another writer before giving up."""
    from facesearch.collection import DEFAULT_LOCK_TIMEOUT, Collection

    raw = os.environ.get(LOCK_TIMEOUT_ENV)
    try:
        timeout = DEFAULT_LOCK_TIMEOUT if not raw else float(raw)
    except ValueError:
        raise click.UsageError(
            f"{LOCK_TIMEOUT_ENV} must be a number of seconds, got {raw!r}"
        ) from None
    return Collection.open(home, collection, db_url=db_url, create=create, lock_timeout=timeout)


def _pipeline_model(col: Any, model: str | None) -> str:
    """``--model`` or, without it, the collection's active model (``sface`` for a new one)."""
    if model is not None:
        return model
    active = col.active_model
    if active is None or active.name == "sface":
        return "sface"
    if not active.path or not os.path.isfile(active.path):
        from facesearch.errors import ModelError

        raise ModelError(
            f"collection {col.name!r} uses model {active.name!r}, whose file "
            f"{active.path or '(unknown)'} is not found: give it with --model FILE"
        )
    return str(active.path)


def _loader_config(model: str) -> Any:
    """The configuration of the torch pipeline the indexer's loader builds: with the shipped
    model the indexer runs the numpy engine instead when the native kernels are built, or for a
    small run, and gives a larger one a head start (:mod:`facesearch.indexer`)."""
    from facesearch.cli.faces import pipeline_config

    return pipeline_config(model, engine="torch")


def _make_pipeline(model: str, engine: str = "bulk") -> Any:
    from facesearch.cli.faces import make_pipeline

    return make_pipeline(model, engine=engine)


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _labels_param(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value == "folders":
        return value
    if not os.path.isfile(value):
        raise click.BadParameter(
            f"{value!r} is neither 'folders' nor an existing CSV file (path,person)",
            ctx=ctx,
            param=param,
        )
    return value


# -- index --------------------------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--labels",
    default=None,
    callback=_labels_param,
    metavar="folders|FILE.csv",
    help="Name the people: 'folders' (the parent folder is the person) or a CSV of "
    "path,person rows. A photo with several faces labels only a clearly dominant face "
    "(at least 2x the area of the next).",
)
@click.option("--prune", is_flag=True, help="Remove photos under PATHs whose files are gone.")
@click.option(
    "--model",
    default=None,
    help="Embedding model: 'sface' or a file made by 'facesearch train' "
    "(default: the collection's model, 'sface' for a new collection).",
)
@click.option(
    "--index-type",
    type=click.Choice(INDEX_TYPES),
    default=None,
    help="Vector index: exact 'flat'; 'pq' (exact vectors plus a PQ fast-scan accelerator, "
    "candidates re-ranked exactly); approximate 'ivf'; or 'auto' (flat up to 50,000 faces, pq "
    "above). Kept by the collection.  [default: keep the setting, 'auto' for a new collection]",
)
@batch_options
@collection_options
@json_option
def index(
    paths: tuple[str, ...],
    labels: str | None,
    prune: bool,
    model: str | None,
    index_type: str | None,
    batch_size: int,
    workers: int | None,
    home: str,
    collection: str,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Index the photos under PATHs (folders, recursively, or files) into a collection.

    Creates the collection if needed. Incremental: unchanged photos are skipped, moved or
    renamed photos keep their faces and labels. Hidden files are skipped. A photo that cannot
    be read is recorded with its error and reported; the run goes on. Ctrl-C keeps what was
    committed: run the command again to continue. One writer at a time: a second one waits
    FACESEARCH_LOCK_TIMEOUT seconds (default 10), then stops with an error.
    """
    from tqdm import tqdm

    from facesearch.indexer import IndexSettings, Progress, default_workers, index_paths

    settings = IndexSettings(
        labels=labels,
        prune=prune,
        batch_size=batch_size,
        workers=workers or default_workers(),
        index_type=index_type,
    )
    # The lock is taken before loading the networks: a second writer is refused at once. The
    # networks are loaded when the first photo that needs them has been read (the next ones
    # are read meanwhile), and not at all when every photo is unchanged.
    with _open(home, collection, db_url, create=True) as col, col.lock():
        pipeline_model = _pipeline_model(col, model)

        def pipe() -> Any:
            return _make_pipeline(pipeline_model, "torch")

        bars: list[Any] = []  # made on the first event, when the number of photos is known

        def progress(p: Progress) -> None:
            if not bars:
                bars.append(
                    tqdm(
                        total=p.total,
                        unit="photo",
                        disable=not sys.stderr.isatty(),
                        file=sys.stderr,
                        dynamic_ncols=True,
                        smoothing=0.1,
                    )
                )
            bar = bars[0]
            elapsed = bar.format_dict.get("elapsed") or 0.0
            rate = p.faces / elapsed if elapsed else 0.0
            bar.set_postfix_str(f"{p.faces} faces, {rate:.1f} faces/s", refresh=False)
            bar.update(p.done - bar.n)

        try:
            report = index_paths(
                col,
                pipe,
                paths,
                settings,
                progress=progress,
                loader_config=_loader_config(pipeline_model),
            )
        finally:
            for bar in bars:
                bar.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        _print_index_report(report, prune)
    if report.interrupted:
        click.echo(
            "interrupted: the photos committed so far are kept; run the same command again "
            "to continue",
            err=True,
        )
        sys.exit(130)


def _print_index_report(r: Any, prune: bool) -> None:
    click.echo(
        f"photos: {r.files} found: {r.new} new, {r.updated} updated, {r.unchanged} unchanged, "
        f"{r.moved} moved, {r.failed} failed"
    )
    click.echo(f"faces:  {r.faces_added} added; {r.no_face} photos without a face")
    if r.labels_given or r.labels_skipped or r.labels_not_found:
        line = (
            f"labels: {r.labels_given} given, {r.labels_skipped} skipped "
            "(several faces, none clearly the largest)"
        )
        if r.labels_not_found:
            line += f", {r.labels_not_found} listed photos not found"
        click.echo(line)
    if r.pruned:
        click.echo(f"pruned: {r.pruned} photos whose files are gone")
    if r.missing:
        click.echo(f"missing: {r.missing} photos whose files are gone (--prune removes them)")
    secs = max(r.seconds, 1e-9)
    click.echo(
        f"time:   {r.seconds:.1f} s ({r.processed / secs:.1f} photos/s, "
        f"{r.faces_added / secs:.1f} faces/s)"
    )
    if r.failures:
        click.echo("failed:", err=True)
        for path, error in r.failures[:MAX_FAILURES_SHOWN]:
            click.echo(f"  {path}: {error}", err=True)
        if len(r.failures) > MAX_FAILURES_SHOWN:
            click.echo(f"  ... and {len(r.failures) - MAX_FAILURES_SHOWN} more", err=True)


# -- query --------------------------------------------------------------------------------------


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option(
    "-k",
    "k",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="Nearest faces shown per query face.",
)
@threshold_option
@collection_options
@engine_option
@json_option
def query(
    image: str,
    k: int,
    threshold: float | None,
    home: str,
    collection: str,
    db_url: str | None,
    engine: str,
    as_json: bool,
) -> None:
    """Who is in IMAGE? 1:K identification of every face against the collection.

    The query is embedded with the collection's active model (see 'facesearch model').

    For each face: the K nearest stored faces grouped by person (best distance, count), and
    a verdict: the person of the nearest labelled face when its distance d is below tau,
    else "unknown". Exit status 1 when the photo cannot be read or has no face.
    """
    from facesearch.cli.prefetch import EarlyFaces

    # First of all: the photo's faces are computed (numpy engine, shipped model) in a child
    # process while this one imports SQLAlchemy and opens the collection (cli/prefetch.py).
    early = EarlyFaces(image) if engine != "torch" else None
    try:
        from facesearch.cli.faces import model_threshold, resolve_engine, shipped_threshold
        from facesearch.errors import NoFaceError
        from facesearch.search import identify_faces
        from facesearch.types import Face
        from facesearch.upgrade import check_query_embedder, query_model

        with _open(home, collection, db_url) as col:
            _ = col.vectors  # fails early (no faces yet)
            model = query_model(col)
            engine_used = resolve_engine(model, engine)
            if early is not None and engine_used == "numpy":
                _, detections, vectors = early.result()  # ImageError for a bad photo
                faces = [Face(d, v, "sface") for d, v in zip(detections, vectors, strict=True)]
                tau = threshold if threshold is not None else shipped_threshold("identify")
            else:
                from facesearch.image import load_image

                img = load_image(image)
                found = [early.result()[1]] if early is not None else None  # same detector
                pipe = _make_pipeline(model, engine_used)
                check_query_embedder(col, pipe.embedder)  # the registered model file, unchanged
                tau = threshold if threshold is not None else model_threshold(pipe, "identify")
                faces = pipe.faces_batch([img], found)[0]
            if not faces:
                raise NoFaceError(image)
            faces = sorted(faces, key=lambda f: (f.detection.box[0], f.detection.box[1]))
            results = identify_faces(col, faces, k=k, threshold=tau)
    finally:
        if early is not None:
            early.cancel()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=1))
        return
    for i, r in enumerate(results, start=1):
        assert r.face is not None
        x1, y1, x2, y2 = (round(v) for v in r.face.detection.box)
        if r.person is not None:
            verdict = f"{r.person} (d {r.distance:.3f} < tau {tau:.3f})"
        elif r.distance is not None:
            verdict = f"unknown (nearest labelled face d {r.distance:.3f} >= tau {tau:.3f})"
        else:
            verdict = f"unknown (no labelled face within tau {tau:.3f})"
        click.echo(f"face {i} [{x1}, {y1}, {x2}, {y2}]: {verdict}")
        if not r.groups:
            click.echo("  (the collection has no faces)")
            continue
        width = max(12, *(len(g.person or "(unlabelled)") for g in r.groups))
        click.echo(f"  {'person':<{width}}  {'best d':>6}  {'faces':>5}  nearest photo")
        for g in r.groups:
            name = g.person if g.person is not None else "(unlabelled)"
            click.echo(f"  {name:<{width}}  {g.distance:>6.3f}  {g.count:>5}  {g.photo}")


# -- people -------------------------------------------------------------------------------------


@main.group(invoke_without_command=True)
@collection_options
@json_option
@click.pass_context
def people(
    ctx: click.Context, home: str, collection: str, db_url: str | None, as_json: bool
) -> None:
    """List the people of a collection with their face and photo counts.

    Subcommands rename, merge and delete people.
    """
    if ctx.invoked_subcommand is not None:
        return
    from facesearch import store as st

    with _open(home, collection, db_url) as col, col.session() as s:
        rows = st.people(s)
    if as_json:
        click.echo(
            json.dumps([{"person": p.name, "faces": p.faces, "photos": p.photos} for p in rows])
        )
        return
    if not rows:
        click.echo("no people yet (index with --labels, or `facesearch enroll NAME IMG`)")
        return
    width = max(6, *(len(p.name) for p in rows))
    click.echo(f"{'person':<{width}}  {'faces':>5}  {'photos':>6}")
    for p in rows:
        click.echo(f"{p.name:<{width}}  {p.faces:>5}  {p.photos:>6}")


@people.command("rename")
@click.argument("old")
@click.argument("new")
@collection_options
@click.pass_context
def people_rename(
    ctx: click.Context, old: str, new: str, home: str, collection: str, db_url: str | None
) -> None:
    """Rename person OLD to NEW (NEW must not exist: merge instead)."""
    with _open(*_collection_args(ctx, home, collection, db_url)) as col:
        col.rename_person(old, new)
    click.echo(f"renamed {old!r} to {new!r}")


@people.command("merge")
@click.argument("source")
@click.argument("target")
@collection_options
@click.pass_context
def people_merge(
    ctx: click.Context, source: str, target: str, home: str, collection: str, db_url: str | None
) -> None:
    """Merge person SOURCE into TARGET: SOURCE's faces become TARGET's, SOURCE is deleted."""
    with _open(*_collection_args(ctx, home, collection, db_url)) as col:
        n = col.merge_people(source, target)
    click.echo(f"merged {source!r} into {target!r}: {n} faces moved")


@people.command("delete")
@click.argument("name")
@click.option("--faces", is_flag=True, help="Also delete the person's faces and their vectors.")
@collection_options
@click.pass_context
def people_delete(
    ctx: click.Context, name: str, faces: bool, home: str, collection: str, db_url: str | None
) -> None:
    """Delete person NAME (the faces stay, unlabelled, unless --faces)."""
    from facesearch import store as st

    with _open(*_collection_args(ctx, home, collection, db_url)) as col, col.lock():
        with col.session() as s:
            n_faces = len(st.person_face_ids(s, name))
        removed = col.delete_person(name, faces=faces)
    if faces:
        click.echo(f"deleted {name!r} and {len(removed)} faces")
    else:
        click.echo(f"deleted {name!r}; {n_faces} faces are now unlabelled")


# -- enroll -------------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--model",
    default=None,
    help="Embedding model for a new collection (default: the collection's, or 'sface').",
)
@collection_options
def enroll(
    name: str,
    images: tuple[str, ...],
    model: str | None,
    home: str,
    collection: str,
    db_url: str | None,
) -> None:
    """Add person NAME from one or more photos (the largest face of each).

    The photos are recorded in the collection (created if needed); a photo already indexed
    keeps its faces and its largest face gets NAME. Exit status 1 if a photo cannot be read or
    has no face (the others are enrolled).
    """
    from facesearch.indexer import enroll_photos

    with _open(home, collection, db_url, create=True) as col, col.lock():
        pipe = _make_pipeline(_pipeline_model(col, model))
        done, errors = enroll_photos(col, pipe, name, images)
    for _path, msg in errors:
        click.echo(f"error: {msg}", err=True)
    if done:
        click.echo(f"enrolled {name!r} from {done} photo{'s' if done != 1 else ''}")
    if errors:
        sys.exit(1)


# -- info ---------------------------------------------------------------------------------------


@main.command()
@collection_options
@json_option
def info(home: str, collection: str, db_url: str | None, as_json: bool) -> None:
    """Counts, model, vector index, size on disk and a consistency check of SQL and index."""
    with _open(home, collection, db_url) as col:
        data = col.info(check=True)
    if as_json:
        click.echo(json.dumps(data, indent=1, default=str))
        return
    c = data["consistency"]
    idx = data["index"]
    click.echo(f"collection    {data['name']} ({data['folder']})")
    click.echo(f"database      {data['database']} (schema {data['schema']})")
    click.echo(
        f"photos        {data['photos']} ({data['failed_photos']} failed, "
        f"{data['no_face_photos']} without a face)"
    )
    click.echo(f"faces         {data['faces']} ({data['labelled_faces']} labelled)")
    click.echo(f"people        {data['people']}")
    models = data["models"] or []
    if not models:
        click.echo("model         none yet")
    for m in models:
        active = " [active]" if m["name"] == data["active_model"] else ""
        extra = f", compatible with {m['compatible_with']}" if m["compatible_with"] else ""
        click.echo(f"model         {m['name']} (dim {m['dim']}, {m['faces']} faces{extra}){active}")
    if idx.get("type"):
        kind = idx["type"]
        if kind == "ivf":
            kind += f" nlist {idx.get('nlist')} nprobe {idx.get('nprobe')}"
        click.echo(
            f"index         {kind} (setting {idx['setting']}), {idx['faces']} faces, "
            f"generation {idx['generation']}, {_human_bytes(idx['bytes'])}"
        )
    else:
        click.echo(f"index         none on disk (setting {idx['setting']})")
    click.echo(f"size on disk  {_human_bytes(data['size_on_disk'])}")
    if c["consistent"]:
        click.echo(f"consistency   ok: SQL and the index agree ({c['sql_faces']} faces)")
    else:
        click.echo(
            f"consistency   {c['index_status']}: {c['reason']} "
            "(the index is rebuilt from SQL on next use)"
        )


# -- db -----------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema maintenance."""


@db.command("upgrade")
@collection_options
def db_upgrade(home: str, collection: str, db_url: str | None) -> None:
    """Upgrade a collection's database to the newest schema (Alembic migrations)."""
    from facesearch.collection import upgrade_collection

    before, after = upgrade_collection(home, collection, db_url)
    if before == after:
        click.echo(f"collection {collection!r}: database schema {after} is the newest")
    else:
        click.echo(
            f"collection {collection!r}: database schema upgraded {before or '(none)'} -> {after}"
        )


__all__ = ["INDEX_TYPES", "db", "enroll", "index", "info", "people", "query"]
