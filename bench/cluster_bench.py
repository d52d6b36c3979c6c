"""Clustering benchmark: every method on sets of different shapes; ids across re-runs; scale.

Quality (``--quality``): the sets of :func:`cluster_data.load_sets` (LFW all, LFW >= 10 clean,
degraded and of mixed quality, AT&T, ``data/photos``, two mixtures of a few people with many
photos among thousands with 1-3), embedded by facesearch's own pipeline into the ignored cache
(``python bench/cluster_data.py`` first). On each set, side by side, BCubed P / R / F:

* label-free, each method at its natural default: facesearch's default (thresholds from the
  faces' own statistics, :func:`facesearch.cluster_algorithms.default_thresholds`); facesearch's
  previous default (two thresholds from tau under a symmetric model, reproduced here); exact
  average linkage cut at tau (scipy); Chinese whispers at tau (dlib); DBSCAN (eps tau,
  min_samples 5: scikit-learn's default); HDBSCAN at scikit-learn's defaults (min_cluster_size
  5) and with min_cluster_size 2 (a person with two photos is a cluster); Infomap and Leiden
  over the k-NN graph (k 32, edges d < tau, weights cosine similarity). tau is SFace's
  verification threshold, the one distance scale these methods can be given without labels.
* with the labels (marked): every threshold method at its best threshold of a sweep (d 0.80 to
  1.50 by 0.05, then by 0.01 around the best), HDBSCAN at its best of min_samples 1/2/3 and
  eom/leaf selection (min_cluster_size 2).

Then: ids across re-runs (10% of the faces held out, the rest clustered, then a full re-run
over all and an incremental one, ids carried over by
:func:`facesearch.cluster_algorithms.stable_ids`), and cohesion (how well
:func:`facesearch.cluster_algorithms.cohesion` ranks the impure clusters first).

Scale (``--scale N ...``): seeded synthetic faces (many identities of Zipf-distributed sizes on
the sphere, spreads calibrated on SFace's LFW distances, a few blurred faces, many singletons)
with the real LFW faces of the cache mixed in; each size runs in a fresh process, timing the
k-NN search and the agglomeration and reading the process's peak resident memory.

Collection (``--collection N ...``): ``facesearch cluster`` itself, each run its own process,
on an SQLite collection of ``N`` such faces: the first run, an incremental run after 10% more
faces, then ``--full`` (wall and CPU seconds, peak RSS, ids kept, BCubed F).

Writes ``cluster.json`` (every figure) and ``cluster.md`` (tables) into ``--out``; a run that
measures only some parts or methods keeps the others' earlier figures. Examples::

    python bench/cluster_data.py --threads 2
    python bench/cluster_bench.py --quality --threads 2
    python bench/cluster_bench.py --quality --methods facesearch --sets lfw10,att
    python bench/cluster_bench.py --scale 100000 1000000 --threads 2
    python bench/cluster_bench.py --collection 100000
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
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

from cluster_data import DEFAULT_CACHE, FaceSet, load_sets, load_source  # noqa: E402

from facesearch.cluster_algorithms import (  # noqa: E402
    ClusterConfig,
    agglomerate,
    assign_new,
    bcubed_prf,
    cohesion,
    default_thresholds,
    knn_graph,
    n_clusters,
    pairwise_prf,
    stable_ids,
)
from facesearch.distance import DEFAULT_THRESHOLD as TAU  # noqa: E402

log = logging.getLogger("cluster_bench")

COARSE = [round(0.80 + 0.05 * i, 2) for i in range(15)]  # 0.80 .. 1.50
K = 32  # the k-NN graph of facesearch's default, shared by the graph methods
SET_KEYS = {
    "lfw_all": "LFW all",
    "lfw10": "LFW >= 10",
    "lfw10_degraded": "LFW >= 10 degraded",
    "lfw10_mixed": "LFW >= 10 mixed quality",
    "att": "AT&T",
    "photos": "photos",
    "mixture": "mixture",
    "mixture_mixed": "mixture, mixed quality",
}


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
    x = np.empty((n, dim), dtype=np.float32)
    noisy = rng.random(n) < 0.03
    for s in range(0, n, 1 << 16):  # in chunks: bounded float64 temporaries at 1M faces
        e = min(n, s + (1 << 16))
        sp = spread[ident[s:e]] * np.where(noisy[s:e], 2.0, 1.0)
        xc = centres[ident[s:e]] + sp[:, None] * rng.standard_normal((e - s, dim))
        x[s:e] = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    return x, ident.astype(np.int64)


def with_real_faces(
    x: np.ndarray, ident: np.ndarray, cache: Path
) -> tuple[np.ndarray, np.ndarray, int]:
    """The synthetic faces with their first rows replaced (in place) by every real LFW face of
    the cache (identities of their own); returns the faces, identities and how many are real."""
    path = cache / "lfw.npz"
    if not path.exists():
        log.warning("%s not found: synthetic faces only", path)
        return x, ident, 0
    _, people, real = load_source(cache, "lfw")
    m = min(len(real), len(x) // 2)
    _, rid = np.unique(people[:m], return_inverse=True)
    x[:m] = real[:m]  # in place: a copy of 1M faces is 512 MB of peak memory
    ident[:m] = ident.max() + 1 + rid
    return x, ident, m


def previous_thresholds(xb: np.ndarray, pairs: int = 200_000, seed: int = 0) -> tuple[float, float]:
    """The previous default's two thresholds: tau moved to the Bayes boundary ``T(p)`` for
    the priors ``pi`` (share of random pairs below tau) and ``1 / N``, same- and different-person
    ``d`` modelled as normals of equal spread with tau halfway between their means."""
    n = len(xb)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
    keep = i != j
    d = ((xb[i[keep]].astype(np.float64) - xb[j[keep]]) ** 2).sum(1)
    mu = float(np.median(d))
    sigma = 1.4826 * float(np.median(np.abs(d - mu)))
    pi = max(float(np.mean(d < TAU)), 1.0 / n)
    if mu <= TAU or pi >= 0.5 or sigma == 0.0:
        return TAU, TAU

    def boundary(p: float) -> float:
        return float(min(TAU, max(TAU - sigma**2 / (2 * (mu - TAU)) * math.log((1 - p) / p), 0)))

    return boundary(pi), min(boundary(1.0 / n), boundary(pi))


# --------------------------------------------------------------------------- methods


def score(pred: np.ndarray, true: np.ndarray, seconds: float) -> dict[str, float]:
    """BCubed and pairwise figures of one clustering."""
    bc, pw = bcubed_prf(pred, true), pairwise_prf(pred, true)
    return {
        "bcubed_p": bc.precision, "bcubed_r": bc.recall, "bcubed_f": bc.f,
        "pairwise_p": pw.precision, "pairwise_r": pw.recall, "pairwise_f": pw.f,
        "clusters": n_clusters(pred), "seconds": seconds,
    }  # fmt: skip


def timed(run: Callable[[], np.ndarray], true: np.ndarray, setting: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    pred = run()
    return score(pred, true, time.perf_counter() - t0) | {"setting": setting}


def sweep(run: Callable[[float], np.ndarray], true: np.ndarray, fmt: str) -> dict[str, Any]:
    """Best BCubed F of ``run(threshold)`` over the coarse grid, refined by 0.01 around it."""
    seen: dict[float, dict[str, Any]] = {}

    def at(t: float) -> None:
        t = round(t, 2)
        if t not in seen and 0.0 < t <= 4.0:
            seen[t] = timed(lambda: run(t), true, fmt.format(t=t))

    for t in COARSE:
        at(t)
    best = max(seen, key=lambda t: seen[t]["bcubed_f"])
    for i in range(-4, 5):
        at(best + 0.01 * i)
    best = max(seen, key=lambda t: seen[t]["bcubed_f"])
    out = dict(seen[best])
    out["curve"] = {f"{t:.2f}": round(seen[t]["bcubed_f"], 4) for t in sorted(seen)}
    return out


class Context:
    """One set's faces with what several methods share (k-NN graph, dendrogram, dense matrix)."""

    def __init__(self, s: FaceSet) -> None:
        self.s = s
        self.xb, self.true = s.xb, s.true
        self._graph: tuple[np.ndarray, np.ndarray] | None = None
        self._tree: np.ndarray | None = None

    @property
    def graph(self) -> tuple[np.ndarray, np.ndarray]:
        if self._graph is None:
            self._graph = knn_graph(self.xb, K)
        return self._graph

    @property
    def tree(self) -> np.ndarray:
        from baselines import exact_average_tree

        if self._tree is None:
            self._tree = exact_average_tree(self.xb)
        return self._tree

    def dense(self) -> np.ndarray:
        """``(N, N) float64`` Euclidean distances ``sqrt(d)`` (HDBSCAN's precomputed input)."""
        x = self.xb.astype(np.float64)
        m = np.sqrt(np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None))
        np.fill_diagonal(m, 0.0)
        return m


