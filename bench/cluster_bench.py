"""Clustering benchmark: quality on LFW, time and memory at scale.

Quality (``--embeddings``): LFW embeddings from an ``.npz`` with ``paths`` ``(N,) str`` (relative
to ``lfw/images``, ``Name/Name_NNNN.jpg``) and ``embeddings`` ``(N, 128) float32``. With
``--compute`` and a missing file, facesearch's own pipeline makes that file first. Two sets:

1. LFW people with at least 10 images (158 people, 4,324 images);
2. all of LFW (5,749 people, 13,233 images).

On each: facesearch's default (:class:`facesearch.cluster_algorithms.ClusterConfig`, chosen without
the labels: average linkage, ``default_thresholds``), single and complete linkage with the same
thresholds, and facesearch at every threshold of the sweep, as a plain dendrogram cut and with the
default's pair threshold for two single faces (to show where the default sits); Chinese whispers
(dlib's own when dlib is installed, else the port in ``baselines.py``) and DBSCAN (min_samples 3) at
every threshold of the sweep, reporting their best; exact average linkage with scipy (set 1 only);
and facesearch given one labelled face per person (must-link + cannot-link), which is not
label-free. The sweep: ``d`` from 0.60 to 1.60 by 0.05, then by 0.01 around each method's best.

Scale (``--scale N ...``): seeded synthetic faces (many identities of Zipf-distributed sizes on the
sphere, spreads calibrated on SFace's LFW distances, a few blurred faces, many singletons);
each size runs in a fresh process, timing the k-NN search and the agglomeration and reading the
process's peak resident memory (``ru_maxrss``).

Writes ``cluster.json`` (every figure) and ``cluster.md`` (tables) into ``--out``; a run that
measures only one part keeps the other part's earlier figures. Examples::

    python bench/cluster_bench.py --embeddings lfw_embeddings.npz
    python bench/cluster_bench.py --scale 10000 100000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from facesearch.cluster_algorithms import (  # noqa: E402
    ClusterConfig,
    agglomerate,
    bcubed_prf,
    default_thresholds,
    knn_graph,
    n_clusters,
    pairwise_prf,
)
from facesearch.distance import DEFAULT_THRESHOLD  # noqa: E402

log = logging.getLogger("cluster_bench")

COARSE = [round(0.60 + 0.05 * i, 2) for i in range(21)]  # 0.60 .. 1.60


# --------------------------------------------------------------------------- data


def synthetic_faces(n: int, seed: int = 0, dim: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim) float32`` unit faces and ``(n,) int64`` identities, seeded.

    Identity sizes follow a Zipf law (exponent 1.9, capped at 1,000: a few people fill most of a
    photo library, most appear once). Identity centres are drawn from an anisotropic Gaussian with
    a shared mean direction, faces scatter around them with a per-identity spread, and 3% of the
    faces are twice as noisy (blur, profile). At 5,000 faces this gives same-person ``d`` of
    0.65 +- 0.18 and different-person ``d`` of 1.85 +- 0.18 (0.1% below 1.31), close to SFace on
    LFW (0.63 +- 0.17 and 1.81 +- 0.18, 0.1% below 1.23).
    """
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    total = 0
    while total < n:
        s = min(int(rng.zipf(1.9)), 1000, n - total)
        sizes.append(s)
        total += s
    m = len(sizes)
    scale = 1.0 / np.sqrt(1.0 + np.arange(dim) / 40.0)
    mean = rng.standard_normal(dim) * scale
    mean *= 0.35 / np.linalg.norm(mean)
    centres = rng.standard_normal((m, dim)) * scale
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    centres += mean
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = 0.06 * np.exp(0.15 * rng.standard_normal(m))
    ident = np.repeat(np.arange(m), sizes)
    face_spread = spread[ident] * np.where(rng.random(n) < 0.03, 2.0, 1.0)
    x = centres[ident] + face_spread[:, None] * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), ident.astype(np.int64)


