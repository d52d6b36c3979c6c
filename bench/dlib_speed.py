"""Cost of dlib's ResNet port: per face on one thread in each vector path, and the throughput of
the indexing stages with and without it on the same photos.

``--parts face``: one thread, ``--faces`` LFW chips embedded in batches of 1 and 8, CPU-ms per
face, at every vector level the CPU has (``facesearch._native.set_simd``: 2 AVX-512, 1 AVX2,
0 portable C) and without the native module (numpy with BLAS); SFace beside it for scale.

``--parts stages``: the per-photo work of ``facesearch index`` on ``--photos`` LFW photos with
two worker threads (as the index workers run it: decode, YuNet, align, SFace; "fused" adds the
dlib chip and the dlib ResNet of every face), photos/s and CPU-ms per photo, the two runs
interleaved ``--runs`` times, medians reported. Storing is not included (it is the same for
both).

Usage::

    python bench/dlib_speed.py                      # both parts, ~3 min
    python bench/dlib_speed.py --parts face --faces 64

Results: ``bench/results/dlib_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facesearch.align import align_faces, dlib_chips  # noqa: E402
from facesearch.image import load_image  # noqa: E402
from facesearch.models import dlib_npengine  # noqa: E402
from facesearch.models.dlib_npengine import NumpyDlibEmbedder  # noqa: E402
from facesearch.models.npengine import NumpyDetector, NumpyEmbedder  # noqa: E402
from facesearch.native import NATIVE  # noqa: E402


def lfw_photos(shared: Path, n: int) -> list[Path]:
    root = shared / "data" / "lfw" / "images"
    return sorted(root.glob("*/*.jpg"), key=lambda p: p.relative_to(root).as_posix())[:n]


def cpu_ms_per_item(fn, items: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    """Median over ``repeats`` of the thread CPU time of ``fn()`` per item, in ms."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append((time.thread_time() - t0) / items * 1000)
    return round(statistics.median(times), 2)


def part_face(shared: Path, faces: int, repeats: int) -> dict[str, object]:
    det = NumpyDetector()
    chips, crops = [], []
    for p in lfw_photos(shared, faces * 2):
        rgb = load_image(p)
        d = det.detect(rgb)
        if d:
            chips.append(dlib_chips(rgb, [d[0].landmarks_array()])[0])
            crops.append(align_faces(rgb, [d[0].landmarks_array()])[0])
        if len(chips) == faces:
            break
    c, s = np.stack(chips), np.stack(crops)
    out: dict[str, object] = {"faces": len(c)}
    sface = NumpyEmbedder()
    out["sface_ms_per_face_batch8"] = cpu_ms_per_item(lambda: sface.embed(s), len(s), repeats)
    levels = [("avx512", 2), ("avx2", 1), ("portable", 0)] if NATIVE is not None else []
    for label, level in [*levels, ("numpy", None)]:
        if level is None:
            dlib_npengine._NATIVE = None
        else:
            assert NATIVE is not None
            if NATIVE.set_simd(level) < level:  # not on this CPU
                NATIVE.set_simd(True)
                continue
            NATIVE.set_simd(level)
        for bs in (1, 8):
            emb = NumpyDlibEmbedder(batch_size=bs)
            n = len(c) if level != 0 else min(len(c), 8)
            out[f"dlib_{label}_ms_per_face_batch{bs}"] = cpu_ms_per_item(
                lambda emb=emb, n=n: emb.raw(c[:n]), n, repeats
            )
        print(json.dumps(out), file=sys.stderr)
    if NATIVE is not None:
        NATIVE.set_simd(True)
    dlib_npengine._NATIVE = NATIVE
    return out


def part_stages(shared: Path, photos: int, runs: int) -> dict[str, object]:
    paths = lfw_photos(shared, photos)
    det, sface, dl = NumpyDetector(), NumpyEmbedder(), NumpyDlibEmbedder()

    def work(part: list[Path], fused: bool) -> None:
        for start in range(0, len(part), 8):
            images = [load_image(p) for p in part[start : start + 8]]
            lms = [[d.landmarks_array() for d in det.detect(im)] for im in images]
            crops = [align_faces(im, lm) for im, lm in zip(images, lms, strict=True) if lm]
            if crops:
                sface.embed(np.concatenate(crops))
            if fused:
                chips = [dlib_chips(im, lm) for im, lm in zip(images, lms, strict=True) if lm]
                if chips:
                    dl.embed(np.concatenate(chips))

    def run(fused: bool) -> tuple[float, float]:
        halves = [paths[0::2], paths[1::2]]
        threads = [threading.Thread(target=work, args=(h, fused)) for h in halves]
        c0, t0 = time.process_time(), time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return len(paths) / wall, cpu / len(paths) * 1000

    run(False)  # warm-up (weight caches, page faults)
    res: dict[str, list[tuple[float, float]]] = {"sface": [], "fused": []}
    for _ in range(runs):
        for name in ("sface", "fused"):
            res[name].append(run(name == "fused"))
            print(name, res[name][-1], file=sys.stderr)
    out: dict[str, object] = {"photos": len(paths), "runs": runs, "threads": 2}
    for name, vals in res.items():
        out[f"{name}_photos_per_s"] = round(statistics.median(v[0] for v in vals), 1)
        out[f"{name}_cpu_ms_per_photo"] = round(statistics.median(v[1] for v in vals), 1)
        out[f"{name}_runs_photos_per_s"] = [round(v[0], 1) for v in vals]
    ratios = [f[0] / s[0] for s, f in zip(res["sface"], res["fused"], strict=True)]
    out["fused_over_sface"] = round(statistics.median(ratios), 3)
    out["load_average"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--parts", default="face,stages")
    parser.add_argument("--faces", type=int, default=32)
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    result: dict[str, object] = {
        "command": "python bench/dlib_speed.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
    }
    parts = args.parts.split(",")
    if "face" in parts:
        result["face"] = part_face(args.shared, args.faces, args.repeats)
    if "stages" in parts:
        result["stages"] = part_stages(args.shared, args.photos, args.runs)
    out = REPO / "bench" / "results" / "dlib_speed.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
