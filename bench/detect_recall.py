"""Detection recall / precision of the YuNet port on the group photos, versus ``max_side``.

Ground truth, from ``<data>/groups``:

* ``dlib/*.xml``: hand-labelled face boxes (9 PASCAL VOC photos, 43 faces). A detection matches
  a labelled face when IoU >= ``--iou`` (default 0.3), one-to-one, greedy by IoU. dlib's boxes
  are square and tight (eyes to mouth), YuNet's run from forehead to chin; measured at the
  default settings, a found face pairs with IoU 0.49-0.82, a missed one has <= 0.01 with any
  detection and no face overlaps a second detection by more than 0.06, so any threshold in
  0.1-0.45 gives the same counts.
* ``groups.csv``: expected face counts (7 photos); scored as ``tp = min(found, expected)``.

Each photo is run at every ``--max-side`` (0 = native size). ``--upscale K`` also runs the
labelled photos enlarged K times (bicubic), which is what a phone photo of the same group looks
like: their 30-40 px faces become 120-160 px, and ``max_side`` decides whether they survive
the downscale. ``--mosaic K`` adds the 9 labelled photos as one 3x3 mosaic enlarged K times
(3000x2250 at K=2): a crowd whose faces are 1.5-4 % of the long side. ``--portraits PX`` adds
the single-person ``photos/`` larger than PX (large faces: the other end). ``--opencv`` adds a
speed comparison with ``cv2.FaceDetectorYN`` (the original) on a 250x250 LFW image and the
1280x886 ``groups/t1.jpg``.

    python bench/detect_recall.py            # ../shared/data, 2 threads, groups + mosaic
    python bench/detect_recall.py --upscale 4 --portraits 1024 --opencv --quiet   # everything
    python bench/detect_recall.py --coarse-side 0 --portraits 1024 --quiet   # no large-face pass

Timing is wall clock per ``detect`` call (decode excluded), median of ``--repeat`` runs, with
``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facesearch.models.yunet import Detector, DetectorConfig  # noqa: E402
from facesearch.types import Detection  # noqa: E402

NATIVE = 1 << 30


def load_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB, EXIF applied (facesearch.image when present, else Pillow)."""
    try:
        from facesearch.image import load_image
    except ImportError:
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return load_image(path)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a (N, 4)`` and ``b (M, 4)`` as x1y1x2y2 -> ``(N, M) float64``."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match(truth: np.ndarray, found: np.ndarray, threshold: float) -> int:
    """Greedy one-to-one matching by IoU; number of pairs with IoU >= threshold."""
    if len(truth) == 0 or len(found) == 0:
        return 0
    m = iou(truth, found)
    tp = 0
    while True:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        if m[i, j] < threshold:
            return tp
        tp += 1
        m[i, :] = -1
        m[:, j] = -1


@dataclass
class Photo:
    name: str
    path: Path | None  # None: built in memory (the mosaic)
    boxes: np.ndarray | None  # (N, 4) x1y1x2y2 labelled faces, or None
    expected: int | None  # expected count when there are no boxes
    upscale: int = 1

    @property
    def n_true(self) -> int:
        return len(self.boxes) if self.boxes is not None else int(self.expected or 0)


def read_portraits(photos_dir: Path, min_side: int) -> list[Photo]:
    """Single-person photos (``photos/Name/file``) with a long side over ``min_side``: one face
    each is expected; these test the other end, faces too large for YuNet at ``max_side``."""
    from PIL import Image

    out = []
    for path in sorted(photos_dir.glob("*/*")):
        try:
            with Image.open(path) as im:
                if max(im.size) <= min_side:
                    continue
        except OSError:
            continue
        out.append(Photo(f"photos/{path.parent.name}/{path.name}", path, None, 1))
    return out