def load_lfw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``paths (N,) str`` and unit ``embeddings (N, D) float32`` from an ``.npz``."""
    with np.load(path, allow_pickle=False) as z:
        paths = np.asarray(z["paths"]).astype(str)
        xb = np.asarray(z["embeddings"], dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    return paths, np.ascontiguousarray(xb)


def compute_lfw(lfw: Path, out: Path, threads: int) -> None:
    """Embed every LFW image with facesearch's pipeline into ``out`` (``.npz``, atomically)."""
    from facesearch.lfw import embed_images
    from facesearch.pipeline import FacePipeline, PipelineConfig

    files = sorted(lfw.glob("*/*.jpg"))
    log.info("embedding %d LFW images with facesearch", len(files))
    emb = embed_images(FacePipeline(PipelineConfig(threads=threads)), files)
    found = {str(p) for p in emb.paths} - {str(p) for p in emb.missing}
    keep = [i for i, p in enumerate(emb.paths) if str(p) in found]
    rel = np.array([str(Path(emb.paths[i]).relative_to(lfw)) for i in keep])
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=out.parent)
    os.close(fd)
    np.savez(tmp, paths=rel, embeddings=emb.xb[keep])
    os.replace(tmp, out)


# --------------------------------------------------------------------------- methods


def score(pred: np.ndarray, true: np.ndarray, seconds: float) -> dict[str, float]:
    """BCubed and pairwise figures of one clustering."""
    bc, pw = bcubed_prf(pred, true), pairwise_prf(pred, true)
    return {
        "bcubed_p": bc.precision, "bcubed_r": bc.recall, "bcubed_f": bc.f,
        "pairwise_p": pw.precision, "pairwise_r": pw.recall, "pairwise_f": pw.f,
        "clusters": n_clusters(pred), "seconds": seconds,
    }  # fmt: skip


def sweep(run: Callable[[float], np.ndarray], true: np.ndarray) -> dict[str, Any]:
    """Best BCubed F of ``run(threshold)`` over the coarse grid, refined by 0.01 around the best."""
    seen: dict[float, dict[str, float]] = {}

    def at(t: float) -> float:
        t = round(t, 2)
        if t not in seen:
            t0 = time.perf_counter()
            pred = run(t)
            seen[t] = score(pred, true, time.perf_counter() - t0)
            log.info("  %.2f  BCubed F %.4f", t, seen[t]["bcubed_f"])
        return seen[t]["bcubed_f"]

    for t in COARSE:
        at(t)
    best = max(seen, key=lambda t: seen[t]["bcubed_f"])
    for i in range(-4, 5):
        if 0.0 < best + 0.01 * i <= 4.0:
            at(best + 0.01 * i)
    best = max(seen, key=lambda t: seen[t]["bcubed_f"])
    return {
        "best_threshold": best,
        "best": seen[best],
        "curve": {f"{t:.2f}": seen[t]["bcubed_f"] for t in sorted(seen)},
    }