def _hdbscan(c: Context, **kw: Any) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    model = HDBSCAN(metric="precomputed", copy=False, **kw)
    return np.asarray(model.fit_predict(c.dense()), dtype=np.int64)


def label_free(c: Context) -> dict[str, Callable[[], dict[str, Any]]]:
    """The label-free methods at their natural defaults, by name (each returns its figures)."""
    import baselines as bl

    xb, true = c.xb, c.true

    def ours() -> dict[str, Any]:
        t0 = time.perf_counter()
        pred = agglomerate(xb, ClusterConfig(k=K))  # its own graph search is timed too
        sec = time.perf_counter() - t0
        t, tp = default_thresholds(xb, nn_d=c.graph[0][:, 0])
        return score(pred, true, sec) | {
            "setting": f"average, groups d < {t:.3f}, single faces d < {tp:.3f} (auto), k {K}"
        }

    def previous() -> dict[str, Any]:
        t, tp = previous_thresholds(xb)
        cfg = ClusterConfig(threshold=t, pair_threshold=tp, k=K)
        return timed(
            lambda: agglomerate(xb, cfg, graph=c.graph),
            true,
            f"average, d < {t:.3f}, single faces d < {tp:.3f}",
        )

    return {
        "facesearch (default)": ours,
        "facesearch, previous default": previous,
        "average linkage at tau (scipy, exact)": lambda: timed(
            lambda: bl.cut(c.tree, TAU), true, f"d < {TAU:.3f}"
        ),
        "Chinese whispers at tau (dlib)": lambda: timed(
            lambda: bl.dlib_chinese_whispers(xb, TAU), true, f"d < {TAU:.3f}"
        ),
        "DBSCAN (scikit-learn's min_samples)": lambda: timed(
            lambda: bl.dbscan(xb, TAU, min_samples=5), true, f"eps d <= {TAU:.3f}, min_samples 5"
        ),
        "HDBSCAN (scikit-learn's defaults)": lambda: timed(
            lambda: _hdbscan(c, min_cluster_size=5), true, "min_cluster_size 5"
        ),
        "HDBSCAN, min_cluster_size 2": lambda: timed(
            lambda: _hdbscan(c, min_cluster_size=2), true, "min_cluster_size 2"
        ),
        "Infomap, k-NN graph": lambda: timed(
            lambda: bl.infomap(c.graph, TAU), true, f"k {K}, edges d < {TAU:.3f}"
        ),
        "Leiden (modularity), k-NN graph": lambda: timed(
            lambda: bl.leiden(c.graph, TAU), true, f"k {K}, edges d < {TAU:.3f}"
        ),
    }


