"""The open-set trade-off of facesearch's three operating points, measured on LFW.

A 1:K query answers "person X" when the nearest labelled face is within tau, else "unknown".
The smaller tau, the more strangers are rejected and the fewer known people are recognised.
facesearch ships three taus (``facesearch/distance.py``): 1.147 for ``query`` (1:K), 1.274 for
clustering, 1.325 for ``verify`` (1:1). This script shows what each one does in a 1:K search.

Protocol (the same as ``bench/identify.py --parts lfw``): the gallery holds the first image
(with a face) of each of LFW's 1,680 people with 2 or more images, one face per person;

- *known people*: every other image of those people is a probe; it is *recognised* when its
  nearest gallery face is of the right person and d < tau, *taken for someone else* when the
  nearest is another person and d < tau, else *unknown*;
- *strangers*: the image of every person with a single LFW image (4,069 people, none in the
  gallery) is a probe; it is *rejected* when no gallery face is within tau.

Embeddings: the face nearest the image centre (:func:`facesearch.lfw.embed_images`), cached in
``--lfw-embeddings`` (shared with ``bench/identify.py``). Exact search (brute force).

Usage::

    python bench/operating_points.py --lfw-embeddings /tmp/lfw_embeddings.npz

Results: ``bench/results/operating_points.md`` and ``.json``, with the command line.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from identify import DEFAULT_SHARED, RESULTS, _public, lfw_embeddings, lfw_people  # noqa: E402
from results_io import record  # noqa: E402

log = logging.getLogger("bench.operating_points")


def operating_points() -> list[tuple[str, float]]:
    from facesearch.distance import (
        DEFAULT_IDENTIFY_THRESHOLD,
        DEFAULT_THRESHOLD,
        DEFAULT_VERIFY_THRESHOLD,
    )

    return [
        ("query (1:K)", DEFAULT_IDENTIFY_THRESHOLD),
        ("clustering", DEFAULT_THRESHOLD),
        ("verify (1:1)", DEFAULT_VERIFY_THRESHOLD),
    ]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from facesearch.distance import pairwise_distance

    images = args.shared / "data" / "lfw" / "images"
    people = lfw_people(images)
    multi = {p: v for p, v in people.items() if len(v) >= 2}
    singles = sorted(v[0] for v in people.values() if len(v) == 1)
    wanted = sorted({p for v in multi.values() for p in v} | set(singles))
    table = lfw_embeddings(args, images, wanted)
    names, gallery, probes, truth = [], [], [], []
    for person, paths in sorted(multi.items()):
        first = next((p for p in paths if table[p][0] is not None), None)
        if first is None:
            continue
        names.append(person)
        gallery.append(table[first][0])
        for p in paths:
            if p != first:
                probes.append(p)
                truth.append(len(names) - 1)
    xb = np.stack(gallery).astype(np.float32)  # (nb, D)
    dim = xb.shape[1]

    def nearest(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(index of the nearest gallery face, its d) per probe; d = 4 for a probe without a
        face (it can never be accepted)."""
        xq = np.stack([table[p][0] if table[p][0] is not None else np.zeros(dim) for p in paths])
        d = pairwise_distance(xq.astype(np.float32), xb)  # (nq, nb)
        idx, best = d.argmin(1), d.min(1)
        best[[table[p][0] is None for p in paths]] = 4.0
        return idx, best

    ik, dk = nearest(probes)
    right = ik == np.asarray(truth)
    _, du = nearest(singles)
    rows = []
    for name, tau in operating_points():
        rows.append(
            {
                "operating_point": name,
                "tau": tau,
                "strangers_rejected": float(np.mean(du >= tau)),
                "known_recognised": float(np.mean(right & (dk < tau))),
                "known_taken_for_someone_else": float(np.mean(~right & (dk < tau))),
            }
        )
    return {
        "gallery": len(names),
        "known_probes": len(probes),
        "stranger_probes": len(singles),
        "probes_without_face": int(sum(table[p][0] is None for p in probes + singles)),
        "rows": rows,
    }


def render(res: dict[str, Any]) -> str:
    lines = [
        "# The three operating points on LFW (open-set 1:K)",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Gallery: one face each of the {res['gallery']} LFW people with 2+ images. Known "
        f"people: their other {res['known_probes']} images. Strangers: the "
        f"{res['stranger_probes']} people with a single LFW image (not in the gallery). "
        f"{res['probes_without_face']} probes without a face count as unknown.",
        "",
        "| tau | used by | strangers rejected | known people recognised | known people taken "
        "for someone else |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['tau']:.3f} | {r['operating_point']} | {100 * r['strangers_rejected']:.1f}% | "
            f"{100 * r['known_recognised']:.1f}% | "
            f"{100 * r['known_taken_for_someone_else']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared folder")
    ap.add_argument("--threads", type=int, default=2, help="threads to embed with")
    ap.add_argument("--engine", choices=("numpy", "torch"), default="numpy", help="to embed with")
    ap.add_argument(
        "--lfw-embeddings",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lfw_embeddings.npz",
        help="LFW embeddings cache (.npz: paths, embeddings, status), shared with identify.py",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    res = measure(args)
    res["command"] = "python bench/operating_points.py " + shlex.join(
        _public(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    record("operating_points", res, render(res), RESULTS)
    print(render(res))


if __name__ == "__main__":
    main()
