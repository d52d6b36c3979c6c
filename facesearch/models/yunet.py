"""YuNet face detector (libfacedetection / OpenCV Zoo, 2023mar) in PyTorch.

Two layers:

* :class:`YuNet` is the network, a line-by-line port of ``face_detection_yunet_2023mar_int8bq.onnx``
  (layer names mirror the ONNX graph; ``scripts/convert_yunet.py`` made the bundled
  ``weights/yunet_2023mar.npz``). Input ``(B, 3, H, W) float32``, raw 0..255, H and W multiples of
  32; output the 12 raw head tensors in the ONNX order.
* :class:`Detector` is OpenCV's ``cv::FaceDetectorYN`` around it: zero-pad bottom/right to a
  multiple of 32, decode the three strides (8, 16, 32), score ``sqrt(clip(cls) * clip(obj))``,
  threshold, ``cv::dnn::NMSBoxes`` on integer-truncated boxes, ``top_k``. Photos whose long side
  exceeds :attr:`DetectorConfig.max_side` are searched on an antialiased downscaled copy and the
  results mapped back to the original pixels; photos larger than
  :attr:`DetectorConfig.coarse_side` get a second, coarse pass for faces too large for YuNet.
  ``DetectorConfig(max_side=10**9, coarse_side=0)`` is exactly OpenCV at native size.

Coordinates follow OpenCV: boxes are *not* clipped to the image (a face cut by the border keeps
its full extent), landmarks are in YuNet's order (image-left eye, other eye, nose tip, image-left
mouth corner, other mouth corner).

The network takes RGB: the RGB->BGR swap the source model needs is folded into the first
convolution's weights when they are loaded (``input_order="rgb"``), so no pixel is copied for it.
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facesearch.errors import ModelError
from facesearch.types import Detection

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = "facesearch-yunet-npz-1"
STRIDES = (8, 16, 32)
DIVISOR = 32  # the padded input must be a multiple of the coarsest stride
# Long side above which detection runs on a downscaled copy. YuNet finds faces from ~10 px but
# reliably only from ~40 px: the long-side limit sets the smallest face (relative to the photo)
# that survives. Measured with bench/detect_recall.py on a crowd (the 9 hand-labelled group
# photos as a 3000x2250 mosaic, 43 faces of 1.5-4 % of the long side): recall 20/43 at 960,
# 34/43 at 1280, 40/43 at 1600, 41/43 at 1920 and at native size; time grows with the pixels
# (1600 costs 1.56x of 1280, 1920 costs 2.25x). The real group photos score the same (60/70)
# at every limit from 960 to native once the coarse pass below is on.
DEFAULT_MAX_SIDE = 1600
# YuNet misses faces larger than about 500 px (the model card says 10-300 px; its coarsest
# anchors are stride 32): at native size a 2280x1588 couple portrait yields no face. Photos
# whose long side exceeds this also get a pass at this size (faces up to ~75 % of it) and its
# faces that the main pass did not find are added. ~16 % extra time at max_side 1600.
DEFAULT_COARSE_SIDE = 640
DEFAULT_BATCH_SIZE = 16


def default_weights_path() -> Path:
    """The converted weights bundled with the package."""
    return Path(__file__).resolve().parent / "weights" / "yunet_2023mar.npz"


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution, sent straight to oneDNN when the input is channels-last.

    ``x`` ``(B, C, H, W)``, ``weight`` ``(C', C, 1, 1)``, ``bias`` ``(C',)`` -> ``(B, C', H, W)``.
    Same arithmetic as ``F.conv2d``; but on one thread and small batches PyTorch routes a 1x1
    conv to its generic path, which copies channels-last tensors to NCHW and back (2-3x slower).
    """
    if _MKLDNN and x.is_contiguous(memory_format=torch.channels_last):
        return torch.mkldnn_convolution(x, weight, bias, (0, 0), (1, 1), (1, 1), 1)
    return F.conv2d(x, weight, bias)


class ConvDPUnit(nn.Module):
    """1x1 conv then depthwise 3x3 conv (batch norm already folded in), optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(pointwise(x, self.conv1.weight, self.conv1.bias))
        return F.relu(x, inplace=True) if self.relu else x


class ConvHead(nn.Module):
    """Stem: 3x3 stride-2 conv + ReLU, then a :class:`ConvDPUnit`."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, stride=2, padding=1)
        self.conv2 = ConvDPUnit(mid_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x), inplace=True))


