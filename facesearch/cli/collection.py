"""Collection commands: ``index``, ``query``, ``people``, ``enroll``, ``info``, ``db upgrade``.

Every command takes ``--home`` / ``--collection`` / ``--db`` (see
:func:`facesearch.cli.options.collection_options`). Heavy modules are imported inside the
commands. Results go to stdout (a table, or JSON with ``--json``); progress and logs to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from facesearch import api
from facesearch.cli.group import main
from facesearch.cli.options import (
    batch_options,
    collection_args,
    collection_options,
    collection_ref,
    detection_options,
    echo_failures,
    engine_option,
    human_bytes,
    json_option,
    make_models,
    open_collection,
    progress_bar,
    threshold_option,
)

#: ``facesearch index --index-type`` choices (``facesearch.vectors.KINDS``, checked by a test).
INDEX_TYPES = ("auto", "flat", "ivf", "pq")
#: Failed photos listed by the ``index`` summary before "... and N more".
MAX_FAILURES_SHOWN = 20


# -- helpers ------------------------------------------------------------------------------------


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


def _ray_param(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from facesearch.errors import ArgumentError
    from facesearch.ray_index import parse_address

    try:
        parse_address(value)
    except ArgumentError as exc:
        raise click.BadParameter(str(exc).removeprefix("--ray: "), ctx, param) from None
    return value


def _vectors_param(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from facesearch.collection import normalize_vectors_spec
    from facesearch.errors import CollectionError

    try:
        normalize_vectors_spec(value)
    except CollectionError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
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
    "--rehash",
    is_flag=True,
    help="Read and hash every file again: a file edited in place that kept its size and mtime "
    "is otherwise taken as unchanged without being read.",
)
@click.option(
    "--model",
    default=None,
    help="Embedding model: 'sface', 'sface+dlib' or a file made by 'facesearch train' "
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
@click.option(
    "--vectors",
    default=None,
    callback=_vectors_param,
    metavar="faiss|milvus-lite|FOLDER.db|milvus://HOST:PORT[/NAME]",
    help="Where the vectors are kept: the FAISS file in the collection folder ('faiss'), a "
    "milvus-lite folder in it ('milvus-lite') or elsewhere (FOLDER.db), or a Milvus server "
    "(NAME defaults to facesearch_<collection>; token in MILVUS_TOKEN). A rebuildable copy of "
    "the vectors in SQL, built from SQL when it moves. Kept by the collection; Milvus needs "
    "pip install 'facesearch[milvus]'.  [default: keep the setting, 'faiss' for a new "
    "collection]",
)
@click.option(
    "--ray",
    "ray",
    is_flag=False,
    flag_value="local",
    default=None,
    callback=_ray_param,
    metavar="[ADDRESS]",
    help="Embed on a Ray cluster (pip install 'facesearch[ray]'): alone (or 'local') a cluster "
    "of this machine's cores started for the run; 'auto' the cluster running here (ray "
    "start); HOST:PORT or ray://HOST:PORT a remote one. Its workers must read the photos at "
    "the same paths (a shared file system). Same faces as without Ray.",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Ray workers (one CPU and one copy of the networks each)  [default: the cluster's CPUs]",
)
@detection_options
@batch_options
@collection_options
@json_option
def index(
    paths: tuple[str, ...],
    labels: str | None,
    prune: bool,
    rehash: bool,
    model: str | None,
    index_type: str | None,
    aligned: bool,
    fallback: bool,
    vectors: str | None,
    ray: str | None,
    ray_workers: int | None,
    batch_size: int,
    workers: int | None,
    home: str,
    collection: str,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Index the photos under PATHs (folders, recursively, or files) into a collection.

    Creates the collection if needed. Incremental: unchanged photos (same path, size and
    mtime) are skipped unread (--rehash reads them again), moved or renamed photos keep their
    faces and labels. Hidden files are skipped; symbolic links are followed and photos keep the
    path they were found by. A file without an image suffix is indexed when its content is an
    image. A folder that cannot be read is counted and listed; its stored photos are kept, even
    with --prune. A photo that cannot be read is recorded with its error and reported; the run
    goes on. Exit status 1 when a PATH holds files of which none could be indexed. Ctrl-C keeps
    what was
    committed: run the command again to continue. One writer at a time: a second one waits
    FACESEARCH_LOCK_TIMEOUT seconds (default 10), then stops with an error.

    With --ray the photos are read and embedded by Ray workers while this process plans the
    run and writes the results, as a run without Ray does.
    """
    if ray_workers is not None and ray is None:
        raise click.UsageError("--ray-workers needs --ray")
    with (
        open_collection(home, collection, db_url, create=True) as col,
        progress_bar("photo") as bar,
    ):
        report = api.index_paths(
            col, paths, models=make_models(fallback=fallback), model=model, labels=labels,
            prune=prune, index_type=index_type, vectors=vectors, batch_size=batch_size,
            workers=workers, aligned=aligned, rehash=rehash, ray=ray, ray_workers=ray_workers,
            progress=lambda p: bar(p.total, p.done, f"{p.faces} faces"),
        )  # fmt: skip
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
    for path in report.nothing_indexed:
        click.echo(
            f"error: nothing could be indexed from {path}: it holds files, but none of them is "
            "an image that could be read (see the summary)",
            err=True,
        )
    if report.nothing_indexed:
        sys.exit(1)


