"""Faces found on face crops, and faces found where there are none: the fallback and --aligned.

Crops (``tests/photosets.py``, facesearch's own detection and alignment, from ``--crops``
LFW images drawn with a fixed seed): on the ArcFace template at 112 px (PNG and JPEG q90) and
160 px, 15 % tighter and 20 % looser than the template, the 96x112 template, and unaligned
square box crops at 160 px. For each variant, the crops in which a face is found:

- *first pass*: the detector at its settings (score 0.9), what ``facesearch index`` did
  before the fallback;
- *with the fallback*: the second pass on the photo upscaled 2x, same threshold
  (``PipelineConfig.fallback``, the default);
- *score 0.5 instead*: the first pass at a 0.5 threshold (what ``evaluate lfw`` falls back
  to), for comparison;
- *--aligned*: every crop is its face; the distance d of its embedding to the embedding of the
  face in the original photo tells whether the crop really is on the template.

Where a face must not be found, the faces each way: ``negatives/`` (25 images without a
face), tiles of them (``--tiles`` random squares of 48-480 px, some resized to crop sizes,
fixed seed), ``odd/``; where faces are, photos of other shapes: AT&T (92x112 greyscale),
the BBT crops of ``photos/``, ``groups/``, and ``--lfw`` LFW photos (the upscaled pass runs
on the photos whose first pass finds nothing; its faces off the image centre are the
candidates for false positives).

Usage::

    python bench/crops.py                      # recorded in bench/results/detection.md/.json
    python bench/crops.py --crops 100 --quick  # smoke run, printed only

Numpy engine, one pipeline, ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from photosets import CROP_VARIANTS, lfw_sample, make_crops  # noqa: E402
from results_io import record  # noqa: E402

DEFAULT_SHARED = REPO.parent / "shared"
RESULTS = REPO / "bench" / "results"
log = logging.getLogger("bench.crops")


def _public(arg: str) -> str:
    return f"DIR/{Path(arg).name}" if os.path.isabs(arg) else arg


def _pipelines(threads: int) -> dict[str, Any]:
    from facesearch.pipeline import FacePipeline, PipelineConfig

    base = FacePipeline(PipelineConfig(engine="numpy", threads=threads))
    low = base.detector.with_config(replace(base.detector.config, score_threshold=0.5))
    net = {"detector": base.detector, "embedder": base.embedder}
    return {
        "first": FacePipeline(
            PipelineConfig(engine="numpy", threads=threads, fallback=False), **net
        ),  # fmt: skip
        "fallback": base,
        "score05": FacePipeline(
            PipelineConfig(engine="numpy", threads=threads, fallback=False),
            detector=low,
            embedder=base.embedder,
        ),
    }


def _count(pipes: dict[str, Any], paths: list[Path]) -> dict[str, Any]:
    """Photos with a face and faces found, each way; the upscaled pass's share."""
    from facesearch.image import load_image

    out: dict[str, Any] = {"photos": len(paths)}
    dets: dict[str, list[list[Any]]] = {k: [] for k in pipes}
    unreadable = 0
    for p in paths:
        try:
            image = load_image(p)
        except Exception:  # noqa: BLE001 - odd/ holds broken files on purpose
            unreadable += 1
            continue
        for k, pipe in pipes.items():
            dets[k].append(pipe.detect(image))
    for k, rows in dets.items():
        out[k] = {
            "with_face": sum(bool(r) for r in rows),
            "faces": sum(len(r) for r in rows),
            "upscaled_faces": sum(d.detector_pass == "upscaled" for r in rows for d in r),
        }
    out["unreadable"] = unreadable
    return out


def bench_crops(args: argparse.Namespace, pipes: dict[str, Any], work: Path) -> dict[str, Any]:
    from facesearch.image import load_image

    data = args.shared / "data"
    sources = lfw_sample(data, args.crops, seed=1)
    made = make_crops(pipes["fallback"], sources, work / "crops")
    # the embedding of each source's face, to compare the --aligned crops with
    ref: dict[str, np.ndarray] = {}
    for src in sources:
        face, _ = pipes["fallback"].face_with_fallback(load_image(src))
        if face is not None:
            ref[f"{src.parent.name}/{src.stem}"] = face.embedding
    out: dict[str, Any] = {"sources": len(sources)}
    for variant, files in made.items():
        row = _count(pipes, files)
        aligned = pipes["fallback"].aligned_faces([load_image(f) for f in files])
        d = np.array(
            [
                float(np.sum((a.embedding - ref[f"{f.parent.name}/{f.stem}"]) ** 2))
                for a, f in zip(aligned, files, strict=True)
            ]
        )
        row["aligned"] = {
            "with_face": len(aligned),
            "d_median": float(np.median(d)),
            "d_p95": float(np.percentile(d, 95)),
        }
        out[variant] = row
        log.info("%s: %s", variant, row)
    return out


