"""Where a ``facesearch index`` run spends its time: start-up timeline and CPU per thread.

Runs the command in this process (the same code path as the console script) on a fresh
collection, with light hooks around the indexer, and prints:

- the start-up timeline, in seconds since the process started: command parsed, indexing
  started (SQLAlchemy imported, collection created, files listed), the networks' loading
  (``import torch`` and the models) started and ended, first photo stored;
- once the first photo is stored (the steady state), the photos per second and the CPU time
  of every thread (pipeline workers, read threads, main thread) per photo.

Usage::

    python bench/index_timeline.py PHOTOS_DIR [--runs 3] [--keep-home DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any


def _process_start() -> float:
    """Wall-clock time at which this process started (Linux ``/proc``)."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def _thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of every live thread, by thread name (or id)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"thread {tid}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def one_run(photos: str, home: str, started: float) -> dict[str, Any]:
    import facesearch.cli as cli
    import facesearch.indexer as ix

    marks: dict[str, float] = {"command parsed": time.time() - started}
    state: dict[str, Any] = {}
    orig_load, orig_tick, orig_index = ix._Run.load_pipeline, ix._Run._tick, ix._index

    def load_pipeline(self: Any, *args: Any) -> None:
        marks["networks: loading starts"] = time.time() - started
        orig_load(self, *args)
        marks["networks: loaded"] = time.time() - started

    def tick(self: Any, n: int) -> None:
        if "t0" not in state:
            marks["first photo stored"] = time.time() - started
            state.update(t0=time.perf_counter(), cpu0=_thread_cpu(), done0=self.done)
        orig_tick(self, n)
        state.update(t1=time.perf_counter(), cpu1=_thread_cpu(), done1=self.done)

    def index(*args: Any, **kwargs: Any) -> None:
        marks["indexing starts (collection open, files listed)"] = time.time() - started
        orig_index(*args, **kwargs)

    ix._Run.load_pipeline, ix._Run._tick, ix._index = load_pipeline, tick, index  # type: ignore[method-assign]
    try:
        cli.main.main(
            args=["index", photos, "--home", home, "--collection", "bench"],
            standalone_mode=False,
        )
    finally:
        ix._Run.load_pipeline, ix._Run._tick, ix._index = orig_load, orig_tick, orig_index  # type: ignore[method-assign]
    marks["done"] = time.time() - started
    return {"marks": marks, **state}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("photos")
    p.add_argument("--runs", type=int, default=1, help="runs, each in a new process")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.child:
        import subprocess

        for _ in range(args.runs):
            subprocess.run([sys.executable, __file__, args.photos, "--child"], check=True)
        return
    started = _process_start()
    home = tempfile.mkdtemp(prefix="bench-timeline-")
    try:
        r = one_run(args.photos, home, started)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print("start-up, seconds since the process started:")
    for name, t in r["marks"].items():
        print(f"  {t:6.2f}  {name}")
    if "t1" in r:
        n = r["done1"] - r["done0"]
        wall = r["t1"] - r["t0"]
        print(f"after the first photo: {n} photos in {wall:.2f} s = {n / wall:.1f} photos/s")
        total = 0.0
        for name in sorted(r["cpu1"]):
            cpu = r["cpu1"][name] - r["cpu0"].get(name, 0.0)
            total += cpu
            if cpu >= 0.005:
                print(f"  {name:24s} {cpu:6.2f} CPU-s  {cpu / n * 1000:5.1f} CPU-ms/photo")
        print(f"  {'all threads':24s} {total:6.2f} CPU-s  {total / n * 1000:5.1f} CPU-ms/photo")
    sys.stdout.flush()
    os._exit(0)  # as the console script does: no module teardown


if __name__ == "__main__":
    main()
