"""dlib's face ResNet on the numpy engine: the network of :mod:`facesearch.models.dlib_arrays`
without torch, affines folded into the convolutions, activations channels-last float32
``(B, H, W, C)``.

The convolutions (the 7x7 stem and the 28 3x3 ones) run as the native ``conv2d`` kernel
(``facesearch/_native.c``: AVX-512 where the CPU has it, else AVX2, else portable C) on an
input padded once per layer; without the native module they run as numpy matrix products over
gathered patches, which are the reference the kernel is tested against. Pooling, the residual
sums and the head are numpy (they are a few percent of the work).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import numpy as np

from facesearch.errors import ModelError
from facesearch.models.dlib_arrays import (
    BLOCKS,
    INPUT_MEAN,
    INPUT_SCALE,
    WEIGHTS_FILE,
    check_chips,
    conv_names,
    folded_arrays,
    read_weights,
)
from facesearch.models.npengine import ACT_NONE, ACT_RELU, single_threaded_blas
from facesearch.models.sface_weights import l2_normalize
from facesearch.models.weightcache import cached_arrays
from facesearch.native import NATIVE

log = logging.getLogger(__name__)

#: The native kernels (``facesearch/_native.c``), or ``None`` for numpy only; tests swap it.
_NATIVE: ModuleType | None = NATIVE

#: Chips per forward pass: the deep layers read 22 MB of weights per pass, so a few chips share
#: them; 8 keeps the widest activation (8 x 72 x 72 x 32 float32, 5 MB) in L2/L3.
DEFAULT_BATCH_SIZE: int = 8


def conv2d(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, act: int
) -> np.ndarray:
    """Convolution, zero padding ``pad``: ``x (B, H, W, C)``, ``w (kh, kw, C, C')``, ``b (C',)``
    float32 -> ``(B, Ho, Wo, C')`` float32, then ``act`` (:data:`ACT_NONE` or :data:`ACT_RELU`)."""
    if pad:
        bsz, h, wd, c = x.shape
        xp = np.zeros((bsz, h + 2 * pad, wd + 2 * pad, c), np.float32)
        xp[:, pad : pad + h, pad : pad + wd] = x
        x = xp
    bsz, h, wd, c = x.shape
    kh, kw, _, cout = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    if _NATIVE is not None and x.flags.c_contiguous and x.dtype == np.float32:
        out = np.empty((bsz, ho, wo, cout), np.float32)
        _NATIVE.conv2d(x, bsz, h, wd, c, kh, kw, stride, w, cout, b, None, act, out)
        return out
    cols = np.empty((bsz, ho, wo, kh, kw, c), np.float32)
    for dy in range(kh):
        for dx in range(kw):
            cols[:, :, :, dy, dx] = x[
                :,
                dy : dy + stride * (ho - 1) + 1 : stride,
                dx : dx + stride * (wo - 1) + 1 : stride,
            ]
    y = cols.reshape(-1, kh * kw * c) @ w.reshape(-1, cout)
    y += b
    if act == ACT_RELU:
        np.maximum(y, 0.0, out=y)
    return y.reshape(bsz, ho, wo, cout)


def max_pool(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """Max over ``k x k`` windows, no padding: ``(B, H, W, C) -> (B, Ho, Wo, C)``."""
    _, h, w, _ = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    out = x[:, : stride * (ho - 1) + 1 : stride, : stride * (wo - 1) + 1 : stride].copy()
    for dy in range(k):
        for dx in range(k):
            if dy or dx:
                view = x[
                    :,
                    dy : dy + stride * (ho - 1) + 1 : stride,
                    dx : dx + stride * (wo - 1) + 1 : stride,
                ]
                np.maximum(out, view, out=out)
    return out


def avg_pool2(x: np.ndarray) -> np.ndarray:
    """Mean over 2x2 windows, stride 2, no padding (an odd last row / column is dropped)."""
    _, h, w, _ = x.shape
    ho, wo = h // 2, w // 2
    v = x[:, : 2 * ho, : 2 * wo]
    s = v[:, 0::2, 0::2] + v[:, 0::2, 1::2]
    s += v[:, 1::2, 0::2]
    s += v[:, 1::2, 1::2]
    s *= np.float32(0.25)
    return s


def add_relu(y: np.ndarray, skip: np.ndarray) -> np.ndarray:
    """``relu(y + skip)`` with dlib's ``add_prev`` shapes: the larger of each dimension, each
    operand zero outside itself. ``y`` is overwritten when it is the larger one."""
    if y.shape != skip.shape:
        shape = tuple(max(p, q) for p, q in zip(y.shape, skip.shape, strict=True))
        if y.shape != shape:
            big = np.zeros(shape, np.float32)
            big[:, : y.shape[1], : y.shape[2], : y.shape[3]] = y
            y = big
        y[:, : skip.shape[1], : skip.shape[2], : skip.shape[3]] += skip
    else:
        y += skip
    np.maximum(y, 0.0, out=y)
    return y


def prepare_dlib(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A weight-file state (float32) as the arrays :class:`NumpyDlibResNet` runs: affines
    folded, each convolution ``"{name}.w"`` ``(kh, kw, C, C')`` and ``"{name}.b"`` ``(C',)``,
    the head ``"fc_t"`` ``(256, 128)``."""
    out: dict[str, np.ndarray] = {}
    for name, (w, b) in folded_arrays(state).items():
        out[f"{name}.w"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        out[f"{name}.b"] = b
    out["fc_t"] = np.ascontiguousarray(state["fc.weight"].T)
    return out


class NumpyDlibResNet:
    """``(B, 150, 150, 3) float32`` RGB 0..255 -> ``(B, 128) float32`` raw descriptors, as
    :class:`facesearch.models.dlib_resnet.DlibResNet`. Built from :func:`prepare_dlib` arrays."""

    def __init__(self, prepared: dict[str, np.ndarray]) -> None:
        missing = [f"{n}.w" for n in conv_names() if f"{n}.w" not in prepared]
        if missing or "fc_t" not in prepared:
            raise ModelError(f"prepared dlib ResNet weights lack {missing or ['fc_t']}")
        self.w = prepared
        self.embedding_dim = int(prepared["fc_t"].shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        w = self.w
        x = (x - np.asarray(INPUT_MEAN, np.float32)) * np.float32(INPUT_SCALE)  # (B, 150, 150, 3)
        x = conv2d(x, w["conv.w"], w["conv.b"], 2, 0, ACT_RELU)  # (B, 72, 72, 32)
        x = max_pool(x, 3, 2)  # (B, 35, 35, 32)
        for spec in BLOCKS:
            n = spec.name
            stride, pad = (2, 0) if spec.down else (1, 1)
            y = conv2d(x, w[f"{n}.conv1.w"], w[f"{n}.conv1.b"], stride, pad, ACT_RELU)
            y = conv2d(y, w[f"{n}.conv2.w"], w[f"{n}.conv2.b"], 1, 1, ACT_NONE)
            x = add_relu(y, avg_pool2(x) if spec.down else x)  # ... -> (B, 2, 2, 256)
        return x.mean(axis=(1, 2), dtype=np.float32) @ w["fc_t"]  # (B, 128)


#: Version of the prepared-weights cache layout; bump when :func:`prepare_dlib` changes.
_CACHE_FORMAT = "dlib-np-1"


def load_prepared_dlib(path: Path) -> dict[str, np.ndarray]:
    """:func:`prepare_dlib` of the weight file ``path``, through the on-disk cache."""

    def prepare() -> dict[str, np.ndarray]:
        _, arrays = read_weights(path)
        return prepare_dlib(arrays)

    return cached_arrays(path, _CACHE_FORMAT, prepare)


class NumpyDlibEmbedder:
    """dlib face chips in, descriptors out.

    ``embed(chips)``: ``(N, 150, 150, 3) uint8`` RGB chips (:func:`facesearch.align.dlib_chips`)
    -> ``(N, 128) float32`` unit vectors; :meth:`raw` gives dlib's own (unnormalised)
    descriptors, whose Euclidean distances dlib's 0.6 threshold is for.
    """

    def __init__(
        self, weights: Path | None = None, name: str = "dlib", batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = Path(weights) if weights is not None else WEIGHTS_FILE
        if not path.is_file():
            raise ModelError(f"dlib ResNet weight file not found: {path}")
        self.net = NumpyDlibResNet(load_prepared_dlib(path))
        self.name = name
        self.batch_size = batch_size
        self.dim: int = self.net.embedding_dim

    def raw(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 150, 150, 3) uint8`` -> ``(N, 128) float32`` raw descriptors."""
        chips = check_chips(chips)
        out = np.empty((chips.shape[0], self.dim), np.float32)
        with single_threaded_blas():
            for start in range(0, chips.shape[0], self.batch_size):
                batch = chips[start : start + self.batch_size]
                out[start : start + len(batch)] = self.net(batch.astype(np.float32))
        return out

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 150, 150, 3) uint8`` -> ``(N, 128) float32``, unit L2 norm."""
        return l2_normalize(self.raw(chips))


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "NumpyDlibEmbedder",
    "NumpyDlibResNet",
    "add_relu",
    "avg_pool2",
    "conv2d",
    "load_prepared_dlib",
    "max_pool",
    "prepare_dlib",
]
