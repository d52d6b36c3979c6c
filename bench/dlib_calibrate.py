"""The operating points of ``sface+dlib`` on all of LFW, as ``facesearch/distance.py`` has them
for SFace: the distances at which the false-accept rate over all impostor pairs of LFW's
13,233 images is 1e-3 (the base tau, clustering) and 1e-4 (1:K identification), and the share
of same-person pairs accepted there. The 1:1 tau is View 2's 10-fold mean
(``bench/dlib_lfw.py``).

Each image's central face (YuNet; the low-threshold fallback when none is found) is embedded
by both networks of :class:`facesearch.models.fused.FusedEmbedder` (two worker processes); the
cache keeps SFace's unit vectors and dlib's raw descriptors apart, and the fused vectors are
made from them with :data:`facesearch.models.fused.DLIB_WEIGHT` (:func:`fuse`), so a new
weight is calibrated from the cache without embedding again.

Usage::

    python bench/dlib_calibrate.py --cache dlib_lfw_all.npz   # 13,233 images: 21 min, loaded

Results: ``bench/results/dlib_calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

_state: dict[str, object] = {}


def _init() -> None:
    from facesearch.models.fused import FusedEmbedder
    from facesearch.models.npengine import NumpyDetector

    _state.update(detector=NumpyDetector(), fused=FusedEmbedder())


def _embed(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from dlib_lfw import _central

    from facesearch.align import align_faces, dlib_chips
    from facesearch.image import load_image

    sface = np.zeros((len(paths), 128), np.float32)
    dlib = np.zeros((len(paths), 128), np.float32)
    found = np.zeros(len(paths), bool)
    fused = _state["fused"]
    for i, p in enumerate(paths):
        rgb = load_image(p)
        det = _central(_state["detector"], rgb)
        if det is not None:
            lm = [det.landmarks_array()]  # type: ignore[attr-defined]
            sface[i] = fused.sface.embed(align_faces(rgb, lm))[0]  # type: ignore[attr-defined]
            dlib[i] = fused.dlib.raw(dlib_chips(rgb, lm))[0]  # type: ignore[attr-defined]
            found[i] = True
    return sface, dlib, found


def far_thresholds(xb: np.ndarray, people: np.ndarray, fars: tuple[float, ...]) -> dict:
    """Distances at which ``fars`` of all impostor pairs (``i < j``) are accepted, and the
    share of same-person pairs below each."""
    n = len(xb)
    hist_edges = np.linspace(0.0, 4.0, 400_001)  # 1e-5 bins
    imp = np.zeros(len(hist_edges) - 1, np.int64)
    gen: list[np.ndarray] = []
    for start in range(0, n, 1024):
        a = xb[start : start + 1024]
        d = np.clip(2.0 - 2.0 * (a @ xb.T), 0.0, 4.0)  # (b, n)
        idx = np.arange(start, start + len(a))
        upper = np.arange(n)[None, :] > idx[:, None]
        same = people[idx][:, None] == people[None, :]
        imp += np.histogram(d[upper & ~same], bins=hist_edges)[0]
        gen.append(d[upper & same])
    genuine = np.concatenate(gen)
    cum = np.cumsum(imp)
    out: dict[str, object] = {"impostor_pairs": int(cum[-1]), "same_person_pairs": len(genuine)}
    for far in fars:
        k = int(np.searchsorted(cum, far * cum[-1], side="right"))
        tau = float(hist_edges[k])
        out[f"far_{far:g}"] = {"d": round(tau, 4), "same_accepted": float(np.mean(genuine < tau))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    root = args.shared / "data" / "lfw" / "images"
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    from facesearch.models.fused import DLIB_WEIGHT, fuse

    if args.cache is not None and args.cache.is_file():
        with np.load(args.cache) as z:
            sface, dlib, found = z["sface"], z["dlib"], z["found"]
    else:
        chunks = [paths[i : i + 32] for i in range(0, len(paths), 32)]
        t0 = time.time()
        with ProcessPoolExecutor(args.workers, initializer=_init) as pool:
            parts = list(pool.map(_embed, chunks))
        print(f"embedded {len(paths)} images in {time.time() - t0:.0f} s", file=sys.stderr)
        sface, dlib, found = (np.concatenate([p[k] for p in parts]) for k in range(3))
        if args.cache is not None:
            np.savez(args.cache, sface=sface, dlib=dlib, found=found)
    xb = fuse(sface[found], dlib[found], DLIB_WEIGHT)
    people = np.array([Path(p).parent.name for p in paths])
    result = {
        "command": "python bench/dlib_calibrate.py " + " ".join(argv or sys.argv[1:]),
        "images": len(paths),
        "no_face_images": int((~found).sum()),
        "dlib_weight": DLIB_WEIGHT,
        **far_thresholds(xb, people[found], (1e-3, 1e-4)),
    }
    out = REPO / "bench" / "results" / "dlib_calibration.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
