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
from facesearch.models.yunet_decode import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_SIDE,
    STRIDES,
    WEIGHTS_FORMAT,
    DetectorConfig,
    add_large,
    check_image,
    decode,
    default_weights_path,
    nms_boxes,
    read_weight_arrays,
    round_up,
    to_detections,
)
from facesearch.types import Detection

log = logging.getLogger(__name__)

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


_FUSED_RELU = _MKLDNN and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def conv_relu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``relu(conv(x))`` with the ReLU done by oneDNN inside the convolution (one pass over the
    output instead of two) when ``x`` is
    channels-last; same values as the two steps."""
    if _FUSED_RELU and x.is_contiguous(memory_format=torch.channels_last) and not x.requires_grad:
        pad = conv.padding
        assert isinstance(pad, tuple)
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, list(pad), list(conv.stride), list(conv.dilation),
            conv.groups, "relu", [], "",
        )  # fmt: skip
    return F.relu(conv(x), inplace=True)


class ConvDPUnit(nn.Module):
    """1x1 conv then depthwise 3x3 conv (batch norm already folded in), optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, groups=out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pointwise(x, self.conv1.weight, self.conv1.bias)
        return conv_relu(x, self.conv2) if self.relu else self.conv2(x)


class ConvHead(nn.Module):
    """Stem: 3x3 stride-2 conv + ReLU, then a :class:`ConvDPUnit`."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, stride=2, padding=1)
        self.conv2 = ConvDPUnit(mid_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(conv_relu(x, self.conv1))


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
    return {k: torch.from_numpy(v) for k, v in read_weight_arrays(path).items()}


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
        return round_up(h), round_up(w)


class Detector:
    """Find faces in RGB photos with YuNet, as OpenCV's ``FaceDetectorYN`` does.

    ``config`` is read on every call, so :meth:`with_config` (or assigning ``config``) changes
    thresholds without reloading the network. Inference runs under ``torch.inference_mode``
    with whatever thread count the caller set; calls keep no state between them.
    """

    def __init__(self, config: DetectorConfig | None = None, weights: Path | None = None) -> None:
        self.config = config if config is not None else DetectorConfig()
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
                        dets = to_detections(faces, v.scale_x, v.scale_y)
                        (coarse if v.coarse else fine)[v.image] = dets
        return [add_large(f, c) for f, c in zip(fine, coarse, strict=True)]

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _views(image: np.ndarray, index: int, config: DetectorConfig) -> list[_View]:
        """The view at ``max_side`` and, for photos larger than ``coarse_side``, the coarse one."""
        check_image(image, index)
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
        # (B, Hp, Wp, 3); torch.empty + filling only the padding: faster than torch.zeros
        x = torch.empty((len(batch), pad_h, pad_w, 3), dtype=torch.float32)
        for j, v in enumerate(batch):
            h, w = v.pixels.shape[1:]
            x[j, :h, :w] = v.pixels.permute(1, 2, 0)  # uint8 -> float32
            x[j, h:] = 0.0  # zero padding bottom/right, as OpenCV
            x[j, :h, w:] = 0.0
        # (B, 3, Hp, Wp) channels-last view: no layout copy
        outputs = self.net(x.permute(0, 3, 1, 2))
        return decode([o.numpy() for o in outputs], pad_size, config)


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


__all__ = [
    "DEFAULT_MAX_SIDE",
    "WEIGHTS_FORMAT",
    "Detector",
    "DetectorConfig",
    "YuNet",
    "decode",
    "default_weights_path",
    "load_weights",
    "nms_boxes",
]
