"""Indexing speed of facesearch side by side with OpenCV and dlib, on the same photos.

One run measures every system end to end (decode, detect, align, embed every face; for
``facesearch index`` also storing into a fresh collection) on the same input files, with the same
thread count, each system in its own subprocess so that its peak memory (RSS high-water mark) is
its own. Each figure is the median of ``--runs`` runs; the runs are interleaved (run 1 of every
system, then run 2, ...) so that a slow period of the machine hits every system alike.

Systems (``--systems``):

* ``facesearch-index``: the ``facesearch index DIR`` command into a fresh collection
  (``--home`` a temporary folder), timed as a whole process: start-up, model loading, decode,
  detect, align, embed, store;
* ``facesearch``: the Python API in one process, the bulk way: ``load_image`` then
  ``FacePipeline(PipelineConfig(threads=T)).faces_batch(images)`` over ``--batch`` (16) photos at
  a time (as ``facesearch index`` batches them; decoding is not overlapped here);
* ``facesearch-single``: the Python API photo by photo (``faces_batch([image])``, i.e.
  ``faces(image)``), as a script calling it in a loop would;
* ``opencv``: ``cv2.FaceDetectorYN`` + ``cv2.FaceRecognizerSF`` (``bench/alternatives.py``);
* ``dlib``: the ``face_recognition`` pipeline (``bench/alternatives.py``).

For the in-process systems the worker times model loading and processing separately;
photos/s is ``photos / processing time``. The whole-process wall time (interpreter start-up
included) is reported beside it, and it is the figure that compares with the CLI.

Input sets (``--sets``), copied into one temporary folder that every system reads:

* ``lfw``: the first ``--lfw-count`` (2,000) LFW images in byte-wise sorted order of their path
  relative to ``lfw/images`` (``AJ_Cook/AJ_Cook_0001.jpg`` ...
  ``Chris_Cookson/Chris_Cookson_0001.jpg``);
* ``photos``: every image file under ``photos/`` and ``groups/`` (including ``groups/dlib/``),
  sorted: 167 photos, up to 13 MP.

``--memory`` instead measures the peak memory of ``facesearch index`` on 1,000 and 10,000 LFW
photos (issue 6: it must stay flat).

Usage::

    python bench/speed.py --quick                 # smoke run, ~2 minutes
    python bench/speed.py --runs 3                # the full comparison
    python bench/speed.py --memory                # peak memory at 1k / 10k photos

Results are merged into ``bench/results/speed.json`` (one section per measurement) and
``bench/results/speed.md`` is re-rendered from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench.speed")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
RESULTS = REPO / "bench" / "results"
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm",
    ".heic", ".heif",
}  # fmt: skip
ALL_SYSTEMS = ("facesearch-index", "facesearch", "facesearch-single", "opencv", "dlib")
DEFAULT_SYSTEMS = ("facesearch-index", "facesearch", "opencv", "dlib")


# ------------------------------------------------------------------------------ inputs
def lfw_selection(data: Path, count: int) -> list[str]:
    """The first ``count`` LFW images: relative paths under ``lfw/images``, byte-wise sorted."""
    root = data / "lfw" / "images"
    rel = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg"))
    if len(rel) < count:
        raise SystemExit(f"{root}: {len(rel)} images, {count} asked for")
    return rel[:count]


def photos_selection(data: Path) -> list[str]:
    """Every image under ``photos/`` and ``groups/``: relative paths under ``data``, sorted."""
    rel = [
        p.relative_to(data).as_posix()
        for sub in ("photos", "groups")
        for p in (data / sub).rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(rel)


def quick_subset(rel: Sequence[str], n: int) -> list[str]:
    """``n`` paths spread evenly over ``rel`` (keeps the mix of sizes of a set)."""
    if len(rel) <= n:
        return list(rel)
    step = len(rel) / n
    return [rel[int(i * step)] for i in range(n)]


def materialise(src_root: Path, rel: Sequence[str], dst: Path) -> list[str]:
    """Copy ``rel`` files from ``src_root`` into ``dst`` (same relative layout); absolute paths.

    Every system reads these copies, which were just written and so sit in the page cache:
    no system pays a cold read that another does not.
    """
    out = []
    for r in rel:
        target = dst / r
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_root / r, target)
        out.append(str(target))
    return out


# ------------------------------------------------------------------------------ worker
def _thread_env(threads: int, extra: Sequence[str] = ()) -> dict[str, str]:
    """The environment of every system: ``threads`` for OpenMP/MKL/OpenBLAS, plus ``extra``
    ``KEY=VALUE`` settings (``--env``)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["OPENCV_LOG_LEVEL"] = "ERROR"
    env.setdefault("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env["PYTHONPATH"]]))
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def _make_system(name: str, threads: int, weights: Path, batch: int) -> Any:
    """The system under test, models loaded: an object with ``process_all(paths)``."""
    if name in ("facesearch", "facesearch-single"):
        from facesearch import process

        process.tune()  # as a service embedding photos does (before torch is imported)
        import torch

        from facesearch.image import load_image
        from facesearch.pipeline import FacePipeline, PipelineConfig

        torch.set_num_threads(threads)
        pipe = FacePipeline(PipelineConfig(threads=threads))
        per_call = 1 if name == "facesearch-single" else batch

        class _Facesearch:
            def process_all(self, paths: Sequence[str]) -> tuple[list[np.ndarray], int]:
                out: list[np.ndarray] = []
                failed = 0
                for i in range(0, len(paths), per_call):
                    images = []
                    for p in paths[i : i + per_call]:
                        try:
                            images.append(load_image(p))
                        except Exception as exc:  # noqa: BLE001 - count and go on
                            log.warning("%s: %s", p, exc)
                            failed += 1
                    for faces in pipe.faces_batch(images):
                        out.append(
                            np.stack([f.embedding for f in faces])
                            if faces
                            else np.zeros((0, 128), np.float32)
                        )
                return out, failed

        return _Facesearch()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from alternatives import DlibPipeline, OpenCVPipeline

    system = OpenCVPipeline(weights, threads=threads) if name == "opencv" else DlibPipeline()

    class _Alt:
        def process_all(self, paths: Sequence[str]) -> tuple[list[np.ndarray], int]:
            out: list[np.ndarray] = []
            failed = 0
            for p in paths:
                try:
                    out.append(system.process(p))
                except Exception as exc:  # noqa: BLE001 - count and go on
                    log.warning("%s: %s", p, exc)
                    failed += 1
            return out, failed

    return _Alt()


def worker(args: argparse.Namespace) -> None:
    """Run one system over the listed files; write timings (and embeddings) to ``--result``."""
    t0 = time.perf_counter()
    paths = Path(args.list).read_text().splitlines()
    system = _make_system(args.worker, args.threads, Path(args.weights), args.batch)
    t1, c1 = time.perf_counter(), time.process_time()
    embeddings, failed = system.process_all(paths)
    t2, c2 = time.perf_counter(), time.process_time()
    result = {
        "load_s": t1 - t0,
        "process_s": t2 - t1,
        "process_cpu_s": c2 - c1,
        "photos": len(paths),
        "failed": failed,
        "faces": int(sum(len(e) for e in embeddings)),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.result).write_text(json.dumps(result))
    if args.embeddings:
        np.savez(
            args.embeddings,
            counts=np.array([len(e) for e in embeddings], np.int64),
            xb=np.concatenate(embeddings) if embeddings else np.zeros((0, 128), np.float32),
        )


# ------------------------------------------------------------------------------ parent
@dataclass
class Run:
    """One run of one system on one input set."""

    system: str
    inputs: str
    photos: int
    faces: int
    failed: int
    wall_s: float  # whole process, start to exit
    process_s: float  # decode..embed (in-process systems) or wall_s (CLI)
    load_s: float | None
    peak_rss_mb: float
    loadavg: float
    cpu_s: float  # CPU time (user + sys, all threads) of the whole process
    process_cpu_s: float | None  # CPU time of decode..embed (in-process systems)

    @property
    def photos_per_s(self) -> float:
        return self.photos / self.process_s

    @property
    def faces_per_s(self) -> float:
        return self.faces / self.process_s


def run_measured(
    cmd: Sequence[str], env: dict[str, str], log_path: Path, stdout_path: Path | None = None
) -> tuple[float, float, int, float]:
    """Run ``cmd``; ``(wall s, peak RSS MB of its process tree, exit status, CPU s)``.

    stderr is appended to ``log_path``, stdout too unless ``stdout_path`` is given.

    Peak RSS is the larger of the child's ``ru_maxrss`` (from ``wait4``: the high-water mark of
    that very process) and the peak of the summed RSS of the child and its descendants sampled
    every 0.2 s (in case the child spawns worker processes; descendants are listed once a
    second: listing scans /proc and would cost the measured process CPU time).
    """
    import psutil

    with contextlib.ExitStack() as stack:
        logf = stack.enter_context(open(log_path, "ab"))
        outf = stack.enter_context(open(stdout_path, "wb")) if stdout_path else logf
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=outf, stderr=logf)
        peak = [0.0]
        done = threading.Event()

        def sample() -> None:
            try:
                ps = psutil.Process(proc.pid)
                kids: list[Any] = []
                tick = 0
                while not done.is_set():
                    try:
                        if tick % 5 == 0:
                            kids = ps.children(recursive=True)
                        rss = ps.memory_info().rss
                        for c in kids:
                            with contextlib.suppress(psutil.Error):
                                rss += c.memory_info().rss
                        peak[0] = max(peak[0], rss / 2**20)
                    except psutil.Error:
                        pass
                    tick += 1
                    done.wait(0.2)
            except psutil.Error:
                pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return wall, max(usage.ru_maxrss / 1024, peak[0]), proc.returncode, cpu


