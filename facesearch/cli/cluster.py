"""``facesearch cluster`` (with ``name``, ``split``, ``merge``) and ``facesearch evaluate cluster``.

Each calls :mod:`facesearch.api` (over :mod:`facesearch.collection_clusters` and
:mod:`facesearch.cluster_algorithms`). Results go to stdout (a table, or JSON with ``--json``); logs
to stderr.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from facesearch import api
from facesearch.cli.faces import evaluate
from facesearch.cli.group import main
from facesearch.cli.options import (
    F,
    collection_args,
    collection_options,
    json_option,
    make_models,
    open_collection,
)

if TYPE_CHECKING:
    from facesearch.cluster_algorithms import ClusterConfig
    from facesearch.collection_clusters import ClusterReport

LINKAGES = ("average", "single", "complete")
#: Clusters listed by the summary table before "... and N more".
MAX_ROWS = 30


def _threshold_option(f: F) -> F:
    return click.option(
        "--threshold",
        type=click.FloatRange(0.0, 4.0, min_open=True),
        default=None,
        help="Merge while the linkage distance d = |f(a)-f(b)|^2 is below this. Default: the "
        "verification tau moved to the Bayes boundary for the share pi of same-person pairs "
        "among these faces (random pairs below tau); given alone, it is used for every merge.",
    )(f)


def _pair_threshold_option(f: F) -> F:
    return click.option(
        "--pair-threshold",
        type=click.FloatRange(0.0, 4.0, min_open=True),
        default=None,
        help="Two single faces (neither in a group yet) merge only below this. Default: the "
        "same Bayes boundary for a prior of 1/N (a person seen once among N faces) when "
        "--threshold is not given, else --threshold.",
    )(f)


def _config(
    threshold: float | None, linkage: str, min_size: int, pair_threshold: float | None = None
) -> ClusterConfig:
    from facesearch.cluster_algorithms import ClusterConfig

    kwargs: dict[str, Any] = {"linkage": linkage, "min_size": min_size}
    if threshold is not None:
        kwargs["threshold"] = threshold
    if pair_threshold is not None:
        kwargs["pair_threshold"] = pair_threshold
    return ClusterConfig(**kwargs)


def _print_report(rep: ClusterReport) -> None:
    clusters = rep.clusters
    sizes = [e.size for e in clusters]
    people = [e for e in rep.entries if e.kind == "person"]
    singles = [e for e in rep.entries if e.kind == "single"]
    if rep.stats is not None:
        st = rep.stats
        click.echo(
            f"run:       {st.mode}, {st.new_faces} faces placed, {st.clusters_created} clusters "
            f"created, {st.joined_existing} faces joined existing clusters ({st.seconds:.1f} s)"
        )
    click.echo(
        f"faces:     {rep.faces} ({sum(sizes)} in {len(clusters)} clusters, "
        f"{sum(e.size for e in people)} labelled in no cluster, {len(singles)} alone)"
    )
    if sizes:
        click.echo(f"sizes:     largest {max(sizes)}, median {sorted(sizes)[len(sizes) // 2]}")
    click.echo(
        f"proposals: {len(rep.proposals)} clusters within tau {rep.threshold:.3f} of a person"
    )
    if rep.assigned:
        click.echo(f"assigned:  {rep.assigned} faces labelled from proposals")
    if not clusters:
        return
    click.echo("")
    click.echo(f"{'id':>6}  {'size':>5}  {'photos':>6}  person")
    for e in clusters[:MAX_ROWS]:
        if e.person is not None:
            who = f"{e.person}" + (" (manual)" if e.manual else "")
        elif e.proposed is not None:
            who = f"proposed: {e.proposed} (d {e.distance:.3f})"
        else:
            who = "(manual)" if e.manual else "-"
        photos = len({r.photo for r in e.faces})
        click.echo(f"{e.id:>6}  {e.size:>5}  {photos:>6}  {who}")
    if len(clusters) > MAX_ROWS:
        click.echo(f"... and {len(clusters) - MAX_ROWS} more clusters (--json lists them all)")


@main.group(invoke_without_command=True)
@_threshold_option
@_pair_threshold_option
@click.option(
    "--linkage", type=click.Choice(LINKAGES), default="average", show_default=True,
    help="Distance between two groups: mean, smallest or largest d over their face pairs.",
)  # fmt: skip
@click.option(
    "--min-size", type=click.IntRange(1, None), default=2, show_default=True,
    help="Groups with fewer faces are left alone (listed as single faces).",
)  # fmt: skip
@click.option("--full", is_flag=True, help="Start over instead of placing only new faces.")
@click.option(
    "--assign", "do_assign", is_flag=True,
    help="Label the faces of clusters proposed as a person (source 'propagated').",
)  # fmt: skip
@click.option(
    "--export", "export_dir", type=click.Path(file_okay=False), default=None,
    help="Write face crops (JPEG) into DIR: one folder per cluster and per person, "
    "'singletons' for faces alone. DIR must be new or empty.",
)  # fmt: skip
@collection_options
@json_option
@click.pass_context
def cluster(
    ctx: click.Context,
    threshold: float | None,
    pair_threshold: float | None,
    linkage: str,
    min_size: int,
    full: bool,
    do_assign: bool,
    export_dir: str | None,
    home: str,
    collection: str,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Group the faces that have no person into clusters, one per person.

    Agglomerative clustering (average linkage by default) over a k-nearest-neighbour graph
    (k = 32). Thresholds, derived from the verification tau without labels: groups merge while
    their average distance is below tau moved to the Bayes boundary for the share of
    same-person pairs among the faces (1.11 on all of LFW); two single faces only below the
    boundary for a prior of 1/N, a person seen once (1.00 on LFW). Two faces of one photo are
    never in one cluster; faces labelled as different people never merge.

    Clusters are stored: a re-run places only the faces indexed since (into existing clusters
    where they belong) unless --full; clusters named, merged or split by hand are kept.
    A cluster within tau of a labelled person is proposed as that person (--assign applies it).

    Output lists every face once: stored clusters (unlabelled faces), labelled faces in no
    cluster under their person (kind 'person', id null), and faces alone (kind 'single').
    Subcommands name, split and merge clusters.
    """
    if ctx.invoked_subcommand is not None:
        return
    config = _config(threshold, linkage, min_size, pair_threshold)
    with open_collection(home, collection, db_url) as col:
        rep = api.cluster(col, config=config, full=full, assign=do_assign)
    if export_dir is not None:
        written = api.export_clusters(rep, export_dir)
        click.echo(
            f"exported {sum(written.values())} face crops into {len(written)} folders "
            f"in {export_dir}",
            err=True,
        )
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in rep.entries], indent=1))
    else:
        _print_report(rep)


