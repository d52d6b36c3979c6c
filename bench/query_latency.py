"""Query-side speed: vector search at 10k/100k/1M faces, one-face queries, CLI start-up.

Parts (``--parts``, default all):

``vectors``
    Vector search latency (one query at a time, as a one-face photo queries: median and p95 in
    ms) and recall@10 against exact search, at 10k / 100k / 1M synthetic faces, for the
    ``facesearch.vectors.VectorIndex`` kinds (``--kinds``, default ``flat``, ``pq`` and
    ``ivf``; the table marks what ``auto`` resolves to), plus build time, file size (a ``pq``
    index: main file + accelerator sidecar), the time to load the saved index (memory-mapped;
    ``pq``: with its CRC-checked sidecar) and the machine's load average before and after.
    ``--faiss`` adds plain FAISS HNSW32 for reference.

    The synthetic faces are seeded and clustered like real embeddings: identities are random
    unit vectors, each with a geometric number of faces (mean 10), a face is
    ``normalise(centre + sigma * g / sqrt(d))`` with ``sigma = 0.75`` (two faces of one identity
    are at distance d ~ 0.7, different identities at ~ 1.8, as SFace on LFW). Queries are new
    faces of known identities (80 %) and of unknown identities (20 %), reported together and
    apart.

``startup``
    What the CLI pays on every call: ``python -X importtime -c "import facesearch.cli"`` (the
    imports that dominate), the wall time of ``facesearch --help``, and, when a collection is
    given (``--collection-home``), of ``facesearch query IMG`` and of opening the collection.

``e2e``
    One-face photo query end to end in a long-running process (Python API): decode, detect,
    align, embed, search, look up; needs ``--collection-home`` (a collection made by
    ``facesearch index``) and optionally a synthetic 1M-face collection (see README).

Usage::

    python bench/query_latency.py --quick            # 10k and 100k, few queries
    python bench/query_latency.py                    # 10k, 100k, 1M
    python bench/query_latency.py --parts startup,e2e --collection-home DIR --image IMG

Results go into the ``query`` / ``startup`` / ``e2e`` sections of ``bench/results/speed.json``
and ``speed.md`` (through ``bench/speed.py``'s writer).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import (  # noqa: E402
    DEFAULT_SHARED,
    REPO,
    _facesearch_cmd,
    _thread_env,
    lfw_selection,
    machine,
    materialise,
    update_results,
)

log = logging.getLogger("bench.query")

DIM = 128
K = 10
TAU = 1.274  # facesearch.distance.DEFAULT_THRESHOLD: "same person" below this distance


# ------------------------------------------------------------------------------ synthetic data
@dataclass(frozen=True)
class Synthetic:
    """A synthetic face collection and its queries (see :func:`synthetic_faces`)."""

    xb: np.ndarray  # (nb, d) float32, unit rows
    xq: np.ndarray  # (nq, d) float32, unit rows
    known: np.ndarray  # (nq,) bool
    label: np.ndarray  # (nb,) int64 identity


def synthetic_faces(
    nb: int, nq: int, *, d: int = DIM, sigma: float = 0.75, offset: float = 0.39,
    mean_per_id: float = 10.0, unknown_frac: float = 0.2, seed: int = 0,
) -> Synthetic:  # fmt: skip
    """Clustered unit vectors: ``xb (nb, d)``, ``xq (nq, d)`` float32, ``known (nq,) bool``
    (the query's identity is in the database), ``label (nb,) int64`` (identity of each face).

    Identities are centres ``normalise(offset * m + u)`` (``u`` uniform on the sphere, ``m`` one
    fixed unit direction: real embeddings share a mean, of norm 0.29 for SFace on LFW); each has
    a geometric number of faces (mean ``mean_per_id``); a face is
    ``normalise(centre + sigma * g / sqrt(d))``, ``g`` standard normal. Queries are fresh faces of
    random database identities (``known``) or of new identities. The defaults reproduce what
    SFace gives on LFW: median distance 0.69 between two photos of a person, 1.83 between two
    people, a mean of norm 0.29, and a nearly isotropic spread (participation ratio of the
    covariance: real 99, synthetic 122 of 128), i.e. about as hard for an approximate index.
    """
    rng = np.random.default_rng(seed)
    mean_dir = _unit_rows(rng.standard_normal((1, d), dtype=np.float32))[0] * offset

    def new_centres(n: int) -> np.ndarray:
        return _unit_rows(mean_dir + _unit_rows(rng.standard_normal((n, d), dtype=np.float32)))

    sizes: list[np.ndarray] = []
    total = 0
    while total < nb:
        s = rng.geometric(1.0 / mean_per_id, size=max(16, (nb - total) // int(mean_per_id) + 1))
        sizes.append(s)
        total += int(s.sum())
    per_id = np.concatenate(sizes)
    per_id = per_id[: int(np.searchsorted(np.cumsum(per_id), nb)) + 1]
    n_ids = len(per_id)
    centres = new_centres(n_ids)
    label = np.repeat(np.arange(n_ids), per_id)[:nb]
    xb = np.empty((nb, d), np.float32)
    step = 200_000
    for i in range(0, nb, step):  # chunked: 1M x 128 noise at once is 0.5 GB more
        c = centres[label[i : i + step]]
        xb[i : i + step] = _unit_rows(
            c + rng.standard_normal(c.shape, dtype=np.float32) * (sigma / math.sqrt(d))
        )
    known = rng.random(nq) >= unknown_frac
    qc = np.where(
        known[:, None],
        centres[rng.integers(0, n_ids, nq)],
        new_centres(nq),
    )
    xq = _unit_rows(qc + rng.standard_normal(qc.shape, dtype=np.float32) * (sigma / math.sqrt(d)))
    return Synthetic(xb, xq, known, label.astype(np.int64))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def recall_at_k(i_approx: np.ndarray, i_exact: np.ndarray) -> float:
    """Mean fraction of the exact ``k`` neighbours found; ``(nq, k)`` int64 each."""
    hits = sum(len(np.intersect1d(a, e[e >= 0])) for a, e in zip(i_approx, i_exact, strict=True))
    total = int((i_exact >= 0).sum())
    return hits / total if total else 1.0


def latencies_ms(search: Callable[[np.ndarray], Any], xq: np.ndarray) -> np.ndarray:
    """Wall time of ``search(xq[i:i+1])`` for every query, in ms (after 5 warm-up queries)."""
    for i in range(min(5, len(xq))):
        search(xq[i : i + 1])
    out = np.empty(len(xq))
    for i in range(len(xq)):
        t = time.perf_counter()
        search(xq[i : i + 1])
        out[i] = (time.perf_counter() - t) * 1e3
    return out


# ------------------------------------------------------------------------------ part: vectors
def bench_vectors(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(args.threads)
    VectorIndex: Any = None  # noqa: N806
    resolve_kind: Any = None
    vectors: Any = None
    with contextlib.suppress(ImportError):  # before facesearch.vectors: plain FAISS stand-ins
        from facesearch import vectors
        from facesearch.vectors import VectorIndex, resolve_kind
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for nb in args.sizes:
        nq = args.queries
        syn = synthetic_faces(nb, nq, seed=nb)
        xb, xq, known = syn.xb, syn.xq, syn.known
        del syn
        ids = np.arange(nb, dtype=np.int64) * 3 + 1  # not 0..n-1: ids are SQL keys
        t = time.perf_counter()
        ip_exact, i_exact = faiss.knn(xq, xb, K, metric=faiss.METRIC_INNER_PRODUCT)
        t_gt = time.perf_counter() - t
        i_exact = ids[i_exact]
        # the exact neighbours a 1:K identification acts on: those within the threshold
        i_tau = np.where(2.0 - 2.0 * ip_exact < TAU, i_exact, -1)
        log.info("nb=%d: data ready, exact truth in %.1f s", nb, t_gt)
        kinds: list[str] = list(args.kinds) if VectorIndex is not None else []
        faiss_kinds: list[str] = (
            ["HNSW32"] if (args.faiss and nb <= args.faiss_max) or VectorIndex is None else []
        )
        if VectorIndex is None:
            faiss_kinds.insert(0, "flat-faiss")
            faiss_kinds.insert(1, f"IVF{max(1, round(2 * math.sqrt(nb)))},Flat")
        for kind in kinds + faiss_kinds:
            row: dict[str, Any] = {"nb": nb, "index": kind}
            if kind in ("flat", "pq", "ivf"):
                assert VectorIndex is not None
                t = time.perf_counter()
                vi = VectorIndex.create(DIM, kind, n_hint=nb)
                vi.add(ids, xb)
                row["build_s"] = time.perf_counter() - t
                row["auto"] = resolve_kind("auto", nb) == kind
                if kind == "ivf":
                    row["params"] = f"nlist {vi.nlist}, nprobe {vi.nprobe}"
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "index.faiss"
                    vi.save(path)
                    side = vectors.sidecar_path(path)
                    side_mb = side.stat().st_size / 2**20 if side.exists() else 0.0
                    row["file_mb"] = path.stat().st_size / 2**20 + side_mb
                    t = time.perf_counter()
                    vi = VectorIndex.load(path, mmap=True)
                    row["load_mmap_ms"] = (time.perf_counter() - t) * 1e3
                    if kind == "pq":
                        row["accelerator_mb"] = side_mb
                        row["params"] = (
                            f"{vectors.pq_m(DIM)} × {vectors.PQ_NBITS}-bit codes, K_FACTOR "
                            f"{vectors.K_FACTOR}, sidecar {side_mb:.1f} MB"
                            if vi.accelerated
                            else f"exact (below PQ_MIN_TRAIN {vectors.PQ_MIN_TRAIN:,})"
                        )

                    row.update(_measure(_searcher(vi), xq, i_exact, i_tau, known, args))
                    if args.sweep and kind == "ivf":
                        row["sweep"] = sweep_nprobe(
                            vi, xq, i_exact, i_tau, args.latency_queries // 2
                        )
                    del vi
            else:
                index = _faiss_index(faiss, kind, nb)
                t = time.perf_counter()
                if not index.is_trained:
                    rng = np.random.default_rng(1)
                    n_train = min(nb, 64 * index.nlist)
                    index.train(xb[rng.choice(nb, n_train, replace=False)])
                index.add_with_ids(xb, ids)
                row["build_s"] = time.perf_counter() - t
                row["params"] = _tune_faiss(faiss, index, kind, xq[: nq // 2], i_exact[: nq // 2])

                row.update(_measure(_searcher(index), xq, i_exact, i_tau, known, args))
                del index
            log.info("nb=%d %s: %s", nb, kind, {k: v for k, v in row.items() if k not in ("nb",)})
            rows.append(row)
        del xb
    return {
        "rows": rows,
        "few_queries": getattr(vectors, "FEW_QUERIES", None),
        "queries": args.queries,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
    }


def _searcher(index: Any) -> Callable[[np.ndarray], Any]:
    """``xq -> (D, I)``: the ``K`` nearest of each query in ``index``."""

    def search(xq: np.ndarray) -> Any:
        return index.search(xq, K)

    return search


def _faiss_index(faiss: Any, kind: str, nb: int) -> Any:
    if kind == "flat-faiss":
        return faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
    if kind.startswith("HNSW"):
        hnsw = faiss.IndexHNSWFlat(DIM, int(kind[4:]), faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        return faiss.IndexIDMap(hnsw)
    return faiss.index_factory(DIM, kind, faiss.METRIC_INNER_PRODUCT)


def _tune_faiss(faiss: Any, index: Any, kind: str, xq: np.ndarray, i_exact: np.ndarray) -> str:
    """Smallest nprobe / efSearch reaching recall@10 0.97 on half the queries (the other half
    is not seen by the tuning, but the figures reported use all queries)."""
    if kind == "flat-faiss":
        return ""
    ps = faiss.ParameterSpace()
    name = "efSearch" if kind.startswith("HNSW") else "nprobe"
    for v in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512):
        ps.set_index_parameter(index, name, v)
        if recall_at_k(index.search(xq, K)[1], i_exact) >= 0.97:
            break
    return f"{name} {v}"


def _measure(
    search: Callable[[np.ndarray], Any],
    xq: np.ndarray,
    i_exact: np.ndarray,
    i_tau: np.ndarray,
    known: np.ndarray,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Recall (one batch search) and one-query-per-call latency at ``args.threads`` FAISS
    threads and at 1 (for a single query, FAISS's OpenMP threads only add synchronisation,
    which costs much on a busy machine)."""
    import faiss

    _, i_found = search(xq)  # batch: for recall
    out = {
        "recall10": recall_at_k(i_found, i_exact),
        "recall10_known": recall_at_k(i_found[known], i_exact[known]),
        "recall10_unknown": recall_at_k(i_found[~known], i_exact[~known]),
        "recall10_tau": recall_at_k(i_found, i_tau),
        "tau_neighbours": float((i_tau >= 0).sum() / len(i_tau)),
    }
    for threads, suffix in ((args.threads, ""), (1, "_1t")):
        faiss.omp_set_num_threads(threads)
        lat = latencies_ms(search, xq[: args.latency_queries])
        out[f"lat_median_ms{suffix}"] = float(np.median(lat))
        out[f"lat_p95_ms{suffix}"] = float(np.percentile(lat, 95))
    faiss.omp_set_num_threads(args.threads)
    return out


def sweep_nprobe(
    vi: Any, xq: np.ndarray, i_exact: np.ndarray, i_tau: np.ndarray, n_lat: int
) -> list[dict[str, float]]:
    """Recall@10 and median one-query latency of an IVF ``VectorIndex`` over ``nprobe``."""
    saved = vi.nprobe
    rows = []
    for p in (8, 16, 32, 64, 128, 256, 512):
        if p > vi.nlist:
            break
        vi.nprobe = p
        _, found = vi.search(xq, K)
        lat = latencies_ms(_searcher(vi), xq[:n_lat])
        rows.append({"nprobe": p, "recall10": recall_at_k(found, i_exact),
                     "recall10_tau": recall_at_k(found, i_tau),
                     "lat_median_ms": float(np.median(lat))})  # fmt: skip
    vi.nprobe = saved
    return rows


def render_vectors(payload: dict[str, Any]) -> str:
    lines = [
        "## Vector search at 10k / 100k / 1M faces",
        "",
        f"Command: `{payload['command']}`  ",
        f"Date: {payload['date']}; {payload['machine']['cpu']}; FAISS threads "
        f"{payload['threads']}; {payload['queries']} queries (80 % new faces of known identities, "
        f"20 % unknown), latency over the first {payload['latency_queries']}, one query per "
        "call.  ",
        "Synthetic clustered unit vectors (seeded; see `bench/query_latency.py`). recall@10 is "
        "against exact inner-product search (all queries; *known* / *unknown*: queries whose "
        "person is / is not in the collection; *within τ*: only the exact neighbours closer than "
        "the threshold τ = 1.274, the ones a 1:K identification acts on); *auto* marks the kind "
        "`--index-type auto` picks at that size.  ",
        "facesearch runs searches of at most "
        f"{payload.get('few_queries', 16)} queries on one FAISS thread (`facesearch.vectors`, "
        "*Threads*), so for its kinds the two latency columns differ only by noise; the plain "
        "FAISS rows show what FAISS threads do to one query.  ",
        f"OMP_WAIT_POLICY {payload.get('omp_wait_policy', 'unset')}; machine load average "
        f"(1/5/15 min) {_loads(payload.get('loadavg_before'))} before, "
        f"{_loads(payload.get('loadavg_after'))} after (2 cores, shared with other jobs).",
        "",
        "| faces | index | params | build s | file MB | load (mmap) ms | median ms | p95 ms | "
        "median ms 1 thread | p95 ms 1 thread | recall@10 | known | unknown | within τ |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["rows"]:
        name = r["index"] + (" (auto)" if r.get("auto") else "")
        lines.append(
            f"| {r['nb']:,} | {name} | {r.get('params', '')} | {r['build_s']:.1f} | "
            f"{_o(r.get('file_mb'), 0)} | {_o(r.get('load_mmap_ms'), 1)} | "
            f"{r['lat_median_ms']:.2f} | {r['lat_p95_ms']:.2f} | {r['lat_median_ms_1t']:.2f} | "
            f"{r['lat_p95_ms_1t']:.2f} | {r['recall10']:.4f} | "
            f"{r['recall10_known']:.4f} | {r['recall10_unknown']:.4f} | "
            f"{_o(r.get('recall10_tau'), 4)} |"
        )
    sweeps = [r for r in payload["rows"] if r.get("sweep")]
    if sweeps:
        lines += [
            "",
            "IVF recall@10 / median latency (ms, FAISS threads as above) over nprobe:",
            "",
        ]
        for r in sweeps:
            lines.append(
                f"- {r['nb']:,} faces, {r.get('params', '')}: "
                + "; ".join(
                    f"nprobe {s['nprobe']}: {s['recall10']:.3f} / {s['lat_median_ms']:.1f}"
                    + (f" (within τ {s['recall10_tau']:.3f})" if "recall10_tau" in s else "")
                    for s in r["sweep"]
                )
            )
    return "\n".join(lines) + "\n"


def _loads(x: Sequence[float] | None) -> str:
    return "–" if not x else " / ".join(f"{v:.1f}" for v in x)


def _o(x: float | None, nd: int) -> str:
    return "–" if x is None else f"{x:,.{nd}f}"


# ------------------------------------------------------------------------------ part: startup
def import_profile(
    module: str = "facesearch.cli", top: int = 12, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``python -X importtime -c "import MODULE"``: total and the top cumulative imports.

    Only top-level packages are ranked (``torch`` rather than ``torch._C``), so that the
    table says which dependency costs what; the first-party modules are listed by full name.
    """
    env = env or _thread_env(2)
    runs = []
    for _ in range(3):  # the first run may read from disk; keep the fastest of 3
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        runs.append(out.stderr)
    best = min(runs, key=lambda s: _importtime_rows(s)[1])
    rows, total = _importtime_rows(best)
    per_pkg: dict[str, int] = {}
    for name, cum, depth in rows:
        key = name if name.startswith("facesearch") else name.split(".")[0]
        if depth == 0 or name.startswith("facesearch"):
            per_pkg[key] = max(per_pkg.get(key, 0), cum)
    ranked = sorted(per_pkg.items(), key=lambda kv: -kv[1])[:top]
    return {"module": module, "total_ms": total / 1e3, "top": [(k, v / 1e3) for k, v in ranked],
            "heavy_loaded": sorted({n.split(".")[0] for n, _, _ in rows} & HEAVY)}  # fmt: skip


HEAVY = {"torch", "faiss", "sqlalchemy", "alembic", "numpy", "PIL", "pillow_heif", "cv2", "scipy",
         "tqdm", "onnx"}  # fmt: skip


def _importtime_rows(stderr: str) -> tuple[list[tuple[str, int, int]], int]:
    """``[(module, cumulative us, depth)]`` and the sum of top-level cumulative times (us)."""
    rows = []
    total = 0
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        cum, indent, name = int(m.group(2)), len(m.group(3)), m.group(4)
        depth = (indent - 1) // 2
        rows.append((name, cum, depth))
        if depth == 0:
            total += cum
    return rows, total


def wall_times(cmd: Sequence[str], n: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Median and max wall time (s) of ``n`` runs of ``cmd`` (after one warm-up run), and the
    median CPU time (user + sys of the child: what the run costs on an idle machine, about)."""
    import resource

    env = env or _thread_env(2)
    subprocess.run(cmd, capture_output=True, env=env, check=False)
    ts, cpus = [], []
    status = 0
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, env=env, check=False)
        ts.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        status = status or out.returncode
    return {"median_s": statistics.median(ts), "max_s": max(ts), "runs": n, "status": status,
            "cpu_median_s": statistics.median(cpus)}  # fmt: skip


def bench_startup(args: argparse.Namespace) -> dict[str, Any]:
    fs = _facesearch_cmd()
    env = _thread_env(args.threads, args.env)
    out: dict[str, Any] = {
        "import_cli": import_profile("facesearch.cli", env=env),
        "python_bare": wall_times([sys.executable, "-c", "pass"], args.cli_runs, env),
        "help": wall_times([*fs, "--help"], args.cli_runs, env),
    }
    for module in ("torch", "faiss", "sqlalchemy", "facesearch.pipeline"):
        with contextlib.suppress(OSError):
            out[f"import_{module}"] = wall_times([sys.executable, "-c", f"import {module}"], 3, env)
    if args.collection_home and args.image:
        home = str(args.collection_home)
        cmd = [*fs, "query", str(args.image), "--home", home]
        out["query"] = wall_times(cmd, args.cli_runs, env)
        out["query"]["command"] = shlex.join(["facesearch", *_public(cmd[len(fs) :])])
        out["query"]["collection_faces"] = _collection_faces(home)
        out["query_phases"] = query_phases(home, str(args.image), env, runs=3)
        out["query_importtime"] = _cli_import_profile(cmd, env)
    return out


_PHASES = r"""
import json, sys, time
t = [("start", time.perf_counter(), time.process_time())]
def mark(name): t.append((name, time.perf_counter(), time.process_time()))
home, image = sys.argv[1], sys.argv[2]
import facesearch.cli; mark("import facesearch.cli")
from facesearch.prefetch import EarlyFaces
early = EarlyFaces(image); mark("fork the child (decode, detect, align, embed: numpy engine)")
import faiss; mark("import faiss")
from facesearch.collection import Collection; mark("import collection (sqlalchemy)")
from facesearch.identify import identify_faces
from facesearch.model_upgrade import query_model; mark("import search, upgrade")
col = Collection.open(home); mark("open collection (SQL)")
vi = col.vectors; mark("load vector index (mmap, checks)")
assert query_model(col) == "sface"
faces = early.faces(); mark("wait for the child's faces")
identify_faces(col, faces, k=5); mark("identify (search, people)")
col.close(); mark("close")
print(json.dumps([(n, b - a, d - c) for (_, a, c), (n, b, d) in zip(t, t[1:])]))
"""


def query_phases(
    home: str, image: str, env: dict[str, str], runs: int
) -> list[tuple[str, float, float]]:
    """What one ``facesearch query`` process spends its time on: ``(phase, wall s, CPU s)``.

    A fresh interpreter does the command's steps in order with a clock between them (median
    of ``runs``); the phases sum to about the command's wall time minus interpreter start-up.
    As the command does, the photo's faces are computed in a forked child
    (:mod:`facesearch.prefetch`) while the parent imports and opens the collection, so
    "wait for the child's faces" is what is left of that work when the parent needs it. CPU
    seconds are the parent's only.
    """
    per: dict[str, list[tuple[float, float]]] = {}
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _PHASES, home, image], capture_output=True, text=True,
            env=env, check=True,
        )  # fmt: skip
        for name, wall, cpu in json.loads(out.stdout.strip().splitlines()[-1]):
            per.setdefault(name, []).append((wall, cpu))
    return [
        (name, statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for name, v in per.items()
    ]


def _collection_faces(home: str) -> int | None:
    from facesearch.collection import Collection

    col = Collection.open(home)
    try:
        faces = col.info(check=False).get("faces")
        return int(faces) if faces is not None else None
    finally:
        col.close()


def _cli_import_profile(cmd: Sequence[str], env: dict[str, str]) -> list[tuple[str, float]]:
    """Top-level imports a whole CLI call pays (``PYTHONIMPORTTIME``), ms, largest first."""
    env = {**env, "PYTHONPROFILEIMPORTTIME": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    rows, _ = _importtime_rows(out.stderr)
    per: dict[str, int] = {}
    for name, cum, depth in rows:
        if depth == 0:
            per[name] = per.get(name, 0) + cum
    return [(k, v / 1e3) for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:12]]


def render_startup(payload: dict[str, Any]) -> str:
    s = payload["startup"]
    imp = s["import_cli"]
    lines = [
        "## Start-up: what every CLI call pays",
        "",
        f"Command: `{payload['command']}`  ",
        f"Date: {payload['date']}. Wall times are medians of {s['help']['runs']} runs after one "
        "warm-up.",
        "",
        "| what | median wall s | max wall s | median CPU s |",
        "|---|---:|---:|---:|",
        f"| `python -c pass` | {s['python_bare']['median_s']:.3f} | "
        f"{s['python_bare']['max_s']:.3f} | {s['python_bare'].get('cpu_median_s', 0):.3f} |",
    ]
    rows = [(f'`python -c "import {k[7:]}"`', s[k]) for k in
            ("import_torch", "import_faiss", "import_sqlalchemy", "import_facesearch.pipeline")
            if k in s]  # fmt: skip
    rows.append(("`facesearch --help`", s["help"]))
    queries = payload.get("queries") or ([s["query"]] if "query" in s else [])
    for q in queries:
        rows.append((f"`facesearch query IMG` ({q['collection_faces']:,} faces)", q))
    for what, r in rows:
        lines.append(
            f"| {what} | {r['median_s']:.3f} | {r['max_s']:.3f} | {r.get('cpu_median_s', 0):.3f} |"
        )
    lines += [
        "",
        f'`python -X importtime -c "import facesearch.cli"`: {imp["total_ms"]:.0f} ms of '
        f"imports; heavy packages loaded: {', '.join(imp['heavy_loaded']) or 'none'}. "
        "Largest (cumulative ms): " + ", ".join(f"{k} {v:.0f}" for k, v in imp["top"][:8]) + ".",
    ]
    for q in queries:
        phases = q.get("phases") or s.get("query_phases")
        if not phases:
            continue
        lines += [
            "",
            f"One `facesearch query` process on {q['collection_faces']:,} faces, phase by phase "
            "(median of 3; a fresh interpreter doing the command's steps with a clock between "
            "them):",
            "",
            "| phase | wall s | CPU s |",
            "|---|---:|---:|",
        ]
        lines += [f"| {name} | {w:.3f} | {c:.3f} |" for name, w, c in phases]
        lines.append("")
    if "query_importtime" in s:
        lines.append(
            "Imports paid by one `facesearch query` call (top level, cumulative ms): "
            + ", ".join(f"{k} {v:.0f}" for k, v in s["query_importtime"][:8])
            + "."
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ part: build
def query_images(data: Path, seed_count: int) -> tuple[list[str], list[str], list[str]]:
    """``(seed, known, unknown)`` relative LFW paths (under ``lfw/images``).

    ``seed``: the first ``seed_count`` LFW images (``speed.py``'s selection) minus ``known``;
    ``known``: the last photo of each of the first 15 people of the selection with 3+ photos
    (their other photos are in the seed); ``unknown``: the first photo of 5 people after the
    selection (nobody in the collection).
    """
    rel = lfw_selection(data, seed_count)
    people: dict[str, list[str]] = {}
    for r in rel:
        people.setdefault(r.split("/")[0], []).append(r)
    known = [v[-1] for v in people.values() if len(v) >= 3][:15]
    after = lfw_selection(data, seed_count + 400)[seed_count:]
    unknown: list[str] = []
    for r in after:
        name = r.split("/")[0]
        if name not in people and all(u.split("/")[0] != name for u in unknown):
            unknown.append(r)
        if len(unknown) == 5:
            break
    chosen = set(known)
    return [r for r in rel if r not in chosen], known, unknown


def build_collection(args: argparse.Namespace) -> dict[str, Any]:
    """Grow the collection at ``--collection-home`` to ``--collection-size`` faces.

    Real faces first: ``facesearch index --labels folders`` on the first ``--seed-lfw`` LFW
    photos minus the known query photos (:func:`query_images`), so the collection is made the
    way users make it; then synthetic faces (:func:`synthetic_faces`,
    4 per made-up photo, identities of 10 % of them labelled ``synthetic_NNNNNNN``) in the space
    of the collection's active model, added through ``Collection.add_photos`` in batches.
    """
    from facesearch.collection import Collection
    from facesearch.store import NewPhoto
    from facesearch.types import Detection, Face

    home = Path(args.collection_home)
    t0 = time.perf_counter()
    if args.seed_lfw:
        lfw = Path(args.shared) / "data" / "lfw" / "images"
        seed, _, _ = query_images(Path(args.shared) / "data", args.seed_lfw)
        with tempfile.TemporaryDirectory(prefix="facesearch-seed-") as tmp:
            materialise(lfw, seed, Path(tmp))
            cmd = [*_facesearch_cmd(), "index", tmp, "--labels", "folders", "--home", str(home)]
            subprocess.run(cmd, check=True, env=_thread_env(args.threads, args.env))
    t_index = time.perf_counter() - t0
    coll = Collection.open(home, create=True)
    model = coll.active_model
    if model is None:
        coll.register_model("sface", DIM)
        model = coll.active_model
    assert model is not None
    have = int(coll.info(check=False).get("faces") or 0)
    n = max(0, args.collection_size - have)
    syn = synthetic_faces(n, 0, seed=7) if n else None
    det = Detection((0.0, 0.0, 10.0, 10.0), ((2.0, 3.0), (8.0, 3.0), (5.0, 5.0), (3.0, 8.0),
                                             (7.0, 8.0)), 0.99)  # fmt: skip
    per_photo, batch = 4, 20_000
    t1 = time.perf_counter()
    with coll.lock():
        for start in range(0, n, batch):
            photos = []
            for j in range(start, min(n, start + batch), per_photo):
                rows = range(j, min(n, j + per_photo))
                assert syn is not None
                labels = tuple(
                    f"synthetic_{syn.label[r]:07d}" if syn.label[r] % 10 == 0 else None
                    for r in rows
                )
                photos.append(NewPhoto(
                    path=f"synthetic/{j // per_photo:07d}.jpg", content_hash=f"{j:064x}",
                    size=0, mtime=0.0, width=10, height=10,
                    faces=tuple(Face(det, syn.xb[r], model.name) for r in rows),
                    labels=labels if any(labels) else (),
                ))  # fmt: skip
            coll.add_photos(photos)
            log.info("synthetic faces: %d / %d", min(n, start + batch), n)
    t_add = time.perf_counter() - t1
    info = coll.info(check=False)
    coll.close()
    return {"faces": info.get("faces"), "index": info.get("index"),
            "index_s": t_index, "synthetic_added": n, "synthetic_s": t_add}  # fmt: skip


# ------------------------------------------------------------------------------ part: e2e
def bench_e2e(args: argparse.Namespace) -> dict[str, Any]:
    """One-face photo queries in one process through the public Python API.

    Per query, what ``facesearch query`` does: decode (``load_image``), faces (detect, align,
    embed: ``FacePipeline.faces``) and identification (``facesearch.identify.identify_faces``:
    the ``k`` = 5 nearest faces grouped by person and the nearest labelled face for the
    verdict). The collection and the networks are loaded once, before the clock starts.
    """
    from facesearch import process

    process.tune()  # as a long-running service does, before torch is imported
    import torch

    torch.set_num_threads(args.threads)
    from facesearch.collection import Collection
    from facesearch.distance import DEFAULT_THRESHOLD
    from facesearch.identify import identify_faces
    from facesearch.image import load_image
    from facesearch.pipeline import FacePipeline, PipelineConfig

    t = time.perf_counter()
    pipe = FacePipeline(PipelineConfig(threads=args.threads))
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    coll = Collection.open(Path(args.collection_home))
    _ = coll.vectors  # load (memory-map) the index now: the first query would pay it
    open_s = time.perf_counter() - t
    stages: dict[str, list[float]] = {"decode": [], "faces": [], "identify": []}
    total: list[float] = []
    for rep in range(args.e2e_reps + 1):
        for p in args.e2e_images:
            t0 = time.perf_counter()
            img = load_image(str(p))
            t1 = time.perf_counter()
            faces = pipe.faces(img)
            t2 = time.perf_counter()
            identify_faces(coll, faces, k=5, threshold=DEFAULT_THRESHOLD)
            t3 = time.perf_counter()
            if rep:  # the first pass warms up
                total.append((t3 - t0) * 1e3)
                for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    stages[key].append(dt * 1e3)
    info = coll.info(check=False)
    coll.close()
    return {
        "collection_faces": info.get("faces"),
        "index": info.get("index", {}).get("type"),
        "pipeline_load_s": load_s,
        "open_s": open_s,
        "queries": len(total),
        "lat_median_ms": float(np.median(total)),
        "lat_p95_ms": float(np.percentile(total, 95)),
        "stages_median_ms": {k: float(np.median(v)) for k, v in stages.items()},
    }


def render_e2e(payload: dict[str, Any]) -> str:
    lines = [
        "## One-face photo query in a long-running process (Python API)",
        "",
        f"Command: `{payload['command']}`  ",
        f"Date: {payload['date']}; torch / FAISS threads {payload['threads']}.",
        "",
        "| collection faces | index | open s | queries | median ms | p95 ms | decode ms | "
        "faces ms (detect+align+embed) | identify ms (search, people) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in payload["e2e"]:
        st = e["stages_median_ms"]
        lines.append(
            f"| {e['collection_faces']:,} | {e['index']} | {e['open_s']:.2f} | {e['queries']} | "
            f"**{e['lat_median_ms']:.1f}** | {e['lat_p95_ms']:.1f} | {st['decode']:.1f} | "
            f"{st['faces']:.1f} | {st['identify']:.1f} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default="vectors,startup", help="build, vectors, startup, e2e")
    p.add_argument("--quick", action="store_true", help="10k and 100k only, fewer queries")
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--kinds", default="flat,pq,ivf", help="VectorIndex kinds (vectors part)")
    p.add_argument("--queries", type=int, default=1000, help="queries for recall")
    p.add_argument("--latency-queries", type=int, default=300, help="queries timed one by one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--faiss", action="store_true", help="also plain FAISS HNSW32 (reference)")
    p.add_argument("--faiss-max", type=int, default=100_000,
                   help="largest size for --faiss (HNSW builds slowly)")  # fmt: skip
    p.add_argument("--sweep", action="store_true", help="IVF recall / latency over nprobe")
    p.add_argument("--cli-runs", type=int, default=5)
    p.add_argument("--collection-home", type=Path, help="a collection (facesearch index --home)")
    p.add_argument(
        "--image",
        type=Path,
        help="a one-face photo for `facesearch query` (default: the first e2e one)",
    )
    p.add_argument("--e2e-images", type=Path, nargs="*", default=[], help="one-face photos")
    p.add_argument("--collection-size", type=int, default=1_000_000, help="faces (build)")
    p.add_argument(
        "--seed-lfw",
        type=int,
        default=2000,
        help="LFW photos indexed (--labels folders) before the synthetic faces",
    )
    p.add_argument("--shared", default=str(DEFAULT_SHARED), help="the shared folder (data/)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment setting for the CLI runs (repeatable)")  # fmt: skip
    p.add_argument("--e2e-reps", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print, do not record results")
    args = p.parse_args(argv)
    args.parts = [s for s in args.parts.split(",") if s]
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.kinds = [s for s in args.kinds.split(",") if s]
    if args.quick:
        args.sizes = [s for s in args.sizes if s <= 100_000]
        args.queries = min(args.queries, 300)
        args.latency_queries = min(args.latency_queries, 100)
        args.cli_runs = min(args.cli_runs, 3)
    if not args.e2e_images:  # 15 photos of people in the collection, 5 of people not in it
        _, known, unknown = query_images(Path(args.shared) / "data", args.seed_lfw)
        lfw = Path(args.shared) / "data" / "lfw" / "images"
        args.e2e_images = [lfw / r for r in known + unknown]
    if args.image is None:
        args.image = args.e2e_images[0]
    return args


def _public(argv: Sequence[str]) -> list[str]:
    """``argv`` as the results show it: a bench collection's folder (this machine's) becomes
    ``COLL_<faces>`` (built as the README says: ``--parts build``)."""
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a in ("--collection-home", "--home"):
            name = Path(out[i + 1]).name.upper()  # e.g. coll1m -> COLL1M
            out[i + 1] = name.replace("COLL", "COLL_", 1) if name.startswith("COLL") else "COLL"
    return out


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    # this process runs the in-process parts (e2e): same settings as the subprocesses
    os.environ.update({k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    os.environ.update(dict(item.partition("=")[::2] for item in args.env))
    common = {
        "command": shlex.join(["python", "bench/query_latency.py", *_public(argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": args.threads,
    }
    write = not (args.quick or args.no_write)
    if "build" in args.parts:
        if not args.collection_home:
            raise SystemExit("--parts build needs --collection-home")
        print(json.dumps(build_collection(args), indent=1))
    if "vectors" in args.parts:
        payload = {**common, **bench_vectors(args), "machine": machine(),
                   "latency_queries": args.latency_queries}  # fmt: skip
        payload["markdown"] = render_vectors(payload)
        print(payload["markdown"])
        if write:
            update_results("query", payload)
    if "startup" in args.parts:
        payload = {**common, "startup": bench_startup(args)}
        # `facesearch query` rows of other collection sizes, from earlier runs, are kept
        new = payload["startup"].get("query")
        old = _recorded("startup").get("queries", []) if write else []
        payload["queries"] = sorted(
            [q for q in old if not new or q["collection_faces"] != new["collection_faces"]]
            + ([{**new, "phases": payload["startup"]["query_phases"]}] if new else []),
            key=lambda q: q["collection_faces"] or 0,
        )
        payload["markdown"] = render_startup(payload)
        print(payload["markdown"])
        if write:
            update_results("startup", payload)
    if "e2e" in args.parts:
        if not args.collection_home or not args.e2e_images:
            raise SystemExit("--parts e2e needs --collection-home")
        row = bench_e2e(args)
        row["command"] = common["command"]
        # one row per collection size: a new run replaces the row of the same size
        old = _recorded("e2e").get("e2e", []) if write else []
        rows = [r for r in old if r.get("collection_faces") != row["collection_faces"]] + [row]
        payload = {**common, "e2e": sorted(rows, key=lambda r: r["collection_faces"] or 0)}
        payload["markdown"] = render_e2e(payload)
        print(payload["markdown"])
        if write:
            update_results("e2e", payload)


def _recorded(section: str) -> dict[str, Any]:
    path = REPO / "bench" / "results" / "speed.json"
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text()).get(section, {})
    return data


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    main()
