"""Clustering LFW with ``sface+dlib`` beside SFace alone, each from its own tau.

The embeddings of all 13,233 LFW images made by ``bench/dlib_calibrate.py`` (its ``--cache``
file: SFace's unit vectors and dlib's raw descriptors in sorted path order, fused here with
:data:`~facesearch.models.fused.DLIB_WEIGHT`), so both models cluster exactly the same faces.

Each model is clustered with facesearch's default settings (:class:`ClusterConfig`, the
thresholds of ``default_thresholds`` from the model's base tau, no labels), on the two sets of
``bench/cluster_bench.py``: LFW people with at least 10 images, and all of LFW.

Usage::

    python bench/dlib_cluster.py --cache dlib_lfw_all.npz

Results: ``bench/results/dlib_cluster.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facesearch.cluster_algorithms import ClusterConfig  # noqa: E402
from facesearch.collection_clusters import evaluate_clusters  # noqa: E402
from facesearch.distance import DEFAULT_THRESHOLD, FUSED_THRESHOLD  # noqa: E402
from facesearch.models.fused import DLIB_WEIGHT, fuse  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--cache", type=Path, required=True, help="bench/dlib_calibrate.py's")
    args = parser.parse_args(argv)
    root = args.shared / "data" / "lfw" / "images"
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    with np.load(args.cache) as z:
        sface, dlib, found = z["sface"], z["dlib"], z["found"]
    if len(sface) != len(paths):
        raise SystemExit(f"{args.cache}: {len(sface)} vectors for {len(paths)} LFW images")
    xb = fuse(sface, dlib, DLIB_WEIGHT)
    people = np.array([Path(p).parent.name for p in paths])
    keep = found
    counts = Counter(people[keep])
    sets = {
        "lfw_10_or_more": keep & np.array([counts[p] >= 10 for p in people]),
        "lfw_all": keep,
    }
    models = {"sface": (sface, DEFAULT_THRESHOLD), "sface+dlib": (xb, FUSED_THRESHOLD)}
    out: dict[str, object] = {
        "command": "python bench/dlib_cluster.py " + " ".join(argv or sys.argv[1:]),
        "dlib_weight": DLIB_WEIGHT,
        "images_without_face": int((~found).sum()),
    }
    for name, mask in sets.items():
        _, true = np.unique(people[mask], return_inverse=True)
        sect: dict[str, object] = {"faces": int(mask.sum()), "people": int(true.max() + 1)}
        for model, (vecs, tau) in models.items():
            t0 = time.perf_counter()
            config = dataclasses.replace(ClusterConfig(), tau=tau)
            ev = evaluate_clusters(np.ascontiguousarray(vecs[mask]), true, config)
            sect[model] = {"tau": tau, **ev.to_dict(), "seconds": time.perf_counter() - t0}
            print(
                f"{name:15s} {model:11s} tau {tau:.3f} threshold {ev.threshold:.3f} "
                f"pairwise F {ev.pairwise[2]:.4f} BCubed F {ev.bcubed[2]:.4f} "
                f"clusters {ev.clusters} (people {sect['people']})",
                file=sys.stderr,
            )
        out[name] = sect
    path = REPO / "bench" / "results" / "dlib_cluster.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