def with_labels(c: Context) -> dict[str, Callable[[], dict[str, Any]]]:
    """Every method at its best setting, chosen with the labels, by name."""
    import baselines as bl

    xb, true = c.xb, c.true

    def hdb_best() -> dict[str, Any]:
        best: dict[str, Any] | None = None
        for ms in (1, 2, 3):
            for sel in ("eom", "leaf"):
                r = timed(
                    lambda ms=ms, sel=sel: _hdbscan(
                        c, min_cluster_size=2, min_samples=ms, cluster_selection_method=sel
                    ),
                    true,
                    f"min_cluster_size 2, min_samples {ms}, {sel}",
                )
                if best is None or r["bcubed_f"] > best["bcubed_f"]:
                    best = r
        assert best is not None
        return best

    return {
        "average linkage, best cut (scipy, exact)": lambda: sweep(
            lambda t: bl.cut(c.tree, t), true, "d < {t:.2f}"
        ),
        "Chinese whispers, best (dlib)": lambda: sweep(
            lambda t: bl.dlib_chinese_whispers(xb, t), true, "d < {t:.2f}"
        ),
        "DBSCAN, best": lambda: sweep(
            lambda t: bl.dbscan(xb, t, min_samples=3), true, "eps d <= {t:.2f}, min_samples 3"
        ),
        "HDBSCAN, best": hdb_best,
        "Infomap, best": lambda: sweep(
            lambda t: bl.infomap(c.graph, t), true, "k 32, edges d < {t:.2f}"
        ),
        "Leiden, best": lambda: sweep(
            lambda t: bl.leiden(c.graph, t), true, "k 32, edges d < {t:.2f}"
        ),
    }


def run_set(c: Context, wanted: Callable[[str], bool], old: dict[str, Any]) -> dict[str, Any]:
    """The figures of every wanted method on one set (the others kept from ``old``)."""
    res: dict[str, Any] = {
        "faces": len(c.xb), "people": c.s.people, "kind": c.s.kind,
        "label_free": dict(old.get("label_free", {})), "labelled": dict(old.get("labelled", {})),
    }  # fmt: skip
    for part, methods in (("label_free", label_free(c)), ("labelled", with_labels(c))):
        for name, fn in methods.items():
            if wanted(name):
                log.info("%s: %s", c.s.name, name)
                res[part][name] = fn()
                log.info("  BCubed F %.4f", res[part][name]["bcubed_f"])
    return res


# --------------------------------------------------------------------------- ids and cohesion


