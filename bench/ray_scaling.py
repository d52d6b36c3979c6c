"""Scaling curve of indexing on Ray: photos/s with 1 and 2 Ray workers against `facesearch index`.

Every run indexes the same copies of the first ``--photos`` LFW images (as ``speed.py``) into a
new collection, in its own process, timed as a whole (wall clock from start to exit):

* ``local``: ``facesearch index DIR`` (the pipeline's workers, one per core);
* ``ray-N``: ``facesearch index DIR --ray --ray-workers N``: ``N`` actors on a local Ray
  cluster that the command starts itself;
* ``ray-N-running``: ``facesearch index DIR --ray ADDRESS --ray-workers N`` on a cluster
  already running (started once by this script with 2 CPUs, as ``ray start`` would), so Ray's
  start-up is not in the figure.

The Ray commands run in a small wrapper process (``--driver``) that calls the command line
in-process with a timer around the Ray stage, so that it can report the driver's CPU and the
workers' clocks.

Runs are interleaved (round 1 of every system, then round 2, ...), medians reported. Each Ray
run also reports the driver's CPU time per photo (hashing, Ray's client, commits) and the
seconds from the first photo sent to Ray to the last stored (``embed s``). CPU time per photo
(the figure least disturbed by other load on a shared machine) is the local command's process
tree's, and for Ray the driver's plus the workers' processes' (their own clocks, reported by
the actors); Ray's overhead per photo is the difference. Every Ray run's stored faces
are compared with the local run's (same photos, boxes and scores; embeddings bit for bit or
within float32 rounding, see :mod:`facesearch.ray_index`).

    python bench/ray_scaling.py --runs 3            # records bench/results/scale.{md,json}
    python bench/ray_scaling.py --photos 8000 --systems local,ray-2,ray-2-running \
        --record scale_8000                         # a longer run: fixed costs amortised
    python bench/ray_scaling.py --quick             # 200 photos, 1 run, printed only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import (  # noqa: E402
    DEFAULT_SHARED,
    _atomic_write,
    _facesearch_cmd,
    lfw_selection,
    machine,
    materialise,
)

RESULTS = Path(__file__).resolve().parent / "results"


def _driver(args: argparse.Namespace) -> None:
    """One Ray run (in its own process): ``facesearch index --ray``, then a JSON line of its
    timings on stdout."""
    from facesearch import ray_index
    from facesearch.cli import main as cli

    marks: dict[str, float] = {}
    real = ray_index._RayRun.embed_on_ray
    cpu: dict[str, float] = {}
    photos: list[int] = []

    def timed(self: Any) -> None:
        marks["embed_start"] = time.monotonic()
        real(self)
        marks["embed_end"] = time.monotonic()
        photos.append(len(self.to_embed))
        if self.worker_cpu is not None:
            cpu["work_s"] = self.worker_cpu.work_s
            cpu["worker_process_s"] = self.worker_cpu.process_s
            cpu["worker_busy_s"] = self.worker_cpu.busy_s
            cpu["workers_seen"] = self.worker_cpu.workers
            cpu["first_call_s"] = self.worker_cpu.first_call_s
            cpu["calls_s"] = self.worker_cpu.calls_s

    ray_index._RayRun.embed_on_ray = timed  # type: ignore[method-assign]
    cmd = ["index", str(args.photos_dir), "--home", str(args.home), "--collection", "bench"]
    cmd += ["--ray", args.address or "local", "--ray-workers", str(args.workers)]
    cpu0 = time.process_time()
    cli(cmd, standalone_mode=False)
    out = {
        "photos": sum(photos),
        "driver_cpu_s": time.process_time() - cpu0,
        "embed_s": marks.get("embed_end", 0.0) - marks.get("embed_start", 0.0),
        **cpu,
    }
    print(json.dumps(out))


def _stored(home: Path) -> dict[str, Any]:
    """``path -> (faces' boxes and scores, embeddings)`` of the collection ``bench``."""
    import numpy as np
    from sqlalchemy import select

    from facesearch import store as st
    from facesearch.collection import Collection

    with Collection.open(home, "bench") as col, col.session() as s:
        rows = s.execute(
            select(
                st.Photo.path,
                st.FaceRow.x1,
                st.FaceRow.y1,
                st.FaceRow.x2,
                st.FaceRow.y2,
                st.FaceRow.score,
                st.FaceRow.embedding,
            )
            .join(st.FaceRow, st.FaceRow.photo_id == st.Photo.id)
            .order_by(st.Photo.path, st.FaceRow.id)
        ).all()
    out: dict[str, Any] = {}
    for r in rows:
        boxes, xb = out.setdefault(r[0], ([], []))
        boxes.append(tuple(r[1:6]))
        xb.append(np.frombuffer(r[6], "<f4"))
    return out


def _compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    same_faces = a.keys() == b.keys() and all(a[p][0] == b[p][0] for p in a)
    diffs = [float(np.abs(np.array(a[p][1]) - np.array(b[p][1])).max()) for p in a if p in b]
    return {
        "same_faces": same_faces,
        "bit_equal_embeddings": same_faces and max(diffs, default=0.0) == 0.0,
        "max_abs_embedding_difference": max(diffs, default=0.0),
    }


def _run(system: str, photos_dir: Path, work: Path, address: str | None) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"{system}.", dir=work))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if system == "local":
        cmd = [
            *_facesearch_cmd(),
            "index",
            str(photos_dir),
            "--home",
            str(home),
            "--collection",
            "bench",
            "--json",
        ]
    else:
        workers = system.split("-")[1]
        cmd = [
            sys.executable,
            __file__,
            "--driver",
            "--workers",
            workers,
            "--photos-dir",
            str(photos_dir),
            "--home",
            str(home),
        ]
        if system.endswith("running"):
            cmd += ["--address", str(address)]
    load = os.getloadavg()[0]
    cpu0 = os.times()
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    cpu1 = os.times()
    cpu = cpu1.children_user + cpu1.children_system - cpu0.children_user - cpu0.children_system
    if proc.returncode:
        raise SystemExit(f"{system} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    info = (
        json.loads(proc.stdout[proc.stdout.find("{") :])
        if system == "local"
        else json.loads(line[-1])
    )
    photos = int(info.get("photos", info.get("new", 0) + info.get("failed", 0)))
    return {
        "system": system,
        "wall_s": wall,
        "photos": photos,
        "load": load,
        "photos_per_s": photos / wall,
        "cpu_s": cpu,
        "home": str(home),
        **{
            k: info[k]
            for k in (
                "driver_cpu_s",
                "embed_s",
                "work_s",
                "worker_process_s",
                "worker_busy_s",
                "workers_seen",
                "first_call_s",
                "calls_s",
            )
            if k in info
        },
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    p.add_argument("--photos", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--systems", default="local,ray-1,ray-2,ray-1-running,ray-2-running")
    p.add_argument("--quick", action="store_true", help="200 photos, 1 run, nothing recorded")
    p.add_argument(
        "--record", default="scale", help="results file name: bench/results/NAME.{md,json}"
    )
    p.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--address", default=None, help=argparse.SUPPRESS)
    p.add_argument("--photos-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.driver:
        _driver(args)
        return
    if args.quick:
        args.photos, args.runs = 200, 1
    systems = args.systems.split(",")
    import ray

    with tempfile.TemporaryDirectory(prefix="ray-scaling.") as tmp:
        work = Path(tmp)
        photos_dir = work / "photos"
        materialise(
            args.shared / "data" / "lfw" / "images",
            lfw_selection(args.shared / "data", args.photos),
            photos_dir,
        )
        address = None
        if any(s.endswith("running") for s in systems):
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                object_store_memory=256 << 20,
                log_to_driver=False,
            )
            address = str(ray.get_runtime_context().gcs_address)
        runs: list[dict[str, Any]] = []
        try:
            for rnd in range(args.runs):
                for system in systems:
                    r = _run(system, photos_dir, work, address)
                    r["round"] = rnd
                    runs.append(r)
                    print(
                        f"round {rnd + 1} {system}: {r['photos_per_s']:.1f} photos/s "
                        f"({r['wall_s']:.1f} s, load {r['load']:.1f})",
                        file=sys.stderr,
                    )
            reference = _stored(Path(next(r["home"] for r in runs if r["system"] == "local")))
            agreement = {
                s: _compare(
                    _stored(Path(next(r["home"] for r in runs if r["system"] == s))), reference
                )
                for s in systems
                if s != "local"
            }
        finally:
            if address is not None:
                ray.shutdown()
    summary: dict[str, Any] = {}
    for s in systems:
        mine = [r for r in runs if r["system"] == s]
        rates = [r["photos_per_s"] for r in mine]

        def per_photo(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.median(1000 * r[key] / r["photos"] for r in mine)

        v: dict[str, Any] = {
            "photos_per_s": statistics.median(rates),
            "runs": [round(x, 2) for x in rates],
            "wall_s": statistics.median(r["wall_s"] for r in mine),
        }
        if s == "local":  # one process tree, reaped by this one: its CPU is all counted
            v["cpu_ms_per_photo"] = per_photo("cpu_s")
            v["cores_used"] = statistics.median(r["cpu_s"] / r["wall_s"] for r in mine)
        else:  # the driver's and the workers' own clocks (Ray's raylet and GCS not counted)
            for r in mine:
                r["ray_cpu_s"] = r["driver_cpu_s"] + r["worker_process_s"]
            v["cpu_ms_per_photo"] = per_photo("ray_cpu_s")
            v["driver_cpu_ms_per_photo"] = per_photo("driver_cpu_s")
            v["worker_work_cpu_ms_per_photo"] = per_photo("work_s")
            v["worker_process_cpu_ms_per_photo"] = per_photo("worker_process_s")
            v["embed_photos_per_s"] = statistics.median(
                r["photos"] / r["embed_s"] for r in mine if r["embed_s"] > 0
            )
            # while embedding: cores the workers' processes used, the share of the stage they
            # were inside a call (had work), and the share of a core a call got
            timed = [r for r in mine if r["embed_s"] > 0 and r.get("worker_busy_s")]
            if timed:
                v["cores_used"] = statistics.median(
                    r["worker_process_s"] / r["embed_s"] for r in timed
                )
                v["first_call_s"] = statistics.median(r["first_call_s"] for r in timed)
                v["worker_busy"] = statistics.median(
                    r["worker_busy_s"] / (r["workers_seen"] * r["calls_s"]) for r in timed
                )
                v["core_share_in_calls"] = statistics.median(
                    r["work_s"] / r["worker_busy_s"] for r in timed
                )
        summary[s] = v
    local = summary.get("local")
    for s, v in summary.items():
        if local and s != "local":
            v["ratio_to_local"] = v["photos_per_s"] / local["photos_per_s"]
            v["overhead_cpu_ms_per_photo"] = v["cpu_ms_per_photo"] - local["cpu_ms_per_photo"]
    payload = {
        "command": "python bench/ray_scaling.py "
        + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("/")
        ),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "photos": args.photos,
        "machine": machine(),
        "summary": summary,
        "agreement": agreement,
        "loads": [round(r["load"], 2) for r in runs],
    }
    print(json.dumps(payload, indent=1))
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        _atomic_write(RESULTS / f"{args.record}.json", json.dumps(payload, indent=2) + "\n")
        _atomic_write(RESULTS / f"{args.record}.md", render(payload))


def render(r: dict[str, Any]) -> str:
    lines = [
        "# Indexing on Ray: the scaling curve on this machine",
        "",
        f"Command: `{r['command']}`  ",
        f"Date: {r['date']}. {r['machine']['cpu']}, {r['machine']['cores']} cores, shared with "
        f"other work (load averages at the start of the runs: {r['loads']}). "
        f"{r['photos']} LFW photos; whole processes, medians of the runs.",
        "",
        "| system | photos/s | runs | wall s | / local | photos/s while embedding | CPU ms/photo "
        "| overhead CPU ms/photo | driver | workers: networks | workers: process "
        "| cores used | first call s | workers in calls | core share in calls |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, v in r["summary"].items():

        def f(key: str, nd: int = 1, v: dict[str, Any] = v) -> str:
            return f"{v[key]:.{nd}f}" if key in v else "–"

        lines.append(
            f"| {s} | {v['photos_per_s']:.1f} | {v['runs']} | {v['wall_s']:.1f} | "
            f"{f('ratio_to_local', 2)} | {f('embed_photos_per_s')} | {f('cpu_ms_per_photo')} | "
            f"{f('overhead_cpu_ms_per_photo')} | {f('driver_cpu_ms_per_photo')} | "
            f"{f('worker_work_cpu_ms_per_photo')} | {f('worker_process_cpu_ms_per_photo')} | "
            f"{f('cores_used', 2)} | {f('first_call_s')} | {f('worker_busy', 2)} | "
            f"{f('core_share_in_calls', 2)} |"
        )
    lines += [
        "",
        "CPU ms/photo: the local command's process tree; for Ray the driver's CPU plus the "
        "workers' processes from their first batch to their last (their start-up, Ray's raylet "
        "and GCS not counted). *workers: networks* is the CPU of the calls themselves (read, "
        "decode, detect, align, embed); *workers: process* adds Ray's threads in the workers. "
        "*cores used*: the local command's CPU over its wall time; for Ray the workers' "
        "processes' CPU over the Ray stage. *first call s*: from the start of the Ray stage "
        "to the first call (cluster, actors and their networks starting). *workers in calls*: "
        "from the first call to the end of the last, the share of the time the workers spent "
        "inside a call (had a batch); *core share in calls*: the CPU a call got "
        "over its wall time (below 1: the core was taken by other processes).",
    ]
    lines += ["", "Stored faces against the local run's:", ""]
    for s, a in r["agreement"].items():
        lines.append(
            f"- {s}: same photos, boxes and scores: {a['same_faces']}; embeddings bit for bit: "
            f"{a['bit_equal_embeddings']} "
            f"(max |difference| {a['max_abs_embedding_difference']:.2g})"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
