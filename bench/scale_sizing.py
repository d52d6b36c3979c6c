"""Bytes per face, measured, for sizing 10M and 1B faces (docs/scale.md).

On synthetic SFace-like unit vectors (128-d: people > photos, one face per photo), no networks:

* **SQL**: a collection filled through ``Collection.add_photos`` (one photo + one face per row
  pair, plausible boxes and landmarks) to ``--faces`` faces; database bytes per face from the
  growth between half and all of them (so fixed overhead is left out). SQLite always; PostgreSQL
  with ``--pg URL`` (a private schema, dropped after).
* **Vectors**: FAISS ``flat`` (the collection's exact index), the ``pq`` accelerator (32-byte
  fast-scan codes, as :mod:`facesearch.vectors` builds it) and ``IVF-PQ`` (``IVF{nlist},PQ32``,
  8-bit codes: the usual billion-scale layout), serialised, bytes per vector from the growth;
  recall@10 of IVF-PQ against exact search on perturbed copies of stored faces.
* **Milvus**: a milvus-lite folder (FLAT) holding the same vectors: bytes per vector on disk, and
  one-query search latency.

    python bench/scale_sizing.py --faces 100000 [--pg postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import _atomic_write, machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
D = 128


def face_like(n: int, seed: int, per: int = 10) -> np.ndarray:
    """``(n, 128) float32`` unit vectors: people, each with ``per`` noisy photos."""
    rng = np.random.default_rng(seed)
    people = rng.standard_normal((n // per + 1, D)).astype(np.float32)
    people /= np.linalg.norm(people, axis=1, keepdims=True)
    x = people[np.arange(n) // per] + 0.7 * rng.standard_normal((n, D)).astype(
        np.float32
    ) / np.sqrt(D)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _db_bytes(col: Any) -> int:
    """The server's table bytes, or the SQLite files' (database and write-ahead log)."""
    on_server = col.info(check=False)["database_bytes"]
    if on_server is not None:
        return int(on_server)
    return sum(p.stat().st_size for p in col.folder.glob("faces.db*"))


def sql_bytes(xb: np.ndarray, home: Path, db_url: str | None) -> dict[str, Any]:
    """Database bytes at half and all of ``xb`` stored as one-face photos."""
    from facesearch import store as st
    from facesearch.collection import Collection
    from facesearch.types import Detection, Face

    rng = np.random.default_rng(7)
    n = len(xb)
    sizes = {}
    started = time.monotonic()
    with Collection.open(home, "sizing", db_url=db_url, create=True) as col, col.lock():
        col.register_model("sface", D)
        for s in range(0, n, 1000):
            photos = []
            for i in range(s, min(n, s + 1000)):
                x, y = rng.uniform(0, 800, 2)
                w = rng.uniform(60, 300)
                lm = tuple(
                    (float(x + w * a), float(y + w * b))
                    for a, b in ((0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8))
                )
                det = Detection(
                    (float(x), float(y), float(x + w), float(y + w * 1.2)),
                    lm,
                    float(rng.uniform(0.6, 1.0)),
                )
                photos.append(
                    st.NewPhoto(
                        path=f"/archive/{i // 1000:05d}/IMG_{i:08d}.jpg",
                        content_hash=uuid.uuid4().hex * 2,
                        size=int(rng.integers(50_000, 5_000_000)),
                        mtime=1.7e9 + i,
                        width=4000,
                        height=3000,
                        faces=(Face(det, xb[i], "sface"),),
                    )
                )
            col.add_photos(photos)
            if s + 1000 == n // 2:
                sizes["half"] = _db_bytes(col)
        sizes["all"] = _db_bytes(col)
    per_face = (sizes["all"] - sizes["half"]) / (n - n // 2)
    return {
        "faces": n,
        "database_bytes": sizes["all"],
        "bytes_per_face": per_face,
        "fill_s": time.monotonic() - started,
    }


def faiss_bytes(xb: np.ndarray) -> dict[str, Any]:
    import faiss

    from facesearch.vectors import VectorIndex

    n = len(xb)
    out: dict[str, Any] = {}
    half = n // 2
    ids = np.arange(n, dtype=np.int64)
    for kind in ("flat", "pq"):
        sizes = []
        for m in (half, n):
            vi = VectorIndex.build(ids[:m], xb[:m], kind)
            main = len(faiss.serialize_index(vi._index))
            side = len(faiss.serialize_index(vi._pq)) if vi._pq is not None else 0
            sizes.append(main + side)
        out[kind] = {"bytes": sizes[1], "bytes_per_vector": (sizes[1] - sizes[0]) / (n - half)}
    nlist = 1024
    sizes = []
    faiss.omp_set_num_threads(1)
    index = None
    for m in (half, n):
        index = faiss.index_factory(D, f"IVF{nlist},PQ32", faiss.METRIC_INNER_PRODUCT)
        index.train(xb[: min(m, 50 * nlist)])
        index.add(xb[:m])
        sizes.append(len(faiss.serialize_index(index)))
    assert index is not None
    rng = np.random.default_rng(3)
    xq = xb[rng.choice(n, 500, replace=False)] + 0.7 * rng.standard_normal((500, D)).astype(
        np.float32
    ) / np.sqrt(D)
    xq = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
    _, exact = faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)
    recalls = {}
    for nprobe in (16, 64):
        index.nprobe = nprobe
        _, got = index.search(xq, 10)
        recalls[nprobe] = float(
            np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(got, exact, strict=True)])
        )
    out["ivf_pq"] = {
        "factory": f"IVF{nlist},PQ32",
        "bytes": sizes[1],
        "bytes_per_vector": (sizes[1] - sizes[0]) / (n - half),
        "recall_at_10": recalls,
    }
    return out


def milvus_bytes(xb: np.ndarray, folder: Path) -> dict[str, Any]:
    from facesearch.milvus_vectors import MilvusVectors

    n, half = len(xb), len(xb) // 2
    ids = np.arange(n, dtype=np.int64)

    def size() -> int:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    with MilvusVectors.open(str(folder), dim=D, model="sface") as mv:
        started = time.monotonic()
        mv.rebuild([(ids[:half], xb[:half])], generation=1)
        mv._client.flush(mv._physical)
        s_half = size()
        mv.add(ids[half:], xb[half:])
        mv._client.flush(mv._physical)
        fill = time.monotonic() - started
        s_all = size()
        times = []
        for q in range(20):
            t = time.perf_counter()
            mv.search(xb[q : q + 1], 10)
            times.append(time.perf_counter() - t)
    return {
        "vectors": n,
        "bytes": s_all,
        "bytes_per_vector": (s_all - s_half) / (n - half),
        "fill_s": fill,
        "search_ms_median": 1000 * statistics.median(times),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--faces", type=int, default=100_000)
    p.add_argument("--pg", default=None, help="PostgreSQL URL (a private schema is used)")
    args = p.parse_args()
    xb = face_like(args.faces, seed=1)
    res: dict[str, Any] = {
        "command": "python bench/scale_sizing.py --faces "
        f"{args.faces}" + (" --pg URL" if args.pg else ""),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="scale-sizing.") as tmp:
        res["sqlite"] = sql_bytes(xb, Path(tmp) / "sqlite", None)
        print("sqlite", res["sqlite"], file=sys.stderr)
        if args.pg:
            schema = f"sizing_{uuid.uuid4().hex[:8]}"
            import sqlalchemy as sa

            engine = sa.create_engine(args.pg)
            with engine.begin() as con:
                con.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            url = sa.engine.make_url(args.pg).update_query_dict(
                {"options": f"-csearch_path={schema}"}
            )
            try:
                res["postgresql"] = sql_bytes(
                    xb, Path(tmp) / "pg", url.render_as_string(hide_password=False)
                )
                print("postgresql", res["postgresql"], file=sys.stderr)
            finally:
                with engine.begin() as con:
                    con.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        res["faiss"] = faiss_bytes(xb)
        print("faiss", res["faiss"], file=sys.stderr)
        res["milvus_lite"] = milvus_bytes(xb, Path(tmp) / "milvus.db")
        print("milvus", res["milvus_lite"], file=sys.stderr)
    print(json.dumps(res, indent=1))
    RESULTS.mkdir(exist_ok=True)
    _atomic_write(RESULTS / "scale_sizing.json", json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