def id_survival(c: Context, share: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """Cluster all but a held-out ``share`` of the faces, then all of them (a full re-run and an
    incremental one); how many ids of the first run's clusters live on, and BCubed F of each."""
    n = len(c.xb)
    rng = np.random.default_rng(seed)
    late = np.zeros(n, dtype=bool)
    late[rng.choice(n, int(round(share * n)), replace=False)] = True
    order = np.concatenate([np.flatnonzero(~late), np.flatnonzero(late)])  # old faces first
    xb, true = c.xb[order], c.true[order]
    n_old = int((~late).sum())
    first = agglomerate(xb[:n_old], ClusterConfig(k=K))
    full = agglomerate(xb, ClusterConfig(k=K))
    old_all = np.concatenate([first, np.full(n - n_old, -1, dtype=np.int64)])
    full_ids = stable_ids(old_all, full)
    inc = assign_new(first, xb[:n_old], xb[n_old:], ClusterConfig(k=K))
    old_c = set(np.unique(first[first >= 0]).tolist())
    kept_full = old_c & set(np.unique(full_ids[full_ids >= 0]).tolist())
    kept_inc = old_c & set(np.unique(inc[inc >= 0]).tolist())
    # a kept id shows (mostly) the same faces: the share of its old faces still under it
    same = [float(np.mean(full_ids[:n_old][first == cid] == cid)) for cid in kept_full]
    return {
        "faces_before": n_old, "faces_added": n - n_old, "clusters_before": len(old_c),
        "kept_full": len(kept_full), "kept_incremental": len(kept_inc),
        "kept_faces_share_median": float(np.median(same)) if same else float("nan"),
        "f_full": bcubed_prf(full, true).f, "f_incremental": bcubed_prf(inc, true).f,
        "f_before": bcubed_prf(first, true[:n_old]).f,
    }  # fmt: skip


def cohesion_check(c: Context) -> dict[str, Any]:
    """How well cohesion ranks the default's impure clusters (two or more people) first: the AUC
    of ``mean_d`` and of ``1 - nn_inside`` for impure against pure clusters of 2+ faces."""
    pred = agglomerate(c.xb, ClusterConfig(k=K), graph=c.graph)
    coh = cohesion(pred, c.xb, graph=c.graph)
    impure = np.array(
        [len(np.unique(c.true[pred == cid])) > 1 for cid in coh.ids.tolist()], dtype=bool
    )
    big = coh.size >= 2

    def auc(score: np.ndarray) -> float:
        pos, neg = score[big & impure], score[big & ~impure]
        if not len(pos) or not len(neg):
            return float("nan")
        greater = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
        return float(greater)

    return {
        "clusters": int(big.sum()), "impure": int((big & impure).sum()),
        "auc_mean_d": auc(coh.mean_d), "auc_nn_outside": auc(1.0 - coh.nn_inside),
        "auc_margin": auc(-coh.margin),
        "mean_d_pure": float(np.median(coh.mean_d[big & ~impure])) if (big & ~impure).any()
        else float("nan"),
        "mean_d_impure": float(np.median(coh.mean_d[big & impure])) if (big & impure).any()
        else float("nan"),
    }  # fmt: skip


# --------------------------------------------------------------------------- scale


def scale_child(n: int, threads: int, index: str, cache: Path) -> dict[str, Any]:
    """Generate ``n`` faces (real LFW ones mixed in), build the graph and cluster them in this
    process; figures as a dict."""
    import faiss

    faiss.omp_set_num_threads(threads)
    xb, ident = synthetic_faces(n, seed=0)
    xb, ident, real = with_real_faces(xb, ident, cache)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    exact = {"flat": n, "hnsw": 0}
    config = ClusterConfig(exact_max=exact[index]) if index in exact else ClusterConfig()

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    graph = knn_graph(xb, config.k, exact_max=config.exact_max)
    t1, c1 = time.perf_counter(), cpu()
    pred = agglomerate(xb, config, graph=graph)
    t2, c2 = time.perf_counter(), cpu()
    cohesion(pred, xb, graph=graph)  # timed: what a run adds for the scores
    t3 = time.perf_counter()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "faces": n, "real_faces": real, "identities": int(len(np.unique(ident))),
        "threads": threads, "index": index,
        "knn_s": t1 - t0, "agglomerate_s": t2 - t1, "cohesion_s": t3 - t2, "total_s": t2 - t0,
        "knn_cpu_s": c1 - c0, "agglomerate_cpu_s": c2 - c1,
        "load": os.getloadavg()[0], "rss_before_mb": rss0, "peak_rss_mb": rss1,
        "clusters": n_clusters(pred), "bcubed_f": bcubed_prf(pred, ident).f,
        "bcubed_f_real": bcubed_prf(pred[:real], ident[:real]).f if real else float("nan"),
    }  # fmt: skip


