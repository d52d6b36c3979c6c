"""dlib's face ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch, for training.

The architecture, the input convention and the weight file are described in
:mod:`facesearch.models.dlib_arrays`. Layer names mirror dlib's layers: ``conv`` / ``affine``
(the stem), ``resN.conv1`` / ``resN.affine1`` / ``resN.conv2`` / ``resN.affine2``, ``fc``.
dlib's ``affine`` layer is a frozen batch norm (a scale and a shift per channel); here it is an
:class:`Affine` module whose two vectors are trainable parameters.

Inference runs on the numpy engine (:mod:`facesearch.models.dlib_npengine`), which folds the
affines into the convolutions; this module is what a fine-tuning loop trains, and the
reference the engine is tested against.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facesearch.errors import ModelError
from facesearch.models.dlib_arrays import (
    BLOCKS,
    EMBEDDING_DIM,
    HEAD_CHANNELS,
    INPUT_MEAN,
    INPUT_SCALE,
    STEM_CHANNELS,
    WEIGHTS_FILE,
    BlockSpec,
    read_weights,
)

logger = logging.getLogger(__name__)


class Affine(nn.Module):
    """``y = weight[c] * x + bias[c]`` on ``(B, C, H, W)``: dlib's ``affine`` layer."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum on the overlap of ``(B, C, H, W)`` tensors of different
    sizes, shaped as the larger of each dimension, each operand zero outside itself."""
    if a.shape == b.shape:
        return a + b
    shape = [max(p, q) for p, q in zip(a.shape, b.shape, strict=True)]
    out = a.new_zeros(shape)
    out[: a.shape[0], : a.shape[1], : a.shape[2], : a.shape[3]] += a
    out[: b.shape[0], : b.shape[1], : b.shape[2], : b.shape[3]] += b
    return out


class ResBlock(nn.Module):
    """``relu(x' + affine2(conv2(relu(affine1(conv1(x))))))``, ``x'`` = ``x`` or, in a
    downsampling block, ``x`` average-pooled 2x2 stride 2."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        stride, pad = (2, 0) if spec.down else (1, 1)
        self.down = spec.down
        self.conv1 = nn.Conv2d(spec.in_channels, spec.out_channels, 3, stride, pad)
        self.affine1 = Affine(spec.out_channels)
        self.conv2 = nn.Conv2d(spec.out_channels, spec.out_channels, 3, 1, 1)
        self.affine2 = Affine(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_padded(y, skip))


class DlibResNet(nn.Module):
    """dlib's face ResNet: ``(B, 3, 150, 150) float32`` RGB 0..255 -> ``(B, 128)`` raw
    descriptors. Build it with :func:`load_dlib_resnet` to get the pretrained weights."""

    embedding_dim: int = EMBEDDING_DIM
    mean: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, STEM_CHANNELS, 7, 2, 0)
        self.affine = Affine(STEM_CHANNELS)
        for spec in BLOCKS:
            self.add_module(spec.name, ResBlock(spec))
        self.fc = nn.Linear(HEAD_CHANNELS, EMBEDDING_DIM, bias=False)
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1), persistent=False)

    def blocks(self) -> list[ResBlock]:
        """The residual blocks from the input on."""
        return [getattr(self, spec.name) for spec in BLOCKS]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * INPUT_SCALE  # (B, 3, 150, 150)
        x = F.relu(self.affine(self.conv(x)))  # (B, 32, 72, 72)
        x = F.max_pool2d(x, 3, 2)  # (B, 32, 35, 35)
        for block in self.blocks():
            x = block(x)  # ... -> (B, 256, 2, 2)
        return self.fc(x.mean(dim=(2, 3)))  # (B, 128)


def load_dlib_resnet(weights: Path | None = None) -> DlibResNet:
    """The pretrained network in eval mode; ``weights`` defaults to the shipped file."""
    path = Path(weights) if weights is not None else WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"dlib ResNet weight file not found: {path}")
    meta, arrays = read_weights(path)
    with torch.device("meta"):
        model = DlibResNet()
    try:
        model.load_state_dict(
            {k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True, assign=True
        )
    except RuntimeError as e:
        raise ModelError(f"{path} does not fit the dlib ResNet architecture: {e}") from e
    model.mean = torch.tensor(INPUT_MEAN).view(1, 3, 1, 1)  # not in the file: made on meta
    logger.debug("loaded dlib ResNet from %s (source sha256 %s)", path, meta.get("source_sha256"))
    return model.eval()


__all__ = ["Affine", "DlibResNet", "ResBlock", "add_padded", "load_dlib_resnet"]
