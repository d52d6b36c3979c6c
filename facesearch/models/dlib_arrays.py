"""dlib's face ResNet without the network: constants, layer table, weight file reading, folding.

Plain numpy, shared by the PyTorch module (:mod:`facesearch.models.dlib_resnet`) and the numpy
engine (:mod:`facesearch.models.dlib_npengine`). Importing this module does not import torch.

The network is dlib's ``dlib_face_recognition_resnet_model_v1`` (Davis King, public domain /
CC0; see ``weights/LICENSE-dlib.txt``), the ``anet_type`` of dlib's
``dnn_face_recognition_ex.cpp``:

- input ``(B, 3, 150, 150)`` RGB 0..255, scaled as ``(x - mean[c]) / 256`` with the per-channel
  means stored in the source file (122.782, 117.001, 104.298);
- ``conv`` 7x7 stride 2, no padding (3 -> 32), ``affine`` (per-channel scale and shift, dlib's
  frozen batch norm), ReLU, max pooling 3x3 stride 2, no padding: 150 -> 72 -> 35;
- 14 residual blocks (:data:`BLOCKS`): ``conv1`` 3x3 (stride 2 and no padding in the first
  block of each width, else stride 1 and padding 1) -> ``affine1`` -> ReLU -> ``conv2`` 3x3
  -> ``affine2``; added to the block's input (downsampling blocks: the input average-pooled
  2x2 stride 2), then ReLU. As in dlib's ``add_prev``, two operands of different shapes add
  on the overlap and the result takes the larger of each dimension, zeros elsewhere (more
  channels after a downsampling, and at 8 -> 3 / 4 the pooled input is larger than the
  convolution's output): 35 -> 17 -> 8 -> 4 -> 2;
- global average pooling, ``fc`` (256 -> 128, no bias). Output: raw 128-d descriptors, norm
  about 1.3-1.6, compared by Euclidean distance (dlib's threshold 0.6).

The weight file (made by ``scripts/convert_dlib.py``) holds the parameters under the PyTorch
state-dict names of :class:`facesearch.models.dlib_resnet.DlibResNet`: convolution and fc
weights as float16 (the parity tests hold the float16 weights to dlib's own descriptors),
biases and affine parameters as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.models.weightfile import read_weight_file

#: The converted weights shipped with the package (CC0, see ``weights/LICENSE-dlib.txt``).
WEIGHTS_FILE: Path = Path(__file__).resolve().parent / "weights" / "dlib_resnet_v1.npz"
#: Format tag written by ``scripts/convert_dlib.py``; a file with another tag is refused.
WEIGHTS_FORMAT: str = "facesearch-dlib-resnet/1"

INPUT_SIZE: int = 150
EMBEDDING_DIM: int = 128
#: dlib's ``input_rgb_image_sized`` means (R, G, B) of the source file and its scale 1/256.
INPUT_MEAN: tuple[float, float, float] = (122.782, 117.001, 104.298)
INPUT_SCALE: float = 1.0 / 256.0
STEM_CHANNELS: int = 32
HEAD_CHANNELS: int = 256


@dataclass(frozen=True)
class BlockSpec:
    """One residual block: two 3x3 convolutions; ``down``: the first has stride 2, no padding."""

    name: str
    in_channels: int
    out_channels: int
    down: bool


def _block_specs() -> tuple[BlockSpec, ...]:
    # (width, blocks) from the input on; every width after the first starts with a downsampling
    levels = [(32, 3), (64, 4), (128, 3), (256, 3), (256, 1)]
    specs: list[BlockSpec] = []
    cin = STEM_CHANNELS
    for i, (width, count) in enumerate(levels):
        for j in range(count):
            specs.append(BlockSpec(f"res{len(specs)}", cin, width, down=i > 0 and j == 0))
            cin = width
    return tuple(specs)


BLOCKS: tuple[BlockSpec, ...] = _block_specs()


#: Spatial sizes through the network (150 in): after the stem, then after each block.
#: A downsampling convolution gives ``(n - 3) // 2 + 1``, its pooled input ``(n - 2) // 2 + 1``;
#: the sum takes the larger.
def block_size(n: int, spec: BlockSpec) -> int:
    """Side of ``spec``'s output for an input of side ``n``."""
    if not spec.down:
        return n
    return max((n - 3) // 2 + 1, (n - 2) // 2 + 1)


def read_weights(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Read a converted weight file: ``(meta, arrays)``, arrays as float32 under their names."""
    expected: dict[str, object] = {
        "input_size": INPUT_SIZE,
        "input_mean": list(INPUT_MEAN),
        "input_scale": INPUT_SCALE,
        "embedding_dim": EMBEDDING_DIM,
    }
    meta, arrays = read_weight_file(
        path,
        network="dlib ResNet",
        fmt=WEIGHTS_FORMAT,
        script="scripts/convert_dlib.py",
        expected=expected,
    )
    return meta, {k: v.astype(np.float32) for k, v in arrays.items()}


def conv_names() -> list[str]:
    """The convolutions in graph order, each followed by the affine of the same suffix."""
    names = ["conv"]
    for spec in BLOCKS:
        names += [f"{spec.name}.conv1", f"{spec.name}.conv2"]
    return names


def affine_of(conv: str) -> str:
    """The affine layer after convolution ``conv`` (``res3.conv1`` -> ``res3.affine1``)."""
    return conv.replace("conv", "affine")


def folded_arrays(state: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every affine folded into its convolution: ``{conv: (weight (O, I, k, k), bias (O,))}``
    float32, computed in float64 (``gamma * (w * x + b) + beta``)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for conv in conv_names():
        aff = affine_of(conv)
        g = state[f"{aff}.weight"].astype(np.float64)
        beta = state[f"{aff}.bias"].astype(np.float64)
        w = state[f"{conv}.weight"].astype(np.float64) * g[:, None, None, None]
        b = state[f"{conv}.bias"].astype(np.float64) * g + beta
        out[conv] = (w.astype(np.float32), b.astype(np.float32))
    return out


def check_chips(chips: np.ndarray) -> np.ndarray:
    """``chips`` as ``(N, 150, 150, 3) uint8`` (dlib face chips, RGB), else ValueError."""
    chips = np.asarray(chips)
    if chips.ndim != 4 or chips.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(
            f"chips must be (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) RGB face chips, "
            f"got shape {chips.shape}"
        )
    if chips.dtype != np.uint8:
        raise ValueError(f"chips must be uint8 RGB 0..255, got dtype {chips.dtype}")
    return chips


__all__ = [
    "BLOCKS",
    "EMBEDDING_DIM",
    "HEAD_CHANNELS",
    "INPUT_MEAN",
    "INPUT_SCALE",
    "INPUT_SIZE",
    "STEM_CHANNELS",
    "WEIGHTS_FILE",
    "WEIGHTS_FORMAT",
    "BlockSpec",
    "affine_of",
    "block_size",
    "check_chips",
    "conv_names",
    "folded_arrays",
    "read_weights",
]