def one_label_per_person(true: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(N,) int64`` labels: one face of every person (seeded choice) labelled, the rest ``-1``."""
    rng = np.random.default_rng(seed)
    labels = np.full(len(true), -1, dtype=np.int64)
    order = rng.permutation(len(true))
    _, first = np.unique(true[order], return_index=True)
    labels[order[first]] = true[order[first]]
    return labels


def run_set(name: str, xb: np.ndarray, true: np.ndarray, exact: bool) -> dict[str, Any]:
    """Every method on one set of faces."""
    from baselines import chinese_whispers, dbscan, dlib_chinese_whispers

    log.info("%s: %d faces, %d people", name, len(xb), len(np.unique(true)))
    res: dict[str, Any] = {"faces": len(xb), "people": int(len(np.unique(true)))}
    t0 = time.perf_counter()
    default = ClusterConfig()
    pred = agglomerate(xb, default)
    t_auto, t_pair = default_thresholds(xb)
    res["ours_default"] = score(pred, true, time.perf_counter() - t0) | {
        "threshold": t_auto, "pair_threshold": t_pair, "k": default.k, "linkage": default.linkage,
    }  # fmt: skip
    t0 = time.perf_counter()
    pred = agglomerate(xb, ClusterConfig(threshold=DEFAULT_THRESHOLD))
    res["ours_tau"] = score(pred, true, time.perf_counter() - t0)
    graph = knn_graph(xb, default.k)
    for method in ("single", "complete"):
        t0 = time.perf_counter()
        pred = agglomerate(xb, ClusterConfig(linkage=method), graph=graph)  # auto threshold
        res[f"ours_{method}"] = score(pred, true, time.perf_counter() - t0)
    labels = one_label_per_person(true)
    t0 = time.perf_counter()
    pred = agglomerate(xb, default, labels=labels, graph=graph)
    res["ours_one_label_per_person"] = score(pred, true, time.perf_counter() - t0)
    log.info("ours, threshold sweep")
    res["ours_sweep"] = sweep(
        lambda t: agglomerate(xb, ClusterConfig(threshold=t), graph=graph), true
    )
    log.info("ours with the default pair threshold %.3f, threshold sweep", t_pair)
    res["ours_pair_sweep"] = sweep(
        lambda t: agglomerate(
            xb, ClusterConfig(threshold=t, pair_threshold=min(t, t_pair)), graph=graph
        ),
        true,
    )
    try:
        import dlib  # noqa: F401

        log.info("Chinese whispers (dlib), threshold sweep")
        res["cw_impl"] = "dlib " + str(dlib.__version__)
        res["cw_sweep"] = sweep(lambda t: dlib_chinese_whispers(xb, t), true)
        best_t = float(res["cw_sweep"]["best_threshold"])
        t0 = time.perf_counter()
        pred = chinese_whispers(xb, best_t)
        res["cw_port_at_dlib_best"] = score(pred, true, time.perf_counter() - t0)
    except ImportError:
        log.info("Chinese whispers (port, dlib not installed), threshold sweep")
        res["cw_impl"] = "port (baselines.py), seed 0"
        res["cw_sweep"] = sweep(lambda t: chinese_whispers(xb, t), true)
    log.info("DBSCAN, eps sweep")
    res["dbscan_sweep"] = sweep(lambda t: dbscan(xb, t, min_samples=3), true)
    if exact:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        log.info("exact average linkage (scipy), threshold sweep")
        t0 = time.perf_counter()
        tree = linkage(pdist(xb.astype(np.float64), "sqeuclidean"), "average")
        tree_s = time.perf_counter() - t0
        ref = fcluster(tree, t_auto, "distance")
        res["exact_default"] = score(ref, true, tree_s)
        res["exact_sweep"] = sweep(lambda t: fcluster(tree, t, "distance"), true)
        ours = agglomerate(xb, ClusterConfig(threshold=t_auto, min_size=1), graph=graph)
        res["ours_vs_exact_bcubed_f"] = bcubed_prf(ours, ref).f
    return res


# --------------------------------------------------------------------------- scale


def scale_child(n: int, threads: int, index: str) -> dict[str, Any]:
    """Generate ``n`` faces, build the graph and cluster them in this process; figures as a dict."""
    import faiss

    faiss.omp_set_num_threads(threads)
    xb, ident = synthetic_faces(n, seed=0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = ClusterConfig(exact_max=n if index == "flat" else 0)

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    graph = knn_graph(xb, config.k, exact_max=config.exact_max)
    t1, c1 = time.perf_counter(), cpu()
    pred = agglomerate(xb, config, graph=graph)
    t2, c2 = time.perf_counter(), cpu()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "faces": n, "identities": int(ident.max() + 1), "threads": threads, "index": index,
        "knn_s": t1 - t0, "agglomerate_s": t2 - t1, "total_s": t2 - t0,
        "knn_cpu_s": c1 - c0, "agglomerate_cpu_s": c2 - c1,
        "load": os.getloadavg()[0], "rss_before_mb": rss0, "peak_rss_mb": rss1,
        "clusters": n_clusters(pred), "bcubed_f": bcubed_prf(pred, ident).f,
    }  # fmt: skip


def run_scale(sizes: list[int], threads: int, index: str) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        log.info("scale: %d faces (%s index, %d threads)", n, index, threads)
        cmd = [sys.executable, __file__, "--scale-child", str(n), "--threads", str(threads)]
        cmd += ["--index", index]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        log.info("  %s", row)
        out.append(row)
    return out


# --------------------------------------------------------------------------- report


def _row(name: str, setting: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {setting} | {r['bcubed_p']:.4f} | {r['bcubed_r']:.4f} "
        f"| **{r['bcubed_f']:.4f}** | {r['pairwise_p']:.4f} | {r['pairwise_r']:.4f} "
        f"| {r['pairwise_f']:.4f} | {int(r['clusters'])} | {r['seconds']:.1f} |"
    )


HEAD = (
    "| method | setting | BCubed P | BCubed R | BCubed F | pairwise P | pairwise R "
    "| pairwise F | clusters | s |\n|---|---|---|---|---|---|---|---|---|---|"
)


def render_set(name: str, r: dict[str, Any]) -> list[str]:
    """The table and sweep curves of one LFW set."""
    tau = f"d < {DEFAULT_THRESHOLD:.3f}"
    d = r["ours_default"]
    pair = f", single faces d < {d['pair_threshold']:.3f}" if "pair_threshold" in d else ""
    rows = [
        (
            "**facesearch (default)**",
            f"average, d < {d['threshold']:.3f}{pair} (auto), k {d['k']}",
            d,
        ),
        ("facesearch", f"average, {tau} (tau itself)", r["ours_tau"]),
        ("facesearch", "single, auto threshold", r["ours_single"]),
        ("facesearch", "complete, auto threshold", r["ours_complete"]),
    ]
    best = r["ours_sweep"]
    rows.append(
        ("facesearch, best plain cut", f"average, d < {best['best_threshold']:.2f}", best["best"])
    )
    if "ours_pair_sweep" in r and "pair_threshold" in d:
        pb = r["ours_pair_sweep"]
        rows.append(
            (
                "facesearch, best threshold with the default pair threshold",
                f"average, d < {pb['best_threshold']:.2f}, single faces d < "
                f"{d['pair_threshold']:.3f}",
                pb["best"],
            )
        )
    cw = r["cw_sweep"]
    cw_t = f"d < {cw['best_threshold']:.2f}"
    rows.append((f"Chinese whispers, best ({r['cw_impl']})", cw_t, cw["best"]))
    if "cw_port_at_dlib_best" in r:
        rows.append(("Chinese whispers (port, seed 0)", cw_t, r["cw_port_at_dlib_best"]))
    db = r["dbscan_sweep"]
    rows.append(("DBSCAN, best", f"min_samples 3, d <= {db['best_threshold']:.2f}", db["best"]))
    if "exact_sweep" in r:
        ex = r["exact_sweep"]
        same_t = f"d < {d['threshold']:.3f} (the default's threshold, no pair rule)"
        rows.append(("exact average linkage (scipy)", same_t, r["exact_default"]))
        rows.append(
            ("exact average linkage (scipy), best", f"d < {ex['best_threshold']:.2f}", ex["best"])
        )
    rows.append(
        (
            "facesearch + 1 labelled face per person",
            "default; uses labels",
            r["ours_one_label_per_person"],
        )
    )
    lines = [f"## {name}: {r['faces']} faces, {r['people']} people", "", HEAD]
    lines += [_row(*row) for row in rows] + [""]
    if "ours_vs_exact_bcubed_f" in r:
        lines += [
            "facesearch (sparse k-NN graph) against exact average linkage at the default "
            "threshold, both as a plain cut (no pair rule): BCubed F of one scored against the "
            f"other {r['ours_vs_exact_bcubed_f']:.4f} (1 = the same clusters).",
            "",
        ]
    lines += ["BCubed F along each sweep (threshold F):", ""]
    names = {
        "ours_sweep": "facesearch (plain cut)",
        "ours_pair_sweep": "facesearch (default pair threshold)",
        "cw_sweep": "Chinese whispers",
        "dbscan_sweep": "DBSCAN",
    }
    names["exact_sweep"] = "exact"
    for key, label in names.items():
        if key in r:
            lines.append(
                f"- {label}: " + ", ".join(f"{t} {f:.4f}" for t, f in r[key]["curve"].items())
            )
    return lines + [""]


def render(results: dict[str, Any]) -> str:
    """``cluster.md`` from the figures of ``cluster.json``."""
    lines = ["# Clustering benchmark", "", "Written by `bench/cluster_bench.py`.", ""]
    sets = results.get("sets", {})
    if sets:
        lines += [
            f"Embeddings: {results.get('embeddings', '?')}. {results.get('lfw_machine', '')}",
            "",
            f"Command: `{results.get('lfw_command', 'python bench/cluster_bench.py')}`",
            "",
            "Thresholds are distances d = |a-b|^2 (cosine distance = d / 2). 'best' = the "
            "threshold of the sweep with the highest BCubed F, i.e. chosen with the labels; "
            "the facesearch default is chosen without them (average linkage, k = 32, "
            "`default_thresholds`: tau moved to the Bayes boundary T(p) for the prior p that "
            "two faces are one person, estimated from random pairs of the faces themselves: "
            "p = pi, the share of random pairs below tau, for a merge with a group; p = 1/N "
            "for a merge of two single faces). 'plain cut': one threshold for every merge "
            "(a cut of the exact average-linkage dendrogram).",
            "",
        ]
    for name, r in sets.items():
        lines += render_set(name, r)
    scale = results.get("scale", [])
    if scale:
        lines += [
            "## Time and memory (synthetic faces)",
            "",
            "Seeded synthetic embeddings (`synthetic_faces`: Zipf identity sizes, SFace-like "
            "distances), default settings, each size in a fresh process. Peak RSS is the whole "
            "process (Python, numpy, FAISS, the data); 'before' is after generating the data. "
            "Wall-clock seconds depend on the other jobs sharing the cores (load = 1-minute load "
            "average at the end); CPU seconds (user + system, all threads) are less affected. "
            f"{results.get('scale_machine', '')}",
            "",
            f"Command: `{results.get('scale_command', 'python bench/cluster_bench.py --scale')}`",
            "",
            "| faces | identities | index | threads | k-NN s (CPU s) | agglomerate s (CPU s) "
            "| total s | load | RSS before MB | peak RSS MB | clusters | BCubed F |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in scale:
            lines.append(
                f"| {r['faces']} | {r['identities']} | {r['index']} | {r['threads']} "
                f"| {r['knn_s']:.1f} ({r.get('knn_cpu_s', float('nan')):.1f}) "
                f"| {r['agglomerate_s']:.1f} ({r.get('agglomerate_cpu_s', float('nan')):.1f}) "
                f"| {r['total_s']:.1f} | {r.get('load', float('nan')):.1f} "
                f"| {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['clusters']} "
                f"| {r['bcubed_f']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def command() -> str:
    """This run's command line, paths shortened to their file names (no machine paths)."""
    import shlex

    args = [Path(a).name if os.sep in a and Path(a).exists() else a for a in sys.argv[1:]]
    return shlex.join(["python", "bench/cluster_bench.py", *args])


def machine(threads: int) -> str:
    load = os.getloadavg()[0]
    return (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs "
        f"(load average {load:.1f} at the start), {threads} FAISS thread(s)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--embeddings", type=Path, help="LFW embeddings (.npz: paths, embeddings)")
    ap.add_argument("--compute", action="store_true", help="make --embeddings if missing")
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "data" / "lfw" / "images")
    ap.add_argument("--sets", default="1,2", help="which LFW sets (1: >= 10 images, 2: all)")
    ap.add_argument("--scale", type=int, nargs="*", default=[], help="synthetic sizes to time")
    ap.add_argument("--index", choices=["flat", "hnsw"], default="flat", help="k-NN for --scale")
    ap.add_argument("--threads", type=int, default=1, help="FAISS / BLAS threads")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--note", help="where the embeddings come from (printed under the tables)")
    ap.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    if args.scale_child:
        print(json.dumps(scale_child(args.scale_child, args.threads, args.index)))
        return
    import faiss

    faiss.omp_set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    jpath = args.out / "cluster.json"
    results: dict[str, Any] = json.loads(jpath.read_text()) if jpath.exists() else {}
    if args.embeddings:
        if not args.embeddings.exists():
            if not args.compute:
                raise SystemExit(f"{args.embeddings} not found (add --compute to make it)")
            compute_lfw(args.lfw, args.embeddings, args.threads)
        paths, xb = load_lfw(args.embeddings)
        people = np.array([p.split("/")[0] for p in paths])
        _, true = np.unique(people, return_inverse=True)
        if args.lfw.is_dir():  # set 1 is defined by LFW's own image counts
            count = {d.name: len(list(d.glob("*.jpg"))) for d in args.lfw.iterdir() if d.is_dir()}
            n_images = np.array([count.get(p, 0) for p in people])
        else:
            n_images = np.bincount(true)[true]
        sets: dict[str, Any] = dict(results.get("sets", {}))
        results["embeddings"] = f"`{args.embeddings.name}`, {len(xb)} faces"
        if args.note:
            results["embeddings"] += f" ({args.note})"
        results["lfw_machine"] = machine(args.threads)
        results["lfw_command"] = command()
        wanted = args.sets.split(",")
        if "1" in wanted:
            sel = n_images >= 10
            name = "Set 1: LFW people with >= 10 images"
            sets[name] = run_set("set 1", xb[sel], true[sel], exact=True)
        if "2" in wanted:
            sets["Set 2: all of LFW"] = run_set("set 2", xb, true, exact=False)
        results["sets"] = sets
    if args.scale:
        results["scale_machine"] = machine(args.threads)
        results["scale_command"] = command()
        redo = {(n, args.index) for n in args.scale}
        old = [r for r in results.get("scale", []) if (r["faces"], r["index"]) not in redo]
        results["scale"] = old + run_scale(args.scale, args.threads, args.index)
    write_atomic(jpath, json.dumps(results, indent=1))
    write_atomic(args.out / "cluster.md", render(results))
    log.info("wrote %s and %s", jpath, args.out / "cluster.md")


if __name__ == "__main__":
    main()
