"""Reduced JPEG decoding: what it changes in faces, what it saves in time and pixels.

For each JPEG of ``--data`` whose long side is at least ``--min-side`` (default 2000), and for
the same photos upscaled ``--upscale`` times (re-encoded, quality 92: photos large enough for
the default rule, :func:`facesearch.pipeline.reduced_decode_side`), faces are computed from a
full decode and from a reduced one (DCT scale 2, then 4, forced for the shared sizes; the default
rule for the upscaled ones) and matched by box overlap. Reports per photo and scale: faces found
either way, the largest box-corner deviation in full-resolution pixels relative to the face
width, the largest embedding distance (L2, unit vectors) between matched faces, and the decode
time (median of 3) full vs reduced.

    python bench/reduced_decode.py --data ../shared/data --out bench/results/reduced_decode.md
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facesearch.image import draft_factor, load_image, load_image_reduced
from facesearch.pipeline import FacePipeline, reduced_decode_side
from facesearch.types import Face


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _timed(fn, *args):  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(3):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def _compare(pipe: FacePipeline, data: bytes, long_side: int) -> dict[str, object]:
    full, t_full = _timed(load_image, data)
    (small, scale), t_small = _timed(load_image_reduced, data, long_side)
    fa: list[Face] = pipe.faces(full)
    fb = pipe.faces(small)
    worst_box, worst_emb, matched = 0.0, 0.0, 0
    for a in fa:
        boxes = [tuple(v * scale for v in b.detection.box) for b in fb]
        if not boxes:
            continue
        j = max(range(len(fb)), key=lambda k: _iou(a.detection.box, boxes[k]))
        if _iou(a.detection.box, boxes[j]) < 0.5:
            continue
        matched += 1
        dev = max(abs(x - y) for x, y in zip(a.detection.box, boxes[j], strict=True))
        worst_box = max(worst_box, dev / max(a.detection.width, 1.0))
        worst_emb = max(worst_emb, float(np.linalg.norm(a.embedding - fb[j].embedding)))
    return {
        "scale": scale,
        "faces": f"{len(fa)} / {len(fb)} ({matched} matched)",
        "box": worst_box,
        "emb": worst_emb,
        "t": f"{t_full * 1000:.0f} / {t_small * 1000:.0f} ms",
        "mp": f"{full.shape[0] * full.shape[1] / 1e6:.1f} / "
        f"{small.shape[0] * small.shape[1] / 1e6:.1f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--min-side", type=int, default=2000)
    ap.add_argument("--upscale", type=int, default=2)
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    pipe = FacePipeline()
    photos = []
    for p in sorted(args.data.rglob("*.jp*g")):
        with Image.open(p) as im:
            if max(im.size) >= args.min_side:
                photos.append((max(im.size), p))
    photos = [p for _, p in sorted(photos, reverse=True)[: args.limit]]
    head = ("| photo | size | decode | faces full / reduced | box dev / face width | "
            "embedding L2 | decode full / reduced | MP full / reduced |")  # fmt: skip
    rows = [head, "|---" * 8 + "|"]
    rule = reduced_decode_side()
    for p in photos:
        data = p.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            up = im.convert("RGB").resize((w * args.upscale, h * args.upscale), Image.LANCZOS)
        buf = io.BytesIO()
        up.save(buf, "JPEG", quality=92)
        del up
        cases = [(data, f"{w}x{h}", f"1/{s} (forced)", max(w, h) // s) for s in (2, 4)]
        big = buf.getvalue()
        uw, uh = w * args.upscale, h * args.upscale
        cases.append((big, f"{uw}x{uh} (x{args.upscale})",
                      f"1/{draft_factor('JPEG', uw, uh, rule)} (default rule)", rule))  # fmt: skip
        for blob, size, how, side in cases:
            r = _compare(pipe, blob, side)
            rows.append(f"| {p.parent.name}/{p.name} | {size} | {how} | {r['faces']} | "
                        f"{r['box']:.3f} | {r['emb']:.3f} | {r['t']} | {r['mp']} |")  # fmt: skip
            print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