def _facesearch_cmd() -> list[str]:
    script = Path(sys.executable).with_name("facesearch")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from facesearch.cli import main; main()"]


def index_report(stdout: str) -> dict[str, Any]:
    """The JSON report of ``facesearch index --json`` (``{}`` when there is none)."""
    start = stdout.find("{")
    with contextlib.suppress(json.JSONDecodeError):
        report = json.loads(stdout[start:]) if start >= 0 else {}
        return report if isinstance(report, dict) else {}
    return {}


def measure_once(
    system: str,
    inputs: str,
    paths: list[str],
    root: Path,
    work: Path,
    args: argparse.Namespace,
    keep_embeddings: bool,
) -> Run:
    env = _thread_env(args.threads, args.env)
    logp = work / "logs" / f"{system}-{inputs}.log"
    logp.parent.mkdir(exist_ok=True)
    loadavg = os.getloadavg()[0]
    if system == "facesearch-index":
        home = work / "home"
        shutil.rmtree(home, ignore_errors=True)
        cmd = [*_facesearch_cmd(), "index", str(root), "--home", str(home), "--json",
               *args.index_args]  # fmt: skip
        outp = work / f"{system}-{inputs}.out"
        wall, peak, status, cpu = run_measured(cmd, env, logp, stdout_path=outp)
        if status != 0:
            raise RuntimeError(f"{shlex.join(cmd)} exited with {status}; see {logp}")
        rep = index_report(outp.read_text())
        faces = int(rep.get("faces_added", -1))
        return Run(system, inputs, len(paths), faces, int(rep.get("failed", 0)),
                   wall, wall, None, peak, loadavg, cpu, None)  # fmt: skip
    listf = work / f"{inputs}.txt"
    listf.write_text("\n".join(paths))
    resf = work / f"{system}-{inputs}.json"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", system, "--list", str(listf),
        "--threads", str(args.threads), "--weights", str(args.weights), "--batch",
        str(args.batch), "--result", str(resf),
    ]  # fmt: skip
    if keep_embeddings:
        cmd += ["--embeddings", str(work / f"emb-{system}-{inputs}.npz")]
    wall, peak, status, cpu = run_measured(cmd, env, logp)
    if status != 0:
        raise RuntimeError(f"{system} worker exited with {status}; see {logp}")
    r = json.loads(resf.read_text())
    return Run(system, inputs, r["photos"], r["faces"], r["failed"], wall, r["process_s"],
               r["load_s"], peak, loadavg, cpu, r["process_cpu_s"])  # fmt: skip