def _print_index_report(r: IndexReport, prune: bool) -> None:
    click.echo(
        f"photos: {r.files} found: {r.new} new, {r.updated} updated, {r.unchanged} unchanged, "
        f"{r.moved} moved, {r.failed} failed"
    )
    upscaled = f" ({r.faces_upscaled} by the upscaled second pass)" if r.faces_upscaled else ""
    click.echo(f"faces:  {r.faces_added} added{upscaled}; {r.no_face} photos without a face")
    if r.labels_given or r.labels_skipped or r.labels_not_found:
        line = (
            f"labels: {r.labels_given} given, {r.labels_skipped} skipped "
            "(several faces, none clearly the largest)"
        )
        if r.labels_not_found:
            line += f", {r.labels_not_found} listed photos not found"
        click.echo(line)
    skipped = [
        f"{n} {why}"
        for n, why in (
            (r.skipped_other, "not images (by their content)"),
            (r.skipped_hidden, "hidden"),
            (r.broken_links, "links to nothing"),
        )
        if n
    ]
    if skipped:
        click.echo(f"skipped: {', '.join(skipped)}")
    if r.by_content:
        click.echo(f"by content: {r.by_content} photos without an image suffix")
    if r.pruned:
        click.echo(f"pruned: {r.pruned} photos whose files are gone")
    if r.missing:
        click.echo(f"missing: {r.missing} photos whose files are gone (--prune removes them)")
    if r.unreadable:
        n = len(r.unreadable)
        click.echo(
            f"unreadable: {n} folder{'s' if n != 1 else ''} could not be read (their stored "
            "photos are kept): "
            + "; ".join(f"{p}: {e}" for p, e in r.unreadable[:MAX_FAILURES_SHOWN])
            + (f"; ... and {n - MAX_FAILURES_SHOWN} more" if n > MAX_FAILURES_SHOWN else "")
        )
    secs = max(r.seconds, 1e-9)
    click.echo(
        f"time:   {r.seconds:.1f} s ({r.processed / secs:.1f} photos/s, "
        f"{r.faces_added / secs:.1f} faces/s)"
    )
    echo_failures("failed:", r.failures, MAX_FAILURES_SHOWN)