class Conv4Layer(nn.Module):
    """Two :class:`ConvDPUnit` in a row."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvDPUnit(in_channels, mid_channels)
        self.conv2 = ConvDPUnit(mid_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class Backbone(nn.Module):
    """Six stages; max-pool 2x2 between them; returns the stride 8, 16 and 32 feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.model0 = ConvHead(3, 16, 16)
        self.model1 = Conv4Layer(16, 16, 32)
        self.model2 = Conv4Layer(32, 32, 64)
        self.model3 = Conv4Layer(64, 64, 64)
        self.model4 = Conv4Layer(64, 64, 64)
        self.model5 = Conv4Layer(64, 64, 64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.model0(x), 2)  # (B, 16, H/4, W/4)
        x = F.max_pool2d(self.model2(self.model1(x)), 2)  # (B, 64, H/8, W/8)
        c3 = self.model3(x)  # (B, 64, H/8, W/8)
        c4 = self.model4(F.max_pool2d(c3, 2))  # (B, 64, H/16, W/16)
        c5 = self.model5(F.max_pool2d(c4, 2))  # (B, 64, H/32, W/32)
        return c3, c4, c5


class Neck(nn.Module):
    """Top-down path: upsample x2 (nearest), add the lateral input, :class:`ConvDPUnit`."""

    def __init__(self) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvDPUnit(64, 64) for _ in STRIDES])

    def forward(
        self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p5 = self.lateral_convs[2](c5)
        p4 = self.lateral_convs[1](c4 + F.interpolate(p5, scale_factor=2.0, mode="nearest"))
        p3 = self.lateral_convs[0](c3 + F.interpolate(p4, scale_factor=2.0, mode="nearest"))
        return p3, p4, p5


_BRANCHES = ("cls", "bbox", "obj", "kps")
# channel slices of the fused 16-channel head output: cls 0, bbox 1:5, obj 5, kps 6:16
_BRANCH_SLICES = {"cls": slice(0, 1), "bbox": slice(1, 5), "obj": slice(5, 6), "kps": slice(6, 16)}


class Head(nn.Module):
    """Per stride: class, box (4), objectness and landmark (10) branches, each a linear
    :class:`ConvDPUnit` (no ReLU).

    The four branches of a level read the same features and their depthwise convs never mix
    channels, so they run as one 1x1 conv to 16 channels and one 16-group 3x3 conv (the
    weights are concatenated on the fly; same arithmetic, 18 fewer convolution calls).
    """

    def __init__(self) -> None:
        super().__init__()
        self.multi_level_cls = nn.ModuleList([ConvDPUnit(64, 1, False) for _ in STRIDES])
        self.multi_level_bbox = nn.ModuleList([ConvDPUnit(64, 4, False) for _ in STRIDES])
        self.multi_level_obj = nn.ModuleList([ConvDPUnit(64, 1, False) for _ in STRIDES])
        self.multi_level_kps = nn.ModuleList([ConvDPUnit(64, 10, False) for _ in STRIDES])

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        per_level = []
        for level, f in enumerate(feats):
            units = [getattr(self, f"multi_level_{b}")[level] for b in _BRANCHES]
            w1 = torch.cat([u.conv1.weight for u in units])  # (16, 64, 1, 1)
            b1 = torch.cat([u.conv1.bias for u in units])
            w2 = torch.cat([u.conv2.weight for u in units])  # (16, 1, 3, 3)
            b2 = torch.cat([u.conv2.bias for u in units])
            y = F.conv2d(pointwise(f, w1, b1), w2, b2, padding=1, groups=16)  # (B, 16, h, w)
            per_level.append(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, 16))  # (B, h*w, 16)
        out: dict[str, list[torch.Tensor]] = {b: [] for b in _BRANCHES}
        for y in per_level:
            for b, channels in _BRANCH_SLICES.items():
                part = y[..., channels]
                out[b].append(part.sigmoid() if b in ("cls", "obj") else part)
        return (*out["cls"], *out["obj"], *out["bbox"], *out["kps"])