@cluster.command("name")
@click.argument("cluster_id", metavar="ID", type=int)
@click.argument("name")
@collection_options
@click.pass_context
def cluster_name(
    ctx: click.Context, cluster_id: int, name: str, home: str, collection: str, db_url: str | None
) -> None:
    """Turn cluster ID into person NAME (new, or an existing person gets its faces)."""
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        n = api.name_cluster(col, cluster_id, name)
    click.echo(f"cluster {cluster_id} is now {name!r}: {n} faces labelled")


@cluster.command("split")
@click.argument("cluster_id", metavar="ID", type=int)
@_threshold_option
@click.option("--linkage", type=click.Choice(LINKAGES), default="average", show_default=True)
@collection_options
@click.pass_context
def cluster_split(
    ctx: click.Context,
    cluster_id: int,
    threshold: float | None,
    linkage: str,
    home: str,
    collection: str,
    db_url: str | None,
) -> None:
    """Split cluster ID: its faces go back to being alone, or with --threshold (smaller than
    the one that made it) are re-clustered at it into new clusters kept by later runs."""
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        made = api.split_cluster(col, cluster_id, threshold=threshold, linkage=linkage)
    if made:
        click.echo(f"split cluster {cluster_id} into clusters {', '.join(map(str, made))}")
    else:
        click.echo(f"split cluster {cluster_id}: its faces are alone")


@cluster.command("merge")
@click.argument("cluster_ids", metavar="ID ID...", type=int, nargs=-1, required=True)
@collection_options
@click.pass_context
def cluster_merge(
    ctx: click.Context, cluster_ids: tuple[int, ...], home: str, collection: str, db_url: str | None
) -> None:
    """Merge clusters into the first ID (kept by later runs)."""
    if len(cluster_ids) < 2:
        raise click.UsageError("give at least two cluster ids to merge")
    with open_collection(*collection_args(ctx, home, collection, db_url)) as col:
        size = api.merge_clusters(col, cluster_ids)
    others = ", ".join(map(str, cluster_ids[1:]))
    click.echo(f"merged clusters {others} into {cluster_ids[0]} ({size} faces)")


# -- evaluate cluster ---------------------------------------------------------------------------


@evaluate.command("cluster")
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False))
@_threshold_option
@_pair_threshold_option
@click.option("--linkage", type=click.Choice(LINKAGES), default="average", show_default=True)
@click.option(
    "--embeddings", "embeddings", type=click.Path(exists=True, dir_okay=False), default=None,
    hidden=True, help="Dev: an .npz with xb (N, D), labels (N,) and optional photo_ids.",
)  # fmt: skip
@json_option
def evaluate_cluster(
    folder: str | None,
    threshold: float | None,
    pair_threshold: float | None,
    linkage: str,
    embeddings: str | None,
    as_json: bool,
) -> None:
    """Cluster FOLDER (one subfolder per person) without its labels and score it.

    The photos are indexed into a temporary collection (no labels), the largest face of each
    photo is clustered with the default settings and compared with the subfolders: pairwise
    and BCubed precision/recall/F, and the number of clusters vs people. A face alone counts
    as a cluster of its own.
    """
    if embeddings is None and folder is None:
        raise click.UsageError("give FOLDER (one subfolder per person)")
    config = _config(threshold, linkage, 2, pair_threshold)
    result = api.evaluate_clustering(
        None if embeddings is not None else folder, embeddings=embeddings, config=config,
        models=make_models(),
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
        return
    click.echo(f"faces      {result.faces} ({result.people} people)")
    click.echo(
        f"clusters   {result.clusters} ({result.singletons} faces alone; "
        f"{result.linkage} linkage, threshold {result.threshold or float('nan'):.3f}, "
        f"single faces {result.pair_threshold or float('nan'):.3f})"
    )
    for what, (p, r, f) in (("pairwise", result.pairwise), ("bcubed", result.bcubed)):
        click.echo(f"{what:<10} precision {p:.4f}  recall {r:.4f}  F {f:.4f}")
    click.echo(f"time       {result.seconds:.2f} s clustering")


__all__ = ["cluster", "cluster_merge", "cluster_name", "cluster_split", "evaluate_cluster"]