# -- query --------------------------------------------------------------------------------------


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
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
@detection_options
@json_option
def query(
    images: tuple[str, ...],
    k: int,
    threshold: float | None,
    home: str,
    collection: str,
    db_url: str | None,
    engine: str,
    aligned: bool,
    fallback: bool,
    as_json: bool,
) -> None:
    """Who is in IMAGES? 1:K identification of every face against the collection.

    IMAGES are photos and folders (walked as 'index' walks them). One process answers them
    all, the networks loaded once; with several photos the answers are streamed in order,
    each headed by its photo, and --json prints one JSON object per photo and line. The query
    is embedded with the collection's active model (see 'facesearch model').

    For each face: the K nearest stored faces grouped by person (best distance, count), and
    a verdict: the person of the nearest labelled face when its distance d is below tau,
    else "unknown". Exit status 1 when a photo cannot be read or has no face (the others are
    answered).
    """
    models = make_models(engine=engine, fallback=fallback)
    if len(images) == 1 and not os.path.isdir(images[0]):
        res = api.identify(collection_ref(home, collection, db_url), images[0], models=models,
                           k=k, threshold=threshold, aligned=aligned)  # fmt: skip
        if as_json:
            click.echo(json.dumps([r.to_dict() for r in res.faces], indent=1))
        else:
            _print_identification(res)
        return
    failed = 0
    with open_collection(home, collection, db_url) as col:
        for item in api.identify_photos(col, images, models=models, k=k, threshold=threshold,
                                        aligned=aligned):  # fmt: skip
            failed += item.result is None
            if as_json:
                click.echo(json.dumps(item.to_dict()))
            elif item.result is None:
                click.echo(f"error: {item.error}", err=True)
            else:
                click.echo(f"== {item.source}")
                _print_identification(item.result)
    if failed:
        sys.exit(1)