class YuNet(nn.Module):
    """The YuNet network.

    ``forward(x)``: ``x`` is ``(B, 3, H, W) float32``, raw 0..255 in the channel order the
    weights were loaded for (the source model's is BGR; see :meth:`from_weights`), H and W
    multiples of 32; channels-last memory is fastest (other layouts are converted). Returns 12
    tensors in the ONNX output order ``cls_8, cls_16, cls_32, obj_8, obj_16, obj_32, bbox_8,
    bbox_16, bbox_32, kps_8, kps_16, kps_32``; at stride ``s`` each is ``(B, (H/s) * (W/s), C)``
    (row-major anchors) with C = 1, 1, 4, 10. ``cls`` and ``obj`` are probabilities (sigmoid
    applied); ``bbox`` is ``(dx, dy, log w, log h)`` and ``kps`` 5 ``(dx, dy)`` in strides.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.neck = Neck()
        self.bbox_head = Head()
        self.input_order: Literal["bgr", "rgb"] = "bgr"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.contiguous(memory_format=torch.channels_last)
        p3, p4, p5 = self.neck(*self.backbone(x))
        return self.bbox_head((p3, p4, p5))

    @classmethod
    def from_weights(
        cls, path: Path | None = None, input_order: Literal["bgr", "rgb"] = "rgb"
    ) -> YuNet:
        """Build the network from a converted ``.npz`` (default: the bundled weights).

        ``input_order="rgb"`` reverses the input channels of the first convolution so the
        network takes RGB; ``"bgr"`` keeps the source model as it is. The module is returned in
        eval mode with gradients off. Raises :class:`ModelError` for a missing or foreign file.
        """
        path = default_weights_path() if path is None else Path(path)
        state = load_weights(path)
        net = cls()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path}: weights do not fit YuNet: {exc}") from exc
        if input_order == "rgb":
            first = net.backbone.model0.conv1.weight
            first.data = first.data.flip(1).contiguous()
        elif input_order != "bgr":
            raise ValueError(f"input_order must be 'rgb' or 'bgr', got {input_order!r}")
        net.input_order = input_order
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        net.eval()
        net.requires_grad_(False)
        return net


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a converted YuNet ``.npz``: ``{state_dict name: float32 tensor}``.

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
    return {
        k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()
    }


# --------------------------------------------------------------------------------------------
# Decoding and NMS (cv::FaceDetectorYN::postProcess + cv::dnn::NMSBoxes)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of :class:`Detector`.

    ``score_threshold``, ``nms_threshold`` and ``top_k`` have OpenCV's meaning and defaults.

    ``max_side``: when the long side of a photo exceeds it, detection runs on a copy scaled so
    that the long side equals ``max_side`` (antialiased bilinear) and the results are mapped
    back to the photo's pixels. Faces under ~40 px at that scale start to be missed, so the
    default 1600 keeps faces down to ~2.5 % of the long side (measured with
    ``bench/detect_recall.py``, see ``DEFAULT_MAX_SIDE``).

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
    outputs: Sequence[torch.Tensor] | Sequence[np.ndarray],
    pad_size: tuple[int, int],
    config: DetectorConfig,
) -> list[np.ndarray]:
    """Raw head outputs of a batch -> faces per image, as OpenCV's ``FaceDetectorYN`` rows.

    ``outputs``: the 12 tensors of :meth:`YuNet.forward` (torch or numpy), batch size B;
    ``pad_size``: ``(pad_h, pad_w)`` of the network input. Returns B arrays ``(M, 15) float32``:
    ``x, y, w, h`` of the box, 5 landmarks ``(x, y)``, score, in input pixels, best first.
    """
    out = [torch.as_tensor(o) for o in outputs]
    cls = torch.cat(out[0:3], dim=1)[..., 0]  # (B, N)
    obj = torch.cat(out[3:6], dim=1)[..., 0]  # (B, N)
    score = torch.sqrt(cls.clamp(0.0, 1.0) * obj.clamp(0.0, 1.0))  # (B, N)
    passed = score >= config.score_threshold  # cheap screen before touching the boxes
    if not bool(passed.any()):
        return [np.zeros((0, 15), np.float32) for _ in range(score.shape[0])]
    bbox = torch.cat(out[6:9], dim=1)  # (B, N, 4)
    kps = torch.cat(out[9:12], dim=1)  # (B, N, 10)
    col, row, stride = _priors(*pad_size)
    results = []
    for b in range(score.shape[0]):
        idx = torch.nonzero(passed[b]).flatten().numpy()
        if idx.size == 0:
            results.append(np.zeros((0, 15), np.float32))
            continue
        s = score[b].numpy()[idx]  # (K,)
        d = bbox[b].numpy()[idx]  # (K, 4)
        k = kps[b].numpy()[idx].reshape(-1, 5, 2)  # (K, 5, 2)
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


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """One image as the network sees it: a ``(3, h, w) uint8`` RGB tensor (a view of the
    caller's array or a resized copy) and the factors that map its pixels back."""

    image: int  # index in the batch
    coarse: bool  # the extra pass for large faces
    pixels: torch.Tensor
    scale_x: float
    scale_y: float

    @property
    def pad_size(self) -> tuple[int, int]:
        h, w = self.pixels.shape[1:]
        return _round_up(h), _round_up(w)


def _round_up(n: int) -> int:
    return ((n - 1) // DIVISOR + 1) * DIVISOR


class Detector:
    """Find faces in RGB photos with YuNet, as OpenCV's ``FaceDetectorYN`` does.

    ``config`` is read on every call, so :meth:`with_config` (or assigning ``config``) changes
    thresholds without reloading the network. Inference runs under ``torch.inference_mode``
    with whatever thread count the caller set; calls keep no state between them.
    """

    def __init__(
        self, config: DetectorConfig = DetectorConfig(), weights: Path | None = None
    ) -> None:
        self.config = config
        self.net = YuNet.from_weights(weights, input_order="rgb")

    def with_config(self, config: DetectorConfig) -> Detector:
        """A detector sharing this one's network with other settings."""
        other = object.__new__(Detector)
        other.config = config
        other.net = self.net
        return other

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in one photo.

        ``image``: ``(H, W, 3) uint8`` RGB. Returns detections (box ``[x1, y1, x2, y2]`` and
        landmarks in pixels of ``image``, score in [0, 1]) sorted by descending score; ``[]``
        when there is no face.
        """
        return self.detect_batch([image])[0]

    def detect_batch(
        self, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[list[Detection]]:
        """Faces in several photos: one list per image, in input order.

        Images whose (possibly downscaled) size pads to the same multiple of 32 share forward
        passes of up to ``batch_size`` images; the results equal :meth:`detect` per image.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        config = self.config
        views = [v for i, img in enumerate(images) for v in self._views(img, i, config)]
        groups: dict[tuple[int, int], list[_View]] = {}
        for v in views:
            groups.setdefault(v.pad_size, []).append(v)
        fine: list[list[Detection]] = [[] for _ in images]
        coarse: list[list[Detection]] = [[] for _ in images]
        with torch.inference_mode():
            for pad_size, members in groups.items():
                for start in range(0, len(members), batch_size):
                    chunk = members[start : start + batch_size]
                    rows = self._run(chunk, pad_size, config)
                    for v, faces in zip(chunk, rows, strict=True):
                        dets = _to_detections(faces, v.scale_x, v.scale_y)
                        (coarse if v.coarse else fine)[v.image] = dets
        return [_add_large(f, c) for f, c in zip(fine, coarse, strict=True)]

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _views(image: np.ndarray, index: int, config: DetectorConfig) -> list[_View]:
        """The view at ``max_side`` and, for photos larger than ``coarse_side``, the coarse one."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            got = type(image).__name__ if not isinstance(image, np.ndarray) else image.dtype
            raise ValueError(f"image {index}: expected a uint8 numpy array, got {got}")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image {index}: expected shape (H, W, 3) RGB, got {image.shape}")
        with warnings.catch_warnings():  # read-only arrays are fine: we never write to them
            warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
            pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W)
        views = [_resized(pixels, config.max_side, index, coarse=False)]
        if config.coarse_side and max(image.shape[:2]) > config.coarse_side:
            views.append(_resized(pixels, config.coarse_side, index, coarse=True))
        return views

    def _run(
        self, batch: Sequence[_View], pad_size: tuple[int, int], config: DetectorConfig
    ) -> list[np.ndarray]:
        pad_h, pad_w = pad_size
        # (B, Hp, Wp, 3); torch.empty + filling only the padding is ~5x faster than torch.zeros
        x = torch.empty((len(batch), pad_h, pad_w, 3), dtype=torch.float32)
        for j, v in enumerate(batch):
            h, w = v.pixels.shape[1:]
            x[j, :h, :w] = v.pixels.permute(1, 2, 0)  # uint8 -> float32
            x[j, h:] = 0.0  # zero padding bottom/right, as OpenCV
            x[j, :h, w:] = 0.0
        # (B, 3, Hp, Wp) channels-last view: no layout copy
        return decode(self.net(x.permute(0, 3, 1, 2)), pad_size, config)


def _resized(pixels: torch.Tensor, long_side: int, index: int, coarse: bool) -> _View:
    """``pixels`` ``(3, H, W) uint8`` as is, or scaled so that its long side is ``long_side``
    (antialiased bilinear, uint8 in and out)."""
    h, w = pixels.shape[1:]
    if max(h, w) <= long_side:
        return _View(index, coarse, pixels, 1.0, 1.0)
    factor = long_side / max(h, w)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    small = F.interpolate(
        pixels[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
    )[0]
    log.debug("image %d: %dx%d -> %dx%d for detection", index, w, h, nw, nh)
    return _View(index, coarse, small, w / nw, h / nh)


def _add_large(fine: list[Detection], coarse: list[Detection]) -> list[Detection]:
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


def _to_detections(rows: np.ndarray, scale_x: float, scale_y: float) -> list[Detection]:
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
    "DEFAULT_MAX_SIDE",
    "Detector",
    "DetectorConfig",
    "YuNet",
    "decode",
    "default_weights_path",
    "load_weights",
    "nms_boxes",
]