def run_scale(sizes: list[int], threads: int, index: str, cache: Path) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        log.info("scale: %d faces (%s index, %d threads)", n, index, threads)
        cmd = [sys.executable, __file__, "--scale-child", str(n), "--threads", str(threads)]
        cmd += ["--index", index, "--cache", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        log.info("  %s", row)
        out.append(row)
    return out


# --------------------------------------------------------------------------- collection


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("facesearch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "facesearch.cli"]


def _timed_command(cmd: list[str]) -> tuple[str, float, float, float]:
    """Run ``cmd``; its stdout, wall seconds, CPU seconds and peak RSS (MB) of that process."""
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{cmd} failed ({proc.returncode}): {err.read()[-2000:]}")
        return out.read(), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _add_faces(col: Any, xb: np.ndarray, start: int, model: str) -> None:
    """Store ``xb`` as one face per made-up photo (paths ``synthetic/START+i.jpg``)."""
    from facesearch.store import NewPhoto
    from facesearch.types import Detection, Face

    det = Detection((0.0, 0.0, 10.0, 10.0), ((2.0, 3.0), (8.0, 3.0), (5.0, 5.0), (3.0, 8.0),
                                             (7.0, 8.0)), 0.99)  # fmt: skip
    for b in range(0, len(xb), 20_000):
        photos = [
            NewPhoto(
                path=f"synthetic/{start + i:07d}.jpg",
                content_hash=f"{start + i:064x}",
                size=0,
                mtime=0.0,
                width=10,
                height=10,
                faces=(Face(det, xb[i], model),),
            )  # fmt: skip
            for i in range(b, min(len(xb), b + 20_000))
        ]
        col.add_photos(photos)


def collection_run(n: int, cache: Path, share: float = 0.1) -> dict[str, Any]:
    """``facesearch cluster`` as users run it, on a collection (SQLite) of ``n`` faces (the
    synthetic faces of :func:`synthetic_faces` with the real LFW faces mixed in, one per
    photo): the first run, then ``share`` more faces added and an incremental run, then
    ``--full``. Each command in its own process: wall and CPU seconds, peak RSS, the ids kept
    (the command's own count) and BCubed F of the stored clusters."""
    from facesearch import api
    from facesearch import store as st
    from facesearch.collection import Collection

    total = n + int(round(share * n))
    xb, ident = synthetic_faces(total, seed=0)
    xb, ident, real = with_real_faces(xb, ident, cache)
    rng = np.random.default_rng(1)
    order = rng.permutation(total)  # the late faces: a random 10%, real ones among them
    xb, ident = xb[order], ident[order]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        with Collection.open(home, create=True) as col:
            col.register_model("sface", xb.shape[1])
            _add_faces(col, xb[:n], 0, "sface")
        build_s = time.perf_counter() - t0
        log.info("collection of %d faces built in %.0f s", n, build_s)
        steps = [("first run", []), ("+10% faces, incremental", []), ("--full", ["--full"])]
        for step, extra in steps:
            if step.startswith("+"):
                with Collection.open(home) as col:
                    _add_faces(col, xb[n:], n, "sface")
            out, wall, cpu, rss = _timed_command([*_cli(), "cluster", *extra, "--home", str(home)])
            with Collection.open(home) as col, col.session() as s:
                rep = api.cluster_report(col)
                fids = st.face_ids(s)
            pos = {int(f): i for i, f in enumerate(fids.tolist())}  # face ids follow xb's order
            pred = np.full(len(fids), -1, dtype=np.int64)
            for e in rep.clusters:
                pred[[pos[r.face_id] for r in e.faces]] = e.id
            kept = [ln for ln in out.splitlines() if ln.startswith("ids:")]
            row = {
                "step": step, "faces": len(fids), "wall_s": wall, "cpu_s": cpu,
                "peak_rss_mb": rss, "clusters": len(rep.clusters),
                "ids": "/".join(re.findall(r"\d+", kept[0])[:2]) if kept else "",
                "bcubed_f": bcubed_prf(pred, ident[: len(fids)]).f,
                "load": os.getloadavg()[0],
            }  # fmt: skip
            log.info("  %s", row)
            rows.append(row)
    return {"faces": n, "real_faces": real, "build_s": build_s, "runs": rows}


# --------------------------------------------------------------------------- report


def _f(r: dict[str, Any] | None) -> str:
    return "–" if r is None else f"{r['bcubed_f']:.4f}"


def render_quality(q: dict[str, Any]) -> list[str]:
    """The summary table (BCubed F, method by set), then every set's details."""
    names = list(q)
    free = [m for m in next(iter(q.values()))["label_free"]]
    for r in q.values():
        free += [m for m in r["label_free"] if m not in free]
    lab: list[str] = []
    for r in q.values():
        lab += [m for m in r["labelled"] if m not in lab]
    head = "| method | " + " | ".join(names) + " | mean |"
    sep = "|---" * (len(names) + 2) + "|"
    lines = ["### BCubed F, every method on every set", "", head, sep]

    def row(label: str, part: str, m: str) -> str:
        cells, vals = [], []
        for s in names:
            r = q[s][part].get(m)
            cells.append(_f(r))
            if r is not None:
                vals.append(r["bcubed_f"])
        mean = f"{np.mean(vals):.4f}" if len(vals) == len(names) else "–"
        return f"| {label} | " + " | ".join(cells) + f" | {mean} |"

    ours = "facesearch (default)"
    for m in free:
        label = f"**{m}**" if m == ours else m
        lines.append(row(label, "label_free", m))
    # the best label-free alternative per set and the default's margin over it
    best_cells, margin_cells, margins, bests = [], [], [], []
    for s in names:
        alts = {m: r for m, r in q[s]["label_free"].items() if not m.startswith("facesearch")}
        if not alts or ours not in q[s]["label_free"]:
            best_cells.append("–")
            margin_cells.append("–")
            continue
        m_best = max(alts, key=lambda m: alts[m]["bcubed_f"])
        b = alts[m_best]["bcubed_f"]
        d = q[s]["label_free"][ours]["bcubed_f"] - b
        bests.append(b)
        margins.append(d)
        best_cells.append(f"{b:.4f} ({m_best.split(' (')[0].split(',')[0]})")
        margin_cells.append(f"{d:+.4f}")
    lines.append(
        "| *best label-free alternative* | "
        + " | ".join(best_cells)
        + (f" | {np.mean(bests):.4f} |" if len(bests) == len(names) else " | – |")
    )
    lines.append(
        "| *default minus best alternative* | "
        + " | ".join(margin_cells)
        + (f" | {np.mean(margins):+.4f} |" if len(margins) == len(names) else " | – |")
    )
    lines.append("| *with the labels (best setting):* |" + " |" * (len(names) + 1))
    for m in lab:
        lines.append(row(f"{m} *(labels)*", "labelled", m))
    lines.append("")
    sets = [
        f"**{s}**: {q[s]['faces']} faces, {q[s]['people']} people ({q[s]['kind']})" for s in names
    ]
    lines += ["Sets: " + "; ".join(sets) + ".", ""]
    head2 = (
        "| method | setting | BCubed P | BCubed R | BCubed F | pairwise P | pairwise R "
        "| pairwise F | clusters | s |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for s in names:
        lines += [f"#### {s}: {q[s]['faces']} faces, {q[s]['people']} people", "", head2]
        for part, suffix in (("label_free", ""), ("labelled", " *(labels)*")):
            for m, r in q[s][part].items():
                lines.append(
                    f"| {m}{suffix} | {r.get('setting', '')} | {r['bcubed_p']:.4f} "
                    f"| {r['bcubed_r']:.4f} | **{r['bcubed_f']:.4f}** | {r['pairwise_p']:.4f} "
                    f"| {r['pairwise_r']:.4f} | {r['pairwise_f']:.4f} | {int(r['clusters'])} "
                    f"| {r['seconds']:.1f} |"
                )
        curves = [(m, r["curve"]) for m, r in q[s]["labelled"].items() if "curve" in r]
        if curves:
            lines += ["", "BCubed F along each sweep (threshold F):", ""]
            lines += [
                f"- {m}: " + ", ".join(f"{t} {f:.4f}" for t, f in cv.items()) for m, cv in curves
            ]
        lines.append("")
    return lines


def _refreshed(results: dict[str, Any]) -> str:
    """The note on a partial re-run of the quality part, if the last one was partial."""
    last = results.get("quality_refreshed")
    return f" (some rows, the ids and cohesion refreshed since by `{last}`)" if last else ""


def render(results: dict[str, Any]) -> str:
    """``cluster.md`` from the figures of ``cluster.json``."""
    lines = ["# Clustering benchmark", "", "Written by `bench/cluster_bench.py`.", ""]
    q = results.get("quality", {})
    if q:
        lines += [
            "## Quality on sets of different shapes",
            "",
            f"{results.get('quality_machine', '')} Embeddings: facesearch's own pipeline (numpy "
            "engine, YuNet + SFace), made by `python bench/cluster_data.py --threads 2`.",
            "",
            f"Command: `{results.get('quality_command', '')}`{_refreshed(results)}",
            "",
            "Distances are d = |a-b|^2 (cosine distance = d / 2); tau = "
            f"{TAU:.3f} is SFace's verification threshold. Label-free rows run each method at "
            "its natural default (see the script's docstring); rows marked *(labels)* take the "
            "best setting of a sweep, chosen with the labels. 'best label-free alternative' is "
            "the best label-free row other than facesearch's own.",
            "",
        ]
        lines += render_quality(q)
    ids = results.get("ids", {})
    if ids:
        lines += [
            "## Cluster ids across re-runs",
            "",
            "10% of each set's faces (seeded) held out; the rest clustered with the default; "
            "then all faces clustered again from scratch (full, ids carried over by "
            "`stable_ids`: a new cluster keeps the id of the old cluster it overlaps with "
            "Jaccard >= 0.5) and incrementally (`assign_new`: old clusters keep their ids by "
            "construction). 'kept' = ids of the first run's clusters (2+ faces) that still "
            "name a cluster; 'faces still under it' = median share of a kept cluster's old "
            "faces that the full re-run keeps under its id.",
            "",
            f"Command: `{results.get('quality_command', '')}`{_refreshed(results)}",
            "",
            "| set | faces before + added | clusters before | kept (full re-run) | faces still "
            "under it | kept (incremental) | BCubed F before / full / incremental |",
            "|---|---|---|---|---|---|---|",
        ]
        for s, r in ids.items():
            cb = r["clusters_before"]
            lines.append(
                f"| {s} | {r['faces_before']} + {r['faces_added']} | {cb} "
                f"| {r['kept_full']} ({100 * r['kept_full'] / max(cb, 1):.1f}%) "
                f"| {r['kept_faces_share_median']:.3f} "
                f"| {r['kept_incremental']} ({100 * r['kept_incremental'] / max(cb, 1):.1f}%) "
                f"| {r['f_before']:.4f} / {r['f_full']:.4f} / {r['f_incremental']:.4f} |"
            )
        lines.append("")
    coh = results.get("cohesion", {})
    if coh:
        lines += [
            "## Cohesion",
            "",
            "The default's clusters of 2+ faces; 'impure' = holding faces of two or more "
            "people. AUC = the chance that an impure cluster ranks as more doubtful than a pure "
            "one, by mean intra-cluster d, by the share of members whose nearest face lies "
            "outside (1 - nn_inside) and by the margin (smallest: a member's nearest outsider "
            "minus its mean d to the cluster; k = 32 graph); 0.5 = no better than chance. Most "
            "impure clusters on the sets with many people seen once are pairs of two strangers "
            "who are each other's nearest face at a d like one person's: no score computed from "
            "the faces tells them apart.",
            "",
            "| set | clusters | impure | AUC mean d | AUC nearest outside | AUC margin "
            "| median mean d, pure / impure |",
            "|---|---|---|---|---|---|---|",
        ]
        for s, r in coh.items():
            lines.append(
                f"| {s} | {r['clusters']} | {r['impure']} | {r['auc_mean_d']:.3f} "
                f"| {r['auc_nn_outside']:.3f} | {r.get('auc_margin', float('nan')):.3f} "
                f"| {r['mean_d_pure']:.3f} / {r['mean_d_impure']:.3f} |"
            )
        lines.append("")
    scale = results.get("scale", [])
    if scale:
        lines += [
            "## Time and memory",
            "",
            "Seeded synthetic embeddings (`synthetic_faces`: Zipf identity sizes, SFace-like "
            "distances) with every real LFW face of the cache mixed in (13,233; 'F real' scores "
            "them alone), default settings, each size in a fresh process. Peak RSS is the whole "
            "process (Python, numpy, FAISS, the data); 'before' is after generating the data. "
            "Wall-clock seconds depend on the other jobs sharing the cores (load = 1-minute load "
            "average at the end); CPU seconds (user + system, all threads) are less affected. "
            f"{results.get('scale_machine', '')}",
            "",
            f"Command: `{results.get('scale_command', 'python bench/cluster_bench.py --scale')}`",
            "",
            "| faces | identities | index | threads | k-NN s (CPU s) | agglomerate s (CPU s) "
            "| total s | cohesion s | load | RSS before MB | peak RSS MB | clusters | BCubed F "
            "| F real |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in scale:
            lines.append(
                f"| {r['faces']} | {r['identities']} | {r['index']} | {r['threads']} "
                f"| {r['knn_s']:.1f} ({r['knn_cpu_s']:.1f}) "
                f"| {r['agglomerate_s']:.1f} ({r['agglomerate_cpu_s']:.1f}) "
                f"| {r['total_s']:.1f} | {r.get('cohesion_s', float('nan')):.1f} "
                f"| {r['load']:.1f} | {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} "
                f"| {r['clusters']} | {r['bcubed_f']:.4f} "
                f"| {r.get('bcubed_f_real', float('nan')):.4f} |"
            )
        lines.append("")
    colls = results.get("collection", [])
    if colls:
        lines += [
            "## `facesearch cluster` on a collection",
            "",
            "The whole command as users run it (SQL read, k-NN graph, clustering, cohesion, "
            "clusters and ids written back), each run its own process, on an SQLite collection "
            "of the same synthetic faces with the real LFW faces mixed in (one face per photo): "
            "the first run; then 10% more faces (a random tenth of the set, stored after the "
            "first run) and an incremental run; then `--full`. 'ids' is the command's own "
            "count (kept / clusters before it) of the clusters whose id still names a cluster "
            "after it. "
            f"{results.get('collection_machine', '')}",
            "",
            f"Command: `{results.get('collection_command', '')}`",
            "",
            "| faces | run | faces after | wall s | CPU s | peak RSS MB | clusters | ids kept "
            "| BCubed F | load |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in colls:
            for r in c["runs"]:
                lines.append(
                    f"| {c['faces']} | {r['step']} | {r['faces']} | {r['wall_s']:.1f} "
                    f"| {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['clusters']} "
                    f"| {r['ids'] or '–'} | {r['bcubed_f']:.4f} | {r['load']:.1f} |"
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
        f"(load average {load:.1f} at the start), {threads} FAISS/BLAS thread(s)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quality", action="store_true", help="every method on every set")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cluster_data.py's cache")
    ap.add_argument("--sets", default=",".join(SET_KEYS), help="which sets (keys, comma-separated)")
    ap.add_argument("--methods", help="only methods whose name contains one of these (comma-sep.)")
    ap.add_argument("--no-ids", action="store_true", help="skip the id and cohesion checks")
    ap.add_argument("--scale", type=int, nargs="*", default=[], help="synthetic sizes to time")
    ap.add_argument("--index", choices=["flat", "hnsw", "auto"], default="auto",
                    help="k-NN for --scale (auto: facesearch's choice by size)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="FAISS / BLAS threads")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--collection", type=int, nargs="*", default=[],
                    help="collection sizes to time facesearch cluster on")  # fmt: skip
    ap.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    if args.scale_child:
        print(json.dumps(scale_child(args.scale_child, args.threads, args.index, args.cache)))
        return
    import faiss

    faiss.omp_set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    jpath = args.out / "cluster.json"
    results: dict[str, Any] = json.loads(jpath.read_text()) if jpath.exists() else {}
    if args.quality:
        keys = set(args.sets.split(","))
        unknown = keys - set(SET_KEYS)
        if unknown:
            raise SystemExit(f"unknown sets {sorted(unknown)}; known: {', '.join(SET_KEYS)}")
        pats = args.methods.split(",") if args.methods else None

        def wanted(name: str) -> bool:
            return pats is None or any(p.lower() in name.lower() for p in pats)

        q = dict(results.get("quality", {}))
        ids, coh = dict(results.get("ids", {})), dict(results.get("cohesion", {}))
        for s in load_sets(args.cache, lambda k: k in keys):
            c = Context(s)
            q[s.name] = run_set(c, wanted, q.get(s.name, {}))
            if not args.no_ids:
                ids[s.name] = id_survival(c)
                coh[s.name] = cohesion_check(c)
            # keep the table's order of sets
            results["quality"] = {n: q[n] for n in SET_KEYS.values() if n in q}
            results["ids"] = {n: ids[n] for n in SET_KEYS.values() if n in ids}
            results["cohesion"] = {n: coh[n] for n in SET_KEYS.values() if n in coh}
            results["quality_machine"] = machine(args.threads)
            if pats is None and keys == set(SET_KEYS):
                results["quality_command"] = command()
                results.pop("quality_refreshed", None)
            else:  # a partial run: the table's command stays the whole run's
                results.setdefault("quality_command", command())
                results["quality_refreshed"] = command()
            write_atomic(jpath, json.dumps(results, indent=1))
            write_atomic(args.out / "cluster.md", render(results))
    if args.scale:
        results["scale_machine"] = machine(args.threads)
        results["scale_command"] = command()
        redo = {(n, args.index) for n in args.scale}
        old = [
            r
            for r in results.get("scale", [])
            if (r["faces"], r["index"]) not in redo and "real_faces" in r  # this layout only
        ]
        results["scale"] = sorted(
            old + run_scale(args.scale, args.threads, args.index, args.cache),
            key=lambda r: (r["faces"], r["index"]),
        )
    if args.collection:
        results["collection_machine"] = machine(args.threads)
        results["collection_command"] = command()
        old_c = [c for c in results.get("collection", []) if c["faces"] not in args.collection]
        new_c = [collection_run(n, args.cache) for n in args.collection]
        results["collection"] = sorted(old_c + new_c, key=lambda c: c["faces"])
    for stale in ("sets", "lfw_machine", "lfw_command", "embeddings"):  # the former layout
        results.pop(stale, None)
    write_atomic(jpath, json.dumps(results, indent=1))
    write_atomic(args.out / "cluster.md", render(results))
    log.info("wrote %s and %s", jpath, args.out / "cluster.md")


if __name__ == "__main__":
    main()