def agreement(work: Path, inputs: str, a: str, b: str) -> dict[str, Any] | None:
    """How alike systems ``a`` and ``b`` embed the same photos (first run's embeddings).

    On photos where both found exactly one face: the cosine of the two embeddings (median,
    1st percentile, minimum) and the number of photos compared; plus photos whose face count
    differs.
    """
    fa, fb = work / f"emb-{a}-{inputs}.npz", work / f"emb-{b}-{inputs}.npz"
    if not (fa.exists() and fb.exists()):
        return None
    ea, eb = np.load(fa), np.load(fb)
    ca, cb = ea["counts"], eb["counts"]
    if len(ca) != len(cb):
        return None
    oa, ob = np.concatenate([[0], np.cumsum(ca)]), np.concatenate([[0], np.cumsum(cb)])
    cos = [float(ea["xb"][oa[i]] @ eb["xb"][ob[i]]) for i in range(len(ca)) if ca[i] == cb[i] == 1]
    if not cos:
        return None
    return {
        "photos_compared": len(cos),
        "cos_median": float(np.median(cos)),
        "cos_p1": float(np.percentile(cos, 1)),
        "cos_min": float(np.min(cos)),
        "photos_with_other_face_count": int(np.sum(ca != cb)),
    }


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Median figures per (input set, system), and the facesearch / alternative ratios."""
    out: dict[str, Any] = {}
    for inputs in dict.fromkeys(r.inputs for r in runs):
        sect: dict[str, Any] = {}
        for system in dict.fromkeys(r.system for r in runs if r.inputs == inputs):
            rs = [r for r in runs if r.inputs == inputs and r.system == system]
            loads = [r.load_s for r in rs if r.load_s is not None]
            sect[system] = {
                "runs": len(rs),
                "photos": rs[0].photos,
                "faces": statistics.median(r.faces for r in rs),
                "failed": rs[0].failed,
                "photos_per_s": statistics.median(r.photos_per_s for r in rs),
                "faces_per_s": statistics.median(r.faces_per_s for r in rs),
                "photos_per_s_wall": statistics.median(r.photos / r.wall_s for r in rs),
                "wall_s": statistics.median(r.wall_s for r in rs),
                "load_s": statistics.median(loads) if loads else None,
                "peak_rss_mb": statistics.median(r.peak_rss_mb for r in rs),
                "cpu_ms_per_photo": statistics.median(
                    1e3 * (r.process_cpu_s if r.process_cpu_s is not None else r.cpu_s) / r.photos
                    for r in rs
                ),
                "photos_per_s_all": [round(r.photos_per_s, 3) for r in rs],
            }
        ratios: dict[str, float] = {}
        for fs in ("facesearch-index", "facesearch", "facesearch-single"):
            for alt in ("opencv", "dlib"):
                if fs in sect and alt in sect:
                    # CLI vs whole alternative process (both pay start-up and model loading);
                    # in-process API vs the alternative's processing time.
                    key = "photos_per_s_wall" if fs == "facesearch-index" else "photos_per_s"
                    ratios[f"{fs}/{alt}"] = sect[fs][key] / sect[alt][key]
        sect["ratios"] = ratios
        out[inputs] = sect
    return out


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("cv2", "dlib", "faiss", "numpy"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    return {"cpu": cpu, "cores": os.cpu_count(), "versions": versions}


def update_results(section: str, payload: dict[str, Any], out_dir: Path = RESULTS) -> None:
    """Merge ``payload`` as ``section`` into ``speed.json`` and re-render ``speed.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jf = out_dir / "speed.json"
    allres = json.loads(jf.read_text()) if jf.exists() else {}
    # No path of the machine goes into the repo: the shared folder is written as its default.
    text = json.dumps(payload)
    for shared in {str(DEFAULT_SHARED), str(DEFAULT_SHARED.resolve())}:
        text = text.replace(f" --shared {shared}", "").replace(shared, "../shared")
    allres[section] = json.loads(text)
    _atomic_write(jf, json.dumps(allres, indent=2, sort_keys=True) + "\n")
    _atomic_write(out_dir / "speed.md", render_markdown(allres))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _f(x: float | None, nd: int = 1) -> str:
    return "–" if x is None else f"{x:,.{nd}f}"


