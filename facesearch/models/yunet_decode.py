"""YuNet detection without the network: settings, weights, anchor decoding, NMS, mapping back.

Everything here is plain numpy, shared by the two engines that run the network
(:mod:`facesearch.models.yunet`, PyTorch, and :mod:`facesearch.models.npengine`, numpy), so
both decode, suppress and map boxes the same way, as OpenCV's ``cv::FaceDetectorYN`` does:
zero-pad bottom/right to a multiple of 32, decode the three strides (8, 16, 32), score
``sqrt(clip(cls) * clip(obj))``, threshold, ``cv::dnn::NMSBoxes`` on integer-truncated boxes,
``top_k``. Importing this module does not import torch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.errors import ModelError
from facesearch.types import Detection

WEIGHTS_FORMAT = "facesearch-yunet-npz-1"
STRIDES = (8, 16, 32)
DIVISOR = 32  # the padded input must be a multiple of the coarsest stride
# Long side above which detection runs on a downscaled copy. YuNet finds faces from ~10 px but
# reliably only from ~40 px: the long-side limit sets the smallest face (relative to the photo)
# that survives. 1600 keeps nearly the recall of native size on a crowd at a fraction of the
# time (bench/detect_recall.py; bench/results/history.md).
DEFAULT_MAX_SIDE = 1600
# YuNet misses faces larger than about 500 px (the model card says 10-300 px; its coarsest
# anchors are stride 32): at native size a 2280x1588 couple portrait yields no face. Photos
# whose long side exceeds this also get a pass at this size (faces up to ~75 % of it) and its
# faces that the main pass did not find are added.
DEFAULT_COARSE_SIDE = 640
DEFAULT_BATCH_SIZE = 16


def default_weights_path() -> Path:
    """The converted weights bundled with the package."""
    return Path(__file__).resolve().parent / "weights" / "yunet_2023mar.npz"


def read_weight_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read a converted YuNet ``.npz``: ``{state_dict name: float32 array}``.

    Checks the format tag written by ``scripts/convert_yunet.py``; raises :class:`ModelError`
    with the path and the reason when the file is missing, unreadable or of another format.
    """
    if not path.is_file():
        raise ModelError(f"YuNet weights not found: {path} (run scripts/convert_yunet.py)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile / numpy raise many kinds
        raise ModelError(f"cannot read YuNet weights {path}: {exc}") from exc
    meta_raw = arrays.pop("__meta__", None)
    meta = json.loads(meta_raw.tobytes().decode()) if meta_raw is not None else {}
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ModelError(
            f"{path}: format {meta.get('format')!r}, expected {WEIGHTS_FORMAT!r} "
            "(convert the ONNX file with scripts/convert_yunet.py)"
        )
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of :class:`Detector`.

    ``score_threshold``, ``nms_threshold`` and ``top_k`` have OpenCV's meaning and defaults.

    ``max_side``: when the long side of a photo exceeds it, detection runs on a copy scaled so
    that the long side equals ``max_side`` (antialiased bilinear) and the results are mapped
    back to the photo's pixels. Faces under ~40 px at that scale start to be missed, so the
    default 1600 keeps faces down to ~2.5 % of the long side (see ``DEFAULT_MAX_SIDE``).

    ``coarse_side``: YuNet misses faces over ~500 px. A photo whose long side exceeds
    ``coarse_side`` gets a second pass on a copy of that long side, and the faces it finds that
    overlap no face of the main pass are added. ``0`` turns it off.

    ``DetectorConfig(max_side=10**9, coarse_side=0)`` is exactly OpenCV's ``FaceDetectorYN`` run
    at the photo's own size.
    """

    score_threshold: float = 0.9
    nms_threshold: float = 0.3
    top_k: int = 5000
    max_side: int = DEFAULT_MAX_SIDE
    coarse_side: int = DEFAULT_COARSE_SIDE

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1], got {self.nms_threshold}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.max_side < DIVISOR:
            raise ValueError(f"max_side must be >= {DIVISOR}, got {self.max_side}")
        if self.coarse_side and self.coarse_side < DIVISOR:
            raise ValueError(f"coarse_side must be 0 (off) or >= {DIVISOR}: {self.coarse_side}")


@functools.lru_cache(maxsize=64)
def _priors(pad_h: int, pad_w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchor grid of a padded input: ``col, row, stride`` each ``(N,) float32``, read-only.

    N = sum over strides of (pad_h/s) * (pad_w/s), in the order of the concatenated head outputs
    (stride 8 first, row-major). Memoised per padded size: a pure function of its arguments.
    """
    cols, rows, strides = [], [], []
    for s in STRIDES:
        h, w = pad_h // s, pad_w // s
        r, c = np.divmod(np.arange(h * w, dtype=np.int64), w)
        cols.append(c)
        rows.append(r)
        strides.append(np.full(h * w, s))
    grid = tuple(np.concatenate(a).astype(np.float32) for a in (cols, rows, strides))
    for a in grid:
        a.setflags(write=False)
    return grid  # type: ignore[return-value]


def nms_boxes(
    boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float, top_k: int
) -> np.ndarray:
    """``cv::dnn::NMSBoxes`` for integer rectangles.

    ``boxes`` ``(K, 4) int64`` as ``[x, y, w, h]``, ``scores`` ``(K,) float32``. Keeps scores
    strictly above ``score_threshold``, stable-sorts them descending, keeps the first ``top_k``,
    then greedily drops every box whose IoU with an already kept box exceeds ``nms_threshold``
    (IoU of integer rectangles, ``[x, x + w)``, computed as OpenCV does). Returns the kept
    indices into ``boxes`` ``(M,) int64``, best first.
    """
    cand = np.flatnonzero(scores > np.float32(score_threshold))
    order = cand[np.argsort(-scores[cand], kind="stable")][:top_k]
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    thr = np.float32(nms_threshold)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.where((iw > 0) & (ih > 0), iw * ih, 0).astype(np.float64)
        union = (area[i] + area[rest]).astype(np.float64) - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            # OpenCV: overlap = 1.f - float(jaccardDistance); distance 0 when both areas are 0.
            dist = np.where(area[i] + area[rest] > 0, 1.0 - inter / union, 0.0)
        overlap = np.float32(1.0) - dist.astype(np.float32)
        order = rest[overlap <= thr]
    return np.asarray(keep, dtype=np.int64)


def decode(
    outputs: Sequence[np.ndarray], pad_size: tuple[int, int], config: DetectorConfig
) -> list[np.ndarray]:
    """Raw head outputs of a batch -> faces per image, as OpenCV's ``FaceDetectorYN`` rows.

    ``outputs``: the 12 head arrays in the ONNX order (``cls_8, cls_16, cls_32, obj_*, bbox_*,
    kps_*``; each ``(B, anchors, C)``; anything ``np.asarray`` takes, e.g. CPU tensors), batch
    size B; ``pad_size``: ``(pad_h, pad_w)`` of the network input. Returns B arrays
    ``(M, 15) float32``: ``x, y, w, h`` of the box, 5 landmarks ``(x, y)``, score, in input
    pixels, best first.
    """
    out = [np.asarray(o, dtype=np.float32) for o in outputs]
    cls = np.concatenate(out[0:3], axis=1)[..., 0]  # (B, N)
    obj = np.concatenate(out[3:6], axis=1)[..., 0]  # (B, N)
    score = np.sqrt(np.clip(cls, 0.0, 1.0) * np.clip(obj, 0.0, 1.0))  # (B, N) float32
    passed = score >= np.float32(config.score_threshold)  # cheap screen before the boxes
    if not passed.any():
        return [np.zeros((0, 15), np.float32) for _ in range(score.shape[0])]
    bbox = np.concatenate(out[6:9], axis=1)  # (B, N, 4)
    kps = np.concatenate(out[9:12], axis=1)  # (B, N, 10)
    col, row, stride = _priors(*pad_size)
    results = []
    for b in range(score.shape[0]):
        idx = np.flatnonzero(passed[b])
        if idx.size == 0:
            results.append(np.zeros((0, 15), np.float32))
            continue
        s = score[b][idx]  # (K,)
        d = bbox[b][idx]  # (K, 4)
        k = kps[b][idx].reshape(-1, 5, 2)  # (K, 5, 2)
        c, r, st = col[idx], row[idx], stride[idx]
        cx = (c + d[:, 0]) * st
        cy = (r + d[:, 1]) * st
        w = np.exp(d[:, 2]) * st
        h = np.exp(d[:, 3]) * st
        x1 = cx - w / np.float32(2)
        y1 = cy - h / np.float32(2)
        lx = (k[:, :, 0] + c[:, None]) * st[:, None]  # (K, 5)
        ly = (k[:, :, 1] + r[:, None]) * st[:, None]
        faces = np.empty((idx.size, 15), np.float32)
        faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 3] = x1, y1, w, h
        faces[:, 4:14:2], faces[:, 5:14:2] = lx, ly
        faces[:, 14] = s
        if idx.size > 1:  # OpenCV skips NMS (and its strict '>' threshold) for a single face
            boxes = np.trunc(faces[:, :4]).astype(np.int64)
            keep = nms_boxes(boxes, s, config.score_threshold, config.nms_threshold, config.top_k)
            faces = faces[keep]
        results.append(faces)
    return results