def _tiles(data: Path, work: Path, n_per_image: int) -> list[Path]:
    from facesearch.image import load_image

    rng = np.random.default_rng(3)
    out = []
    folder = work / "tiles"
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted((data / "negatives").iterdir()):
        img = load_image(src)
        h, w = img.shape[:2]
        for j in range(n_per_image):
            side = int(rng.integers(48, min(h, w, 480) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            size = int(rng.choice([side, 112, 160, 250]))
            tile = Image.fromarray(img[y : y + side, x : x + side])
            path = folder / f"{src.stem}_{j}.png"
            tile.resize((size, size), Image.Resampling.BILINEAR).save(path)
            out.append(path)
    return out


def bench_sets(args: argparse.Namespace, pipes: dict[str, Any], work: Path) -> dict[str, Any]:
    data = args.shared / "data"
    sets = {
        "negatives": sorted((data / "negatives").iterdir()),
        "negative_tiles": _tiles(data, work, max(1, args.tiles // 25)),
        "odd": sorted((data / "odd").iterdir()),
        "att_faces": sorted((data / "att_faces").glob("s*/*.pgm")),
        "photos_bbt": sorted((data / "photos").glob("BBT_*/*")),
        "groups": sorted(p for p in (data / "groups").iterdir() if p.suffix == ".jpg"),
        "lfw": lfw_sample(data, args.lfw, seed=2),
    }
    out = {}
    for name, paths in sets.items():
        out[name] = _count(pipes, paths)
        log.info("%s: %s", name, out[name])
    out["lfw"]["upscaled_off_centre"] = _off_centre(pipes["fallback"], sets["lfw"])
    return out


def _off_centre(pipe: Any, paths: list[Path]) -> int:
    """Upscaled-pass faces of LFW photos whose centre is more than 40 px from the image's
    (LFW's named person is centred): the candidates for false positives."""
    from facesearch.image import load_image

    n = 0
    for p in paths:
        image = load_image(p)
        h, w = image.shape[:2]
        for d in pipe.detect(image):
            if d.detector_pass == "upscaled":
                cx, cy = d.center
                n += int(np.hypot(cx - w / 2, cy - h / 2) > 40)
    return n


def render(res: dict[str, Any]) -> str:
    c, s = res["crops"], res["sets"]
    lines = [
        "# Faces found on face crops, and where there are none",
        "",
        f"Command: `{res['command']}` ({res['seconds']:.0f} s; numpy engine, "
        f"{res['threads']} threads; load average {res['load_average']:.1f} at the start)",
        "",
        f"## Crops of {c['sources']} LFW photos (seed 1), made by facesearch's own alignment",
        "",
        "Crops in which a face is found. *First pass*: the detector at score 0.9, as before the "
        "fallback; *fallback*: then the 2x upscaled pass for the crops where the first found "
        "nothing (the default); *score 0.5*: the first pass at 0.5 instead (not used: see the "
        "negatives). *--aligned*: d of the crop's embedding to the face's in the original photo "
        "(median / 95th percentile; 0 = the same vector).",
        "",
        "| crops | size | first pass | fallback | score 0.5 | --aligned d (median / p95) |",
        "|---|---|---|---|---|---|",
    ]
    for v in CROP_VARIANTS:
        if v not in c:
            continue
        r = c[v]
        (w, h), _, _ = CROP_VARIANTS[v]
        n = r["photos"]

        def pct(k: str, r: dict[str, Any] = r, n: int = n) -> str:
            return f"{r[k]['with_face']} ({100 * r[k]['with_face'] / n:.1f}%)"

        lines.append(
            f"| {v} | {w}x{h} | {pct('first')} | {pct('fallback')} | {pct('score05')} | "
            f"{r['aligned']['d_median']:.4f} / {r['aligned']['d_p95']:.4f} |"
        )
    lines += [
        "",
        "## Faces where there are none, and on photos of other shapes",
        "",
        "Faces found (photos with a face) each way; *upscaled*: faces of the fallback's second "
        "pass.",
        "",
        "| set | photos | first pass | fallback (upscaled) | score 0.5 |",
        "|---|---|---|---|---|",
    ]
    for name, r in s.items():
        lines.append(
            f"| {name} | {r['photos'] - r['unreadable']} | {r['first']['faces']} "
            f"({r['first']['with_face']}) | {r['fallback']['faces']} ({r['fallback']['with_face']}"
            f"; {r['fallback']['upscaled_faces']}) | {r['score05']['faces']} "
            f"({r['score05']['with_face']}) |"
        )
    lines += [
        "",
        f"LFW: of the {s['lfw']['fallback']['upscaled_faces']} faces the upscaled pass found, "
        f"{s['lfw']['upscaled_off_centre']} are more than 40 px off the image centre (where the "
        "named person is): the candidates for false positives (often a real face behind).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--crops", type=int, default=1000, help="LFW photos to make crops of")
    ap.add_argument("--tiles", type=int, default=500, help="tiles of the negatives")
    ap.add_argument("--lfw", type=int, default=2000, help="LFW photos")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="printed, not recorded")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    command = "python bench/crops.py " + shlex.join(
        _public(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    pipes = _pipelines(args.threads)
    with tempfile.TemporaryDirectory(prefix="facesearch-crops-") as tmp:
        res = {
            "crops": bench_crops(args, pipes, Path(tmp)),
            "sets": bench_sets(args, pipes, Path(tmp)),
        }
    res.update(
        command=command.strip(),
        seconds=time.perf_counter() - t0,
        threads=args.threads,
        load_average=load,
        python=platform.python_version(),
    )
    text = render(res)
    print(text)
    if args.quick:
        return
    record("detection", res, text, RESULTS)


if __name__ == "__main__":
    main()
