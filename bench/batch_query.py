"""Many queries in one process: ``facesearch query IMG...`` and ``facesearch verify --pairs``.

The collection: LFW photos of people in name order, indexed with ``facesearch index`` until
``--faces`` photos (~10,000 faces), cached under ``bench/results/tmp/batch/``. The queries:
``--queries`` LFW photos not in the collection (seed 0), half of them of people in the
collection (held-out photos), half of people who are not.

Measured, as whole commands (start-up, model loading and output included):

- *one process*: ``facesearch query --json Q1 ... Q1000`` (JSON lines on stdout): photos/s;
- *a process per photo*: ``facesearch query --json Q`` for ``--singles`` of the queries, one
  after the other: the median wall time per photo, as photos/s (what the queries cost before);
- *verify, one process*: ``facesearch verify --pairs pairs.csv --json`` over the 1,000 pairs
  of LFW's ``pairsDevTest.txt`` (each photo embedded once): pairs/s.

Usage::

    python bench/batch_query.py            # recorded in bench/results/batch_query.md/.json
    python bench/batch_query.py --quick    # 2,000 faces, 100 queries, printed only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from results_io import record  # noqa: E402 - beside this script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
RESULTS = REPO / "bench" / "results"
CACHE = RESULTS / "tmp" / "batch"


def _public(arg: str) -> str:
    return f"DIR/{Path(arg).name}" if os.path.isabs(arg) else arg


def split(data: Path, faces: int, queries: int) -> tuple[list[Path], list[Path]]:
    """(the collection's person folders, the query photos)."""
    root = data / "lfw" / "images"
    people = [(d, sorted(d.glob("*.jpg"))) for d in sorted(root.iterdir()) if d.is_dir()]
    rng = random.Random(0)
    folders: list[Path] = []
    held_out: list[Path] = []  # a photo of a person in the collection, kept out of it
    count = 0
    i = 0
    while count < faces and i < len(people):
        folder, files = people[i]
        i += 1
        folders.append(folder)
        count += len(files)
    strangers = [f for _, files in people[i:] for f in files]
    known = [files[-1] for folder, files in people[:i] if len(files) >= 3]
    held_out = rng.sample(known, min(len(known), queries // 2))
    q = held_out + rng.sample(strangers, queries - len(held_out))
    rng.shuffle(q)
    return folders, q


def build(home: Path, folders: list[Path], work: Path, held_out: set[Path]) -> dict[str, Any]:
    """``facesearch index`` of a view of the collection's folders (links, held-out photos
    left out)."""
    view = work / "view"
    shutil.rmtree(view, ignore_errors=True)
    for folder in folders:
        (view / folder.name).mkdir(parents=True)
        for f in folder.glob("*.jpg"):
            if f not in held_out:
                (view / folder.name / f.name).symlink_to(f)
    t0 = time.perf_counter()
    res = subprocess.run(
        ["facesearch", "index", str(view), "--home", str(home), "--labels", "folders", "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    report = json.loads(res.stdout)
    return {"seconds": round(time.perf_counter() - t0, 1), "faces": report.get("faces_added")}


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode not in (0, 1) or not res.stdout:  # 1: some photo without a face
        raise RuntimeError(f"{shlex.join(cmd)}: exit {res.returncode}\n{res.stderr[-2000:]}")
    return time.perf_counter() - t0, res.stdout


def pairs_csv(data: Path, path: Path) -> int:
    lines = (data / "lfw" / "pairsDevTest.txt").read_text().split("\n")[1:]
    img = data / "lfw" / "images"
    rows = []
    for line in lines:
        f = line.split()
        if len(f) == 3:
            rows.append((img / f[0] / f"{f[0]}_{int(f[1]):04d}.jpg",
                         img / f[0] / f"{f[0]}_{int(f[2]):04d}.jpg"))  # fmt: skip
        elif len(f) == 4:
            rows.append((img / f[0] / f"{f[0]}_{int(f[1]):04d}.jpg",
                         img / f[2] / f"{f[2]}_{int(f[3]):04d}.jpg"))  # fmt: skip
    path.write_text("a,b\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return len(rows)


def render(r: dict[str, Any]) -> str:
    q, s, v = r["query"], r["singles"], r["verify"]
    return "\n".join(
        [
            "# Many queries in one process",
            "",
            f"Command: `{r['command']}` (load average {r['load_average']:.1f} at the start; "
            f"{os.cpu_count()} cores; default engine and threads)",
            "",
            f"Collection: {r['collection']['faces']} faces of LFW people in name order "
            f"(`facesearch index --labels folders`, {r['collection']['seconds']} s).",
            "",
            "| command | items | wall s | per second |",
            "|---|---:|---:|---:|",
            f"| `facesearch query --json Q1 ... Q{q['photos']}` (one process) | {q['photos']} "
            f"photos | {q['seconds']:.1f} | **{q['photos'] / q['seconds']:.1f}** photos/s |",
            f"| `facesearch query --json Q` (a process per photo, median of {s['photos']}) | 1 "
            f"photo | {s['median_seconds']:.2f} | {1 / s['median_seconds']:.2f} photos/s |",
            f"| `facesearch verify --pairs pairsDevTest.csv --json` (one process) | "
            f"{v['pairs']} pairs | {v['seconds']:.1f} | **{v['pairs'] / v['seconds']:.1f}** "
            "pairs/s |",
            "",
            f"One process answers {q['photos']} photos {r['speedup']:.0f}x faster than a "
            f"process per photo; {q['answered']} answered, {q['errors']} with an error "
            "(no face found).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--faces", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--singles", type=int, default=15, help="queries run a process each")
    ap.add_argument("--quick", action="store_true", help="2,000 faces, 100 queries, printed")
    args = ap.parse_args(argv)
    if args.quick:
        args.faces, args.queries, args.singles = 2000, 100, 5
    command = "python bench/batch_query.py " + shlex.join(
        _public(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    data = args.shared / "data"
    folders, queries = split(data, args.faces, args.queries)
    home = CACHE / f"lfw{args.faces}"
    stamp = home / "built.json"
    if not stamp.is_file():
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        print(f"indexing ~{args.faces} LFW faces into {home} ...", file=sys.stderr)
        stamp.write_text(json.dumps(build(home, folders, CACHE / "work", set(queries))))
    load = os.getloadavg()[0]
    home_args = ["--home", str(home)]
    seconds, out = run(["facesearch", "query", "--json", *home_args, *map(str, queries)])
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(queries), (len(rows), len(queries))
    errors = sum("error" in row for row in rows)
    singles = [
        run(["facesearch", "query", "--json", *home_args, str(p)])[0]
        for p in queries[: args.singles]
    ]
    csv = CACHE / "pairsDevTest.csv"
    n_pairs = pairs_csv(data, csv)
    v_seconds, v_out = run(["facesearch", "verify", "--pairs", str(csv), "--json"])
    assert len(v_out.splitlines()) == n_pairs
    per_single = statistics.median(singles)
    res = {
        "command": command.strip(),
        "load_average": load,
        "python": platform.python_version(),
        "collection": json.loads(stamp.read_text()),
        "query": {
            "photos": len(queries),
            "seconds": seconds,
            "answered": len(rows) - errors,
            "errors": errors,
        },  # fmt: skip
        "singles": {"photos": len(singles), "median_seconds": per_single, "seconds": singles},
        "verify": {"pairs": n_pairs, "seconds": v_seconds},
        "speedup": per_single * len(queries) / seconds,
    }
    text = render(res)
    print(text)
    if args.quick:
        return
    record("batch_query", res, text, RESULTS)


if __name__ == "__main__":
    main()