def read_photos(groups: Path, upscale: int) -> list[Photo]:
    photos: list[Photo] = []
    for xml in sorted(groups.glob("dlib/*.xml")):
        if "landmarks" in xml.name:
            continue  # same boxes as the plain files
        for image in ET.parse(xml).getroot().iter("image"):
            boxes = [
                [
                    float(b.get("left", 0)),
                    float(b.get("top", 0)),
                    float(b.get("left", 0)) + float(b.get("width", 0)),
                    float(b.get("top", 0)) + float(b.get("height", 0)),
                ]
                for b in image.iter("box")
                if b.get("ignore", "0") != "1"
            ]
            name = "dlib/" + image.get("file", "")
            photos.append(Photo(name, groups / name, np.asarray(boxes, np.float64), None))
    with open(groups / "groups.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["faces_expected"]:
                photos.append(
                    Photo(row["file"], groups / row["file"], None, int(row["faces_expected"]))
                )
    if upscale > 1:
        photos += [
            Photo(f"{p.name} x{upscale}", p.path, p.boxes * upscale, None, upscale)
            for p in photos
            if p.boxes is not None
        ]
    return photos


MOSAIC_CELL = (500, 375)  # (w, h) of one tile


def mosaic(photos: list[Photo], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The 9 labelled photos as a 3x3 grid of 500x375 tiles, enlarged k times.

    A synthetic crowd: ``(1125 k, 1500 k, 3) uint8`` with 43 faces of 1.5-4 % of the long side,
    the regime where ``max_side`` decides recall. Returns the image and its boxes ``(N, 4)``.
    """
    from PIL import Image

    cw, ch = MOSAIC_CELL
    labelled = [p for p in photos if p.boxes is not None and p.path is not None][:9]
    canvas = np.zeros((3 * ch, 3 * cw, 3), np.uint8)
    boxes = []
    for n, p in enumerate(labelled):
        assert p.path is not None and p.boxes is not None
        img = load_rgb(p.path)
        h, w = img.shape[:2]
        tile = np.asarray(Image.fromarray(img).resize((cw, ch), Image.Resampling.BICUBIC))
        r, c = divmod(n, 3)
        canvas[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = tile
        scale = np.array([cw / w, ch / h, cw / w, ch / h])
        boxes.append(p.boxes * scale + np.array([c * cw, r * ch, c * cw, r * ch]))
    return enlarge(canvas, k), np.concatenate(boxes) * k


def enlarge(image: np.ndarray, k: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w * k, h * k), Image.Resampling.BICUBIC))


def timed(detector: Detector, image: np.ndarray, repeat: int) -> tuple[list[Detection], float]:
    """Detections and the median wall time of ``detector.detect(image)`` in ms."""
    out = detector.detect(image)  # warm-up (also primes the prior-grid cache)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        detector.detect(image)
        times.append(time.perf_counter() - t)
    return out, statistics.median(times) * 1000.0


def _cpu() -> float:
    """CPU seconds of this process so far (user + system, all threads)."""
    t = os.times()
    return t.user + t.system


def opencv_speed(data: Path, weights: Path, repeat: int, threads: int) -> None:
    """ms per image, ours vs ``cv2.FaceDetectorYN`` (native size, same thresholds); calls
    alternate so both see the same machine load. Prints the median and best wall time, and the
    mean process CPU time per call (less sensitive to other load on a shared machine)."""
    import cv2

    cv2.setNumThreads(threads)
    detector = Detector(DetectorConfig(max_side=NATIVE, coarse_side=0))
    lfw = sorted((data / "lfw" / "images").glob("*/*.jpg"))[:1]
    for path in [*lfw, data / "groups" / "t1.jpg"]:
        rgb = load_rgb(path)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        h, w = rgb.shape[:2]
        yn = cv2.FaceDetectorYN.create(str(weights), "", (w, h), 0.9, 0.3, 5000)
        ours = detector.detect(rgb)
        _, theirs = yn.detect(bgr)
        wall: dict[str, list[float]] = {"torch": [], "cv2": []}
        cpu = {"torch": 0.0, "cv2": 0.0}
        for _ in range(repeat):
            calls: dict[str, Callable[[], object]] = {
                "torch": functools.partial(detector.detect, rgb),
                "cv2": functools.partial(yn.detect, bgr),
            }
            for name, call in calls.items():
                c, t = _cpu(), time.perf_counter()
                call()
                wall[name].append(time.perf_counter() - t)
                cpu[name] += _cpu() - c
        n_cv = 0 if theirs is None else len(theirs)
        print(
            f"speed {path.name} {w}x{h}, {threads} threads: "
            + " | ".join(
                f"{name} {statistics.median(wall[name]) * 1e3:.1f} ms "
                f"(best {min(wall[name]) * 1e3:.1f}, cpu {cpu[name] / repeat * 1e3:.1f})"
                for name in ("torch", "cv2")
            )
            + f"; faces {len(ours)} vs {n_cv}"
        )


def main(argv: list[str] | None = None) -> int:
    shared = REPO.parent / "shared"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=shared / "data")
    ap.add_argument(
        "--weights-onnx",
        type=Path,
        default=shared / "weights" / "face_detection_yunet_2023mar_int8bq.onnx",
    )
    ap.add_argument("--max-side", type=int, nargs="+", default=[960, 1280, 1600, 1920, 0])
    ap.add_argument("--iou", type=float, default=0.3)
    ap.add_argument("--upscale", type=int, default=1, help="also run labelled photos x K (1: off)")
    ap.add_argument(
        "--mosaic",
        type=int,
        default=2,
        metavar="K",
        help="also run a 3x3 mosaic of the labelled photos enlarged K times, a "
        "synthetic crowd of 43 faces (0: off)",
    )
    ap.add_argument(
        "--portraits",
        type=int,
        default=0,
        metavar="PX",
        help="also run the single-person photos/ whose long side exceeds PX "
        "(1 face expected each; large faces)",
    )
    ap.add_argument(
        "--coarse-side",
        type=int,
        default=DetectorConfig().coarse_side,
        help="DetectorConfig.coarse_side (0: no pass for large faces)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--opencv", action="store_true", help="compare speed with cv2.FaceDetectorYN")
    ap.add_argument("--quiet", action="store_true", help="summary lines only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    photos = read_photos(args.data / "groups", args.upscale)
    if args.portraits:
        photos += read_portraits(args.data / "photos", args.portraits)
    images = {}
    for p in photos:
        assert p.path is not None
        img = load_rgb(p.path)
        images[p.name] = enlarge(img, p.upscale) if p.upscale > 1 else img
    if args.mosaic > 0:
        k = args.mosaic
        image, boxes = mosaic(photos, k)
        name = f"mosaic 3x3 x{k}"
        photos.append(Photo(name, None, boxes, None, k))
        images[name] = image

    print(
        f"{'photo':<34} {'size':>10} {'max_side':>8} {'true':>4} {'found':>5} {'tp':>3} "
        f"{'recall':>6} {'prec':>6} {'ms':>8}"
    )
    summary = []
    for max_side in args.max_side:
        limit = max_side or NATIVE
        detector = Detector(DetectorConfig(max_side=limit, coarse_side=args.coarse_side))
        # kind -> [true faces, found, true positives, ms, photos]
        totals: dict[str, list[float]] = {
            k: [0, 0, 0, 0.0, 0] for k in ("groups", f"x{args.upscale}", "mosaic", "photos")
        }
        for p in photos:
            img = images[p.name]
            dets, ms = timed(detector, img, args.repeat)
            found = np.asarray([d.box for d in dets], np.float64).reshape(-1, 4)
            if p.boxes is not None:
                tp = match(p.boxes, found, args.iou)
            else:
                tp = min(len(dets), p.n_true)
            rec = tp / p.n_true if p.n_true else float("nan")
            prec = tp / len(dets) if dets else float("nan")
            h, w = img.shape[:2]
            if not args.quiet:
                print(
                    f"{p.name:<34} {w:>4}x{h:<5} {max_side or 'native':>8} {p.n_true:>4} "
                    f"{len(dets):>5} {tp:>3} {rec:>6.3f} {prec:>6.3f} {ms:>8.1f}"
                )
            kind = (
                "mosaic"
                if p.path is None
                else "photos"
                if p.name.startswith("photos/")
                else "groups"
                if p.upscale == 1
                else f"x{p.upscale}"
            )
            t = totals[kind]
            t[0] += p.n_true
            t[1] += len(dets)
            t[2] += tp
            t[3] += ms
            t[4] += 1
        for key, (s_true, s_found, s_tp, s_ms, s_n) in totals.items():
            if s_n:
                summary.append(
                    f"max_side={max_side or 'native':>6} {key:>6}: "
                    f"recall {s_tp:.0f}/{s_true:.0f} = {s_tp / s_true:.3f}, "
                    f"precision {s_tp:.0f}/{s_found:.0f} = {s_tp / max(s_found, 1):.3f}, "
                    f"{s_ms:.0f} ms total over {s_n:.0f} photos ({s_ms / s_n:.1f} ms/photo)"
                )
    print()
    print("\n".join(summary))
    if args.opencv:
        print()
        opencv_speed(args.data, args.weights_onnx, max(args.repeat, 20), args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
