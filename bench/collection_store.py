"""Storage timings of a collection on synthetic unit vectors (no images, no networks).

    python bench/collection_store.py --faces 100000 --out /some/scratch/folder [--db URL]

Fills a collection with ``--faces`` faces (2 per photo, 128-d, through ``Collection.add_photos``
in batches under one writer lock), then reports, each in a fresh process state:
insert rate, index save size, the cost of opening the collection for a query (open + checked,
memory-mapped index + one 1-face search + SQL lookup), and a full rebuild from SQL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

OPEN_SNIPPET = """
import sys, time, json
t0 = time.perf_counter()
import numpy as np
from facesearch.collection import Collection
t1 = time.perf_counter()
c = Collection.open(sys.argv[1], sys.argv[2], db_url=(sys.argv[3] or None))
t2 = time.perf_counter()
v = c.vectors
t3 = time.perf_counter()
xq = np.random.default_rng(0).standard_normal((1, v.dim)).astype("float32")
xq /= np.linalg.norm(xq)
times = []
for _ in range(20):
    s = time.perf_counter(); c.search(xq, k=5); times.append(time.perf_counter() - s)
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "vectors_s": t3 - t2,
                  "first_search_s": times[0], "median_search_s": sorted(times)[10],
                  "mmapped": v.mmapped, "kind": v.kind}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=100_000)
    ap.add_argument("--out", type=Path, required=True, help="scratch folder (deleted first)")
    ap.add_argument("--db", default="", help="database URL (default: SQLite in the folder)")
    ap.add_argument("--batch", type=int, default=500, help="photos per add_photos call")
    args = ap.parse_args()

    from facesearch.collection import Collection
    from facesearch.store import NewPhoto
    from facesearch.types import Detection, Face

    shutil.rmtree(args.out, ignore_errors=True)
    rng = np.random.default_rng(0)
    col = Collection.open(args.out, "bench", db_url=args.db or None, create=True)
    det = Detection(
        (10.0, 10.0, 60.0, 70.0), ((20, 30), (40, 30), (30, 45), (22, 55), (38, 55)), 0.9
    )
    n_photos = args.faces // 2
    t0 = time.perf_counter()
    with col.lock():
        for start in range(0, n_photos, args.batch):
            m = min(args.batch, n_photos - start)
            x = rng.standard_normal((2 * m, 128)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            photos = [
                NewPhoto(
                    f"/p/{start + i}.jpg",
                    uuid.uuid4().hex * 2,
                    1000,
                    1.0,
                    640,
                    480,
                    faces=(Face(det, x[2 * i]), Face(det, x[2 * i + 1])),
                )
                for i in range(m)
            ]
            col.add_photos(photos)
        t_insert = time.perf_counter() - t0
        t1 = time.perf_counter()
    t_save = time.perf_counter() - t1
    col.close()
    index_bytes = (args.out / "bench" / "vectors.faiss").stat().st_size
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", OPEN_SNIPPET, str(args.out), "bench", args.db],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout))
    col = Collection.open(args.out, "bench", db_url=args.db or None)
    t2 = time.perf_counter()
    col.rebuild_index()
    t_rebuild = time.perf_counter() - t2
    info = col.info()
    col.close()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith("_s")}
    print(
        json.dumps(
            {
                "faces": args.faces,
                "insert_faces_per_s": round(args.faces / t_insert),
                "final_index_save_s": round(t_save, 3),
                "index_bytes": index_bytes,
                "open_for_query_median_of_3": {k: round(v, 4) for k, v in med.items()},
                "rebuild_from_sql_s": round(t_rebuild, 2),
                "consistent": info["consistency"]["consistent"],
                "size_on_disk": info["size_on_disk"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