def check_image(image: object, index: int) -> np.ndarray:
    """``image`` if it is an ``(H, W, 3) uint8`` RGB array; ``ValueError`` naming ``index``."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = type(image).__name__ if not isinstance(image, np.ndarray) else image.dtype
        raise ValueError(f"image {index}: expected a uint8 numpy array, got {got}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index}: expected shape (H, W, 3) RGB, got {image.shape}")
    return image


def round_up(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`DIVISOR` (the padded network input)."""
    return ((n - 1) // DIVISOR + 1) * DIVISOR


def add_large(fine: list[Detection], coarse: list[Detection]) -> list[Detection]:
    """``fine`` plus the coarse-pass faces that no fine face covers, by descending score.

    A coarse face is dropped when it shares more than half of the smaller box with a fine one
    (the same face, or one nested in it), so the coarse pass only ever adds faces.
    """
    if not coarse:
        return fine
    if fine:
        a = np.asarray([d.box for d in coarse], np.float64)  # (C, 4)
        b = np.asarray([d.box for d in fine], np.float64)  # (F, 4)
        iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
        ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        smaller = np.minimum(area_a[:, None], area_b[None, :])
        covered = (inter > 0.5 * smaller).any(axis=1)
        coarse = [d for d, c in zip(coarse, covered, strict=True) if not c]
    return sorted(fine + coarse, key=lambda d: -d.score)


def to_detections(rows: np.ndarray, scale_x: float, scale_y: float) -> list[Detection]:
    """OpenCV rows ``(M, 15)`` (x, y, w, h, 5 landmarks, score) -> detections in the original
    image's pixels: input coordinates times the resize factors (pixel edges on integers)."""
    out = []
    for row in rows.astype(np.float64):
        x, y, w, h = row[:4]
        box = (x * scale_x, y * scale_y, (x + w) * scale_x, (y + h) * scale_y)
        pts = row[4:14].reshape(5, 2) * (scale_x, scale_y)
        landmarks = tuple((float(px), float(py)) for px, py in pts)
        out.append(Detection(tuple(float(v) for v in box), landmarks, float(row[14])))  # type: ignore[arg-type]
    return out


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_COARSE_SIDE",
    "DEFAULT_MAX_SIDE",
    "DIVISOR",
    "STRIDES",
    "WEIGHTS_FORMAT",
    "DetectorConfig",
    "add_large",
    "check_image",
    "decode",
    "default_weights_path",
    "nms_boxes",
    "read_weight_arrays",
    "round_up",
    "to_detections",
]