def render_markdown(allres: dict[str, Any]) -> str:
    """``speed.md`` from the merged results (sections rendered when present)."""
    lines = ["# Speed: facesearch vs OpenCV vs dlib", ""]
    lines += [
        "Generated by `bench/speed.py` and `bench/query_latency.py` from `speed.json`; do not edit",
        "by hand. Each section names the command that produced it.",
        "",
    ]
    th = allres.get("throughput")
    if th:
        m = th["machine"]
        lines += [
            "## Indexing throughput",
            "",
            f"Command: `{th['command']}`  ",
            f"Date: {th['date']}; {m['cpu']}, {m['cores']} cores; threads {th['threads']}; "
            f"median of {th['runs']} runs; total bench time {th['bench_minutes']:.1f} min; "
            f"load average at start of runs {th['loadavg_min']:.2f}..{th['loadavg_max']:.2f}.  ",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
            "",
            "photos/s and faces/s: photos (faces) / processing time (decode, detect, align, embed;",
            "models already loaded); for `facesearch-index` the whole command's wall time",
            "(start-up, model loading and storing included). *wall photos/s*: photos / whole",
            "process time for every system. Peak RSS: high-water mark of the system's own process.",
            "CPU ms/photo: CPU time (all threads) of the same span as photos/s, per photo: the",
            "figure least disturbed by other load on the machine.",
            "",
        ]
        for inputs, sect in th["results"].items():
            desc = th["inputs"][inputs]
            lines += [f"### {inputs}: {desc}", ""]
            lines += [
                "| system | photos/s | faces/s | faces found | failed | wall photos/s | "
                "wall s | model load s | peak RSS MB | CPU ms/photo |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for system, s in sect.items():
                if system == "ratios":
                    continue
                lines.append(
                    f"| {system} | {_f(s['photos_per_s'])} | {_f(s['faces_per_s'])} | "
                    f"{s['faces']:.0f} | {s['failed']} | {_f(s['photos_per_s_wall'])} | "
                    f"{_f(s['wall_s'])} | {_f(s['load_s'], 2)} | {_f(s['peak_rss_mb'], 0)} | "
                    f"{_f(s['cpu_ms_per_photo'], 0)} |"
                )
            lines.append("")
            if sect["ratios"]:
                lines.append(
                    "Ratios (photos/s; `facesearch-index` vs the alternative's whole process, "
                    "the API vs processing time): "
                    + ", ".join(f"{k} **{v:.2f}**" for k, v in sect["ratios"].items())
                )
                lines.append("")
            agr = th.get("agreement", {}).get(inputs)
            if agr:
                lines.append(
                    f"Same work: facesearch vs OpenCV embeddings on the {agr['photos_compared']} "
                    f"photos where both find one face: cosine median {agr['cos_median']:.5f}, "
                    f"1st percentile {agr['cos_p1']:.4f}, min {agr['cos_min']:.4f}; "
                    f"{agr['photos_with_other_face_count']} photos with another face count."
                )
                lines.append("")
    mem = allres.get("memory")
    if mem:
        lines += [
            "## Peak memory of indexing vs collection size",
            "",
            f"Command: `{mem['command']}`  ",
            f"Date: {mem['date']}; threads {mem['threads']}.",
            "",
            "| photos | faces | wall s | photos/s | peak RSS MB |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in mem["results"]:
            lines.append(
                f"| {r['photos']:,} | {r['faces']} | {_f(r['wall_s'])} | "
                f"{_f(r['photos'] / r['wall_s'])} | {_f(r['peak_rss_mb'], 0)} |"
            )
        lines.append("")
    for key in ("query", "e2e", "startup", "profile"):
        sect = allres.get(key)
        if sect and "markdown" in sect:
            lines += [sect["markdown"].rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="facesearch-bench-"))
    try:
        yield path
    finally:
        if keep:
            log.info("kept %s", path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _command_line(argv: Sequence[str]) -> str:
    return shlex.join(["python", "bench/speed.py", *argv])


def run_throughput(args: argparse.Namespace, argv: Sequence[str]) -> None:
    data = Path(args.shared) / "data"
    t_start = time.perf_counter()
    sets = {
        "lfw": (data / "lfw" / "images", lfw_selection(data, args.lfw_count)),
        "photos": (data, photos_selection(data)),
    }
    if args.quick:
        sets = {k: (root, quick_subset(rel, 120 if k == "lfw" else 20)) for k, (root, rel) in
                sets.items()}  # fmt: skip
    sets = {k: v for k, v in sets.items() if k in args.sets}
    desc = {
        "lfw": "first {n} LFW images (sorted relative path, 250x250, one face each)",
        "photos": "{n} photos of `photos/` + `groups/` (sorted; up to 13 MP, several faces)",
    }
    if args.quick:
        desc = {k: v.replace("first ", "").replace(" (", " spread over the set (", 1) + " — QUICK"
                for k, v in desc.items()}  # fmt: skip
    runs: list[Run] = []
    with workdir(args.keep) as work:
        roots = {}
        for name, (root, rel) in sets.items():
            dst = work / "inputs" / name
            roots[name] = (dst, materialise(root, rel, dst))
        for r in range(args.runs):
            for name, (dst, paths) in roots.items():
                for system in args.systems:
                    run = measure_once(system, name, paths, dst, work, args, keep_embeddings=r == 0)
                    runs.append(run)
                    log.info(
                        "run %d %-8s %-17s %7.1f photos/s %7.1f faces/s (%d faces) peak %5.0f MB "
                        "wall %.1f s",
                        r + 1, name, system, run.photos_per_s, run.faces_per_s, run.faces,
                        run.peak_rss_mb, run.wall_s,
                    )  # fmt: skip
        agr = {
            name: a
            for name in roots
            if (a := agreement(work, name, "facesearch", "opencv")) is not None
        }
    loads = [r.loadavg for r in runs]
    payload = {
        "command": _command_line(argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": args.threads,
        "runs": args.runs,
        "quick": args.quick,
        "machine": machine(),
        "inputs": {k: desc[k].format(n=len(rel)) for k, (_, rel) in sets.items()},
        "results": summarise(runs),
        "agreement": agr,
        "raw": [asdict(r) for r in runs],
        "bench_minutes": (time.perf_counter() - t_start) / 60,
        "loadavg_min": min(loads),
        "loadavg_max": max(loads),
    }
    if not args.quick:  # a smoke run is printed, never recorded
        update_results("throughput", payload)
    print(render_markdown({"throughput": payload}))


def run_memory(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Peak RSS of ``facesearch index`` at 1k and 10k LFW photos (fresh collection each)."""
    data = Path(args.shared) / "data"
    counts = (100, 1000) if args.quick else (1000, 10000)
    rel = lfw_selection(data, max(counts))
    results = []
    with workdir(args.keep) as work:
        for n in counts:
            dst = work / f"lfw{n}"
            paths = materialise(data / "lfw" / "images", rel[:n], dst)
            run = measure_once("facesearch-index", f"lfw{n}", paths, dst, work, args, False)
            results.append(
                {
                    "photos": n,
                    "faces": run.faces,
                    "wall_s": run.wall_s,
                    "peak_rss_mb": run.peak_rss_mb,
                }  # fmt: skip
            )
            log.info("%d photos: peak %.0f MB, %.1f s", n, run.peak_rss_mb, run.wall_s)
            shutil.rmtree(dst)
    payload = {
        "command": _command_line(argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": args.threads,
        "results": results,
    }
    if not args.quick:
        update_results("memory", payload)
    print(render_markdown({"memory": payload}))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--shared", default=str(DEFAULT_SHARED), help="the shared folder (data/, weights/)"
    )
    p.add_argument("--weights", default=None, help="ONNX weights folder (default SHARED/weights)")
    p.add_argument("--runs", type=int, default=3, help="runs per system (median reported)")
    p.add_argument(
        "--quick", action="store_true", help="small smoke run (120 LFW + 20 photos, 1 run)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                   help=f"comma-separated, from {', '.join(ALL_SYSTEMS)}")  # fmt: skip
    p.add_argument("--sets", default="lfw,photos", help="comma-separated: lfw, photos")
    p.add_argument("--lfw-count", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16, help="photos per faces_batch call (facesearch)")
    p.add_argument("--index-args", default="", help="extra arguments for `facesearch index`")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment setting for every system (repeatable), e.g. "
                   "OMP_WAIT_POLICY=PASSIVE")  # fmt: skip
    p.add_argument(
        "--memory", action="store_true", help="peak memory of indexing at 1k and 10k photos"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, inputs)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--list", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--embeddings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.weights = args.weights or str(Path(args.shared) / "weights")
    args.systems = [s for s in args.systems.split(",") if s]
    args.sets = [s for s in args.sets.split(",") if s]
    args.index_args = shlex.split(args.index_args)
    if unknown := set(args.systems) - set(ALL_SYSTEMS):
        p.error(f"unknown systems {sorted(unknown)}; choose from {ALL_SYSTEMS}")
    if args.quick and "--runs" not in " ".join(argv):
        args.runs = 1
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.worker:
        logging.getLogger().setLevel(logging.WARNING)
        worker(args)
    elif args.memory:
        run_memory(args, argv)
    else:
        run_throughput(args, argv)


if __name__ == "__main__":
    main()