def _print_identification(res: api.IdentifyResult) -> None:
    tau = res.threshold
    for i, r in enumerate(res.faces, start=1):
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

    Subcommands rename, merge and delete people, and reject / unreject a face for a person
    ("not this person").
    """
    if ctx.invoked_subcommand is not None:
        return
    with open_collection(home, collection, db_url) as col:
        rows = list(api.iterate(api.list_people, col))
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
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        api.rename_person(col, old, new)
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
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        n = api.merge_people(col, source, target)
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
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        done = api.delete_person(col, name, delete_faces=faces)
    if faces:
        click.echo(f"deleted {name!r} and {done.faces_deleted} faces")
    else:
        click.echo(f"deleted {name!r}; {done.faces_unlabelled} faces are now unlabelled")


@people.command("reject")
@click.argument("face_id", type=int)
@click.argument("person")
@collection_options
@click.pass_context
def people_reject(
    ctx: click.Context, face_id: int, person: str, home: str, collection: str, db_url: str | None
) -> None:
    """Face FACE_ID is not PERSON, for good.

    The face loses that label and leaves a cluster named PERSON; no later clustering run
    (full or incremental), proposal, --assign or identification verdict gives it to PERSON
    again. Giving the face to PERSON by hand lifts the rejection, as does `people unreject`.
    """
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        face = api.reject_face(col, face_id, person)
    where = f", now in cluster {face.cluster_id}" if face.cluster_id is not None else ""
    click.echo(f"face {face_id} is not {person!r}{where}")


@people.command("unreject")
@click.argument("face_id", type=int)
@click.argument("person", required=False)
@click.option(
    "--cluster", "cluster_id", type=int, default=None,
    help="Lift instead the taking of the face out of cluster ID (`cluster split ID FACE_ID`).",
)  # fmt: skip
@collection_options
@click.pass_context
def people_unreject(
    ctx: click.Context,
    face_id: int,
    person: str | None,
    cluster_id: int | None,
    home: str,
    collection: str,
    db_url: str | None,
) -> None:
    """Lift `people reject FACE_ID PERSON`, or with --cluster ID the taking of the face out of
    that cluster (labels and clusters stay as they are; the next run may place it there)."""
    if (person is None) == (cluster_id is None):
        raise click.UsageError("give PERSON or --cluster ID (one of them)")
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        api.unreject_face(col, face_id, person, cluster_id=cluster_id)
    what = f"{person!r}" if person is not None else f"in cluster {cluster_id}"
    click.echo(f"face {face_id} may be {what} again")


@people.command("rejections")
@click.argument("person", required=False)
@json_option
@collection_options
@click.pass_context
def people_rejections(
    ctx: click.Context,
    person: str | None,
    as_json: bool,
    home: str,
    collection: str,
    db_url: str | None,
) -> None:
    """List the rejections (of PERSON only, when given): faces that are not a person, or that
    were taken out of a cluster by hand."""
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        rows = list(api.iterate(api.list_rejections, col, person=person))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=1))
        return
    if not rows:
        click.echo("no rejections")
        return
    for r in rows:
        what = f"not {r.person!r}" if r.person is not None else f"out of cluster {r.cluster_id}"
        click.echo(f"face {r.face_id:>7}  {what}")


# -- enroll -------------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--model",
    default=None,
    help="Embedding model for a new collection (default: the collection's, or 'sface').",
)
@detection_options
@collection_options
def enroll(
    name: str,
    images: tuple[str, ...],
    model: str | None,
    aligned: bool,
    fallback: bool,
    home: str,
    collection: str,
    db_url: str | None,
) -> None:
    """Add person NAME from one or more photos (the largest face of each).

    The photos are recorded in the collection (created if needed); a photo already indexed
    keeps its faces and its largest face gets NAME. Exit status 1 if a photo cannot be read or
    has no face (the others are enrolled).
    """
    with open_collection(home, collection, db_url, create=True) as col:
        report = api.enroll(
            col, name, images, models=make_models(fallback=fallback), model=model, aligned=aligned
        )
    done, errors = report.enrolled, report.failures
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
    with open_collection(home, collection, db_url) as col:
        data = api.collection_info(col).to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=1, default=str))
    else:
        _print_info(data)


#: How ``info`` words the faces not found by the detector's first pass.
_FOUND_BY = {
    "upscaled": "found by the upscaled second pass",
    "aligned": "given as aligned crops",
}


def _print_info(data: dict[str, Any]) -> None:
    c = data["consistency"]
    idx = data["index"]
    click.echo(f"collection    {data['name']} ({data['folder']})")
    click.echo(f"database      {data['database']} (schema {data['schema']})")
    click.echo(
        f"photos        {data['photos']} ({data['failed_photos']} failed, "
        f"{data['no_face_photos']} without a face)"
    )
    by_pass = data["faces_by_pass"]
    passes = "".join(f", {by_pass[k]} {how}" for k, how in _FOUND_BY.items() if by_pass.get(k))
    click.echo(f"faces         {data['faces']} ({data['labelled_faces']} labelled{passes})")
    click.echo(f"people        {data['people']}")
    models = data["models"] or []
    if not models:
        click.echo("model         none yet")
    for m in models:
        active = " [active]" if m["name"] == data["active_model"] else ""
        extra = f", compatible with {m['compatible_with']}" if m["compatible_with"] else ""
        click.echo(f"model         {m['name']} (dim {m['dim']}, {m['faces']} faces{extra}){active}")
    if idx.get("store") == "milvus":
        where = f"Milvus {idx['target']}"
        if idx.get("type"):
            size = f", {human_bytes(idx['bytes'])}" if idx.get("bytes") is not None else ""
            click.echo(
                f"index         {where}: exact, {idx['faces']} faces, generation "
                f"{idx['generation']}{size}"
            )
        else:
            click.echo(f"index         {where}: {idx.get('error') or 'not built yet'}")
    elif idx.get("type"):
        kind = idx["type"]
        if kind == "ivf":
            kind += f" nlist {idx.get('nlist')} nprobe {idx.get('nprobe')}"
        click.echo(
            f"index         {kind} (setting {idx['setting']}), {idx['faces']} faces, "
            f"generation {idx['generation']}, {human_bytes(idx['bytes'])}"
        )
    else:
        click.echo(f"index         none on disk (setting {idx['setting']})")
    click.echo(f"size on disk  {human_bytes(data['size_on_disk'])}")
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
    up = api.upgrade_schema(home, collection, db_url=db_url)
    before, after = up.before, up.after
    if before == after:
        click.echo(f"collection {collection!r}: database schema {after} is the newest")
    else:
        click.echo(
            f"collection {collection!r}: database schema upgraded {before or '(none)'} -> {after}"
        )


if TYPE_CHECKING:
    from facesearch.indexer import IndexReport

__all__ = [
    "INDEX_TYPES",
    "db",
    "enroll",
    "index",
    "info",
    "people",
    "people_reject",
    "people_rejections",
    "people_unreject",
    "query",
]
