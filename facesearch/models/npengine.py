"""YuNet and SFace in numpy and C: the same networks and weights without importing torch.

Why: importing torch costs more than a one-photo command needs. With the native kernels built
(:mod:`facesearch.native`) this engine is as fast per face as the PyTorch one, so engine
``auto`` (:meth:`facesearch.pipeline.PipelineConfig.resolved`) runs it for the shipped model;
PyTorch stays for training and model files. Without the kernels it is numpy alone, slower per
face than PyTorch, and ``auto`` uses it for small work only.

The engine computes in channels-last float32 ``(B, H, W, C)``, batch norms folded into the
weights (float64 folding, as :meth:`facesearch.models.sface.SFace.fused`):

- 1x1 convolutions: a register-blocked C kernel (6 rows x 16 channels, bias and activation
  fused) when the weights fit in L2 (:data:`_NATIVE_PW_WEIGHTS`), else numpy's BLAS followed by
  the bias and activation in one C pass;
- 3x3 convolutions (the stems, the depthwise layers): direct C kernels, 4 pixels (depthwise) or
  8 accumulators (dense) at a time, bias and activation fused;
- max pooling in C.

Without the native kernels the same operations run in numpy (matrix products, depthwise convolutions
as nine shifted multiply-adds); they are the reference the kernels are tested against. Outputs agree
with the PyTorch modules to float32 rounding: the parity tests (``tests/test_npengine.py``) hold
both variants to the same reference boxes, landmarks and features.

:class:`NumpyDetector` and :class:`NumpyEmbedder` have the interface of
:class:`facesearch.models.yunet.Detector` and :class:`facesearch.models.sface.Embedder`
(``detect``, ``detect_batch``, ``with_config``, ``config``; ``embed``, ``name``, ``dim``,
``flip``, ``batch_size``), so :class:`facesearch.pipeline.FacePipeline` takes either.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from facesearch.errors import ModelError
from facesearch.models.sface_weights import (
    INPUT_MEAN,
    INPUT_SCALE,
    LAYERS,
    STEM_LAYERS,
    WEIGHTS_FILE,
    embed_in_batches,
    fused_arrays,
    read_weights,
    state_arrays,
)
from facesearch.models.weightcache import cache_dir, cached_arrays
from facesearch.models.yunet_decode import (
    DEFAULT_BATCH_SIZE,
    STRIDES,
    DetectorConfig,
    add_large,
    check_image,
    decode,
    default_weights_path,
    read_weight_arrays,
    round_up,
    to_detections,
)
from facesearch.native import NATIVE
from facesearch.types import Detection

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ ops
# Activations are (B, H, W, C) float32, C-contiguous. Weights keep torch's layout on input.
#
# With ``facesearch._native`` built, the convolutions (bias and activation fused) and the max
# pooling run as C kernels that release the GIL; the numpy code below is the fallback and the
# reference they are tested against. Both agree with PyTorch to float32 rounding.

#: The native kernels (``facesearch/_native.c``), or ``None`` for numpy only; tests swap it.
_NATIVE: ModuleType | None = NATIVE

#: A 1x1 convolution whose weights hold at most this many values (256 KB, L2-resident) runs as
#: the native kernel, bias and activation fused; larger ones go to numpy's BLAS (blocked for
#: the cache, faster there), and only the bias and activation are native (bench/results/history.md).
_NATIVE_PW_WEIGHTS = 256 * 256

#: Activations after a convolution (the codes of the native kernels).
ACT_NONE, ACT_RELU, ACT_PRELU = 0, 1, 2


_FLOAT32 = np.dtype(np.float32)


def _native_args(*arrays: np.ndarray | None) -> bool:
    """Whether the native kernels can take these arrays: all float32 and C-contiguous (``None``,
    an absent optional argument such as the PReLU slopes, is fine)."""
    if _NATIVE is None:
        return False
    for a in arrays:  # noqa: SIM110 - a loop, not all(): this runs a few times per layer
        if a is not None and (a.dtype != _FLOAT32 or not a.flags.c_contiguous):
            return False
    return True


def _activate(
    x: np.ndarray, act: int, slope: np.ndarray | None, threads: EngineThreads | None = None
) -> np.ndarray:
    """``x`` in place: ReLU, PReLU (a slope per channel) or nothing."""
    if act == ACT_RELU:
        return _relu(x, threads)
    if act == ACT_PRELU:
        assert slope is not None
        return _prelu(x, slope, threads)
    return x


def _pointwise(
    x: np.ndarray,
    w_t: np.ndarray,
    b: np.ndarray,
    act: int = ACT_NONE,
    slope: np.ndarray | None = None,
    threads: EngineThreads | None = None,
) -> np.ndarray:
    """1x1 convolution: ``w_t`` ``(C, C')`` (transposed), ``b`` ``(C',)``; then ``act``."""
    bsz, h, wd, c = x.shape
    flat = x.reshape(-1, c)
    native = _native_args(flat, w_t, b, slope)
    if native and w_t.size <= _NATIVE_PW_WEIGHTS:
        assert _NATIVE is not None
        y = np.empty((flat.shape[0], w_t.shape[1]), np.float32)
        _NATIVE.pointwise(flat, flat.shape[0], c, w_t, y.shape[1], b, slope, act, y)
        return y.reshape(bsz, h, wd, -1)
    y = flat @ w_t
    if native:
        assert _NATIVE is not None
        _NATIVE.bias_act(y, y.shape[0], y.shape[1], b, slope, act)
    else:
        y += b
        _activate(y, act, slope, threads)
    return y.reshape(bsz, h, wd, -1)


def _conv_native(
    x: np.ndarray,
    w: np.ndarray,
    cout: int,
    b: np.ndarray,
    stride: int,
    act: int,
    slope: np.ndarray | None,
    groups: int,
) -> np.ndarray | None:
    """The native 3x3 convolution, or ``None`` when it cannot take these arrays."""
    if not _native_args(x, w, b, slope):
        return None
    assert _NATIVE is not None
    bsz, h, wd, c = x.shape
    out = np.empty((bsz, (h - 1) // stride + 1, (wd - 1) // stride + 1, cout), np.float32)
    _NATIVE.conv3x3(x, bsz, h, wd, c, stride, w, cout, b, slope, act, groups, out)
    return out


def _dense3x3(
    x: np.ndarray,
    w_mat: np.ndarray,
    b: np.ndarray,
    stride: int,
    act: int = ACT_NONE,
    slope: np.ndarray | None = None,
    threads: EngineThreads | None = None,
) -> np.ndarray:
    """3x3 convolution, padding 1: ``w_mat`` ``(9 * C, C')`` in ``(dy, dx, c)`` row order;
    then ``act``."""
    out = _conv_native(x, w_mat, w_mat.shape[1], b, stride, act, slope, 1)
    if out is not None:
        return out
    bsz, h, wd, c = x.shape
    xp = np.zeros((bsz, h + 2, wd + 2, c), np.float32)
    xp[:, 1:-1, 1:-1] = x
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    cols = np.empty((bsz, ho, wo, 3, 3, c), np.float32)
    for dy in range(3):
        for dx in range(3):
            cols[:, :, :, dy, dx] = xp[
                :,
                dy : dy + stride * (ho - 1) + 1 : stride,
                dx : dx + stride * (wo - 1) + 1 : stride,
            ]
    y = cols.reshape(-1, 9 * c) @ w_mat
    y += b
    return _activate(y.reshape(bsz, ho, wo, -1), act, slope, threads)


def _depthwise3x3(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    stride: int,
    act: int = ACT_NONE,
    slope: np.ndarray | None = None,
    threads: EngineThreads | None = None,
) -> np.ndarray:
    """Depthwise 3x3 convolution, padding 1: ``w`` ``(3, 3, C)``, ``b`` ``(C,)``; then ``act``.

    Numpy: each tap is one multiply-add over whole rows seen as ``(B, H, W * C)`` with the
    weights tiled along the row: numpy's inner loops then run over ``W * C`` values instead of
    ``C``, which is what makes this fast (3-4x over broadcasting a ``(C,)`` vector).
    """
    out = _conv_native(x, w, x.shape[3], b, stride, act, slope, x.shape[3])
    if out is not None:
        return out
    return _activate(_depthwise3x3_numpy(x, w, b, stride, threads), act, slope, threads)


def _depthwise3x3_numpy(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, threads: EngineThreads | None
) -> np.ndarray:
    bsz, h, wd, c = x.shape
    if stride != 1:
        xp = np.zeros((bsz, h + 2, wd + 2, c), np.float32)
        xp[:, 1:-1, 1:-1] = x
        ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
        out = np.empty((bsz, ho, wo, c), np.float32)
        out[:] = b
        tmp = np.empty_like(out)
        for dy in range(3):
            for dx in range(3):
                sl = xp[
                    :,
                    dy : dy + stride * (ho - 1) + 1 : stride,
                    dx : dx + stride * (wo - 1) + 1 : stride,
                ]
                np.multiply(sl, w[dy, dx], out=tmp)
                out += tmp
        return out
    rows = x.reshape(bsz, h, wd * c)
    wt = np.tile(w, (1, 1, wd))  # (3, 3, W * C)
    bt = np.tile(b, wd)
    out = np.empty_like(rows)

    def band(r0: int, r1: int) -> None:
        """Output rows ``[r0, r1)``: the centre tap, then the eight others where they land."""
        o = out[:, r0:r1]
        np.multiply(rows[:, r0:r1], wt[1, 1], out=o)
        o += bt
        tmp = np.empty_like(o)
        for dy in range(3):
            for dx in range(3):
                if dy == 1 and dx == 1:
                    continue
                oy, ox = dy - 1, dx - 1  # the tap reads x[i + oy, j + ox]
                d0, d1 = max(r0, -oy), min(r1, h - oy)  # output rows whose input row exists
                if d0 >= d1:
                    continue
                xs = slice(max(0, ox) * c, (wd + min(0, ox)) * c)
                xd = slice(max(0, -ox) * c, (wd - max(0, ox)) * c)
                t = tmp[:, d0 - r0 : d1 - r0, xd]
                np.multiply(rows[:, d0 + oy : d1 + oy, xs], wt[dy, dx, xd], out=t)
                out[:, d0:d1, xd] += t

    _in_bands(band, h, rows.size, threads)
    return out.reshape(bsz, h, wd, c)


@functools.cache
def _openblas_threads() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """numpy's bundled OpenBLAS ``(get_num_threads, set_num_threads)``, or None if not found."""
    import ctypes
    import glob

    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")
    for path in glob.glob(libs):
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: the same handle
        except OSError:
            continue
        for suffix in ("64_", ""):
            get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                put.argtypes = [ctypes.c_int]
                return get, put
    return None


_blas_lock = threading.Lock()
_blas_users = 0  # callers inside single_threaded_blas()
_blas_before = 1  # OpenBLAS's thread count when the first of them came in


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """OpenBLAS on one thread while any caller is inside (threads may nest and overlap: the
    first one in sets it, the last one out restores it). The engine's matrix products are
    small, and OpenBLAS threads that spin-wait make them several times slower when the cores
    are busy."""
    global _blas_users, _blas_before
    fns = _openblas_threads()
    if fns is None:
        yield
        return
    get, put = fns
    with _blas_lock:
        if _blas_users == 0:
            _blas_before = int(get())
            if _blas_before != 1:
                put(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_before != 1:
                put(_blas_before)


# numpy's ufuncs release the GIL: big maps are cut into bands of rows, one per thread.
_PARALLEL_MIN = 1 << 18  # values; below this a single thread is faster


class EngineThreads:
    """Threads for the engine's element-wise work (BLAS threads are numpy's own setting).

    A pipeline holds one and hands it to its detector and embedder; ``None`` in their place
    means one thread. The pool is made on first use, and again in a forked child (which has
    none of the parent's threads).
    """

    def __init__(self, count: int = 1) -> None:
        if count < 1:
            raise ValueError(f"threads must be >= 1, got {count}")
        self.count = count
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EngineThreads({self.count})"

    @contextlib.contextmanager
    def limited(self, count: int) -> Iterator[None]:
        """At most ``count`` threads inside the block (restored afterwards)."""
        before = self.count
        self.count = min(before, count)
        try:
            yield
        finally:
            self.count = before

    def in_bands(self, fn: Callable[[int, int], None], rows: int, size: int) -> None:
        """``fn(r0, r1)`` over ``[0, rows)`` cut into bands, in parallel for big maps."""
        n = min(self.count, rows)
        if n <= 1 or size < _PARALLEL_MIN:
            fn(0, rows)
            return
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(
                    max_workers=self.count, thread_name_prefix="npengine"
                )
                self._pid = os.getpid()
            pool = self._pool
        cuts = [rows * i // n for i in range(n + 1)]
        futures = [pool.submit(fn, a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if a < b]
        for f in futures:
            f.result()


def _in_bands(
    fn: Callable[[int, int], None], rows: int, size: int, threads: EngineThreads | None
) -> None:
    if threads is None:
        fn(0, rows)
    else:
        threads.in_bands(fn, rows, size)


def _relu(x: np.ndarray, threads: EngineThreads | None = None) -> np.ndarray:
    flat = x.reshape(x.shape[0] * x.shape[1], -1)
    _in_bands(
        lambda a, b: np.maximum(flat[a:b], 0.0, out=flat[a:b]), flat.shape[0], x.size, threads
    )
    return x


def _prelu(x: np.ndarray, slope: np.ndarray, threads: EngineThreads | None = None) -> np.ndarray:
    """PReLU in place: ``x + (a - 1) * min(x, 0)`` (``a * x`` below 0, ``x`` above)."""
    flat = x.reshape(-1, x.shape[-1])
    slope_minus_one = slope - np.float32(1.0)

    def band(a: int, b: int) -> None:
        neg = np.minimum(flat[a:b], 0.0)
        neg *= slope_minus_one
        flat[a:b] += neg

    _in_bands(band, flat.shape[0], x.size, threads)
    return x


def _maxpool2(x: np.ndarray) -> np.ndarray:
    bsz, h, w, c = x.shape
    if _native_args(x):
        assert _NATIVE is not None
        out = np.empty((bsz, h // 2, w // 2, c), np.float32)
        _NATIVE.max_pool2(x, bsz, h, w, c, out)
        return out
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(bsz, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _add_upsampled(lateral: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """``lateral + nearest_upsample_x2(coarse)`` without materialising the upsampled map."""
    bsz, h, w, c = lateral.shape
    y = lateral.reshape(bsz, h // 2, 2, w // 2, 2, c) + coarse[:, :, None, :, None, :]
    return y.reshape(bsz, h, w, c)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------------- YuNet


class _DPUnit:
    """1x1 conv then depthwise 3x3 (batch norm folded), optional ReLU."""

    def __init__(self, w: dict[str, np.ndarray], prefix: str, relu: bool = True) -> None:
        w1 = w[f"{prefix}.conv1.weight"]  # (C', C, 1, 1)
        self.w1_t = np.ascontiguousarray(w1[:, :, 0, 0].T)
        self.b1 = w[f"{prefix}.conv1.bias"]
        self.w2 = np.ascontiguousarray(w[f"{prefix}.conv2.weight"][:, 0].transpose(1, 2, 0))
        self.b2 = w[f"{prefix}.conv2.bias"]
        self.relu = relu

    def __call__(self, x: np.ndarray, threads: EngineThreads | None) -> np.ndarray:
        act = ACT_RELU if self.relu else ACT_NONE
        y = _pointwise(x, self.w1_t, self.b1, threads=threads)
        return _depthwise3x3(y, self.w2, self.b2, 1, act, threads=threads)


class NumpyYuNet:
    """The YuNet network (:class:`facesearch.models.yunet.YuNet`) on numpy arrays.

    ``__call__(x)``: ``x`` ``(B, H, W, 3) float32`` RGB 0..255, H and W multiples of 32 ->
    the 12 head outputs in the ONNX order, each ``(B, anchors, C)``, as :meth:`YuNet.forward`.
    ``threads``: the element-wise threads (``None``: one).
    """

    def __init__(self, weights: Path | None = None, threads: EngineThreads | None = None) -> None:
        self.threads = threads
        path = default_weights_path() if weights is None else Path(weights)
        w = read_weight_arrays(path)
        stem = w["backbone.model0.conv1.weight"][:, ::-1]  # (16, 3, 3, 3), BGR -> RGB input
        self.stem_w = np.ascontiguousarray(stem.transpose(2, 3, 1, 0).reshape(27, -1))
        self.stem_b = w["backbone.model0.conv1.bias"]
        self.stem_unit = _DPUnit(w, "backbone.model0.conv2")
        self.stages = [
            (_DPUnit(w, f"backbone.model{i}.conv1"), _DPUnit(w, f"backbone.model{i}.conv2"))
            for i in range(1, 6)
        ]
        self.lateral = [_DPUnit(w, f"neck.lateral_convs.{i}") for i in range(3)]
        self.heads = []
        branches = ("cls", "bbox", "obj", "kps")
        for level in range(len(STRIDES)):
            parts = [f"bbox_head.multi_level_{b}.{level}" for b in branches]
            fused = {
                "h.conv1.weight": np.concatenate([w[f"{p}.conv1.weight"] for p in parts]),
                "h.conv1.bias": np.concatenate([w[f"{p}.conv1.bias"] for p in parts]),
                "h.conv2.weight": np.concatenate([w[f"{p}.conv2.weight"] for p in parts]),
                "h.conv2.bias": np.concatenate([w[f"{p}.conv2.bias"] for p in parts]),
            }
            self.heads.append(_DPUnit(fused, "h", relu=False))  # 16 channels: 1+4+1+10

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        th = self.threads

        def stage(i: int, t: np.ndarray) -> np.ndarray:
            a, b = self.stages[i - 1]
            return b(a(t, th), th)

        x = self.stem_unit(_dense3x3(x, self.stem_w, self.stem_b, 2, ACT_RELU, threads=th), th)
        x = _maxpool2(x)  # H/4
        x = _maxpool2(stage(2, stage(1, x)))  # H/8
        c3 = stage(3, x)
        c4 = stage(4, _maxpool2(c3))
        c5 = stage(5, _maxpool2(c4))
        p5 = self.lateral[2](c5, th)
        p4 = self.lateral[1](_add_upsampled(c4, p5), th)
        p3 = self.lateral[0](_add_upsampled(c3, p4), th)
        cls, obj, bbox, kps = [], [], [], []
        for head, f in zip(self.heads, (p3, p4, p5), strict=True):
            y = head(f, th)  # (B, h, w, 16)
            y = y.reshape(y.shape[0], -1, 16)
            cls.append(_sigmoid(y[..., 0:1]))
            bbox.append(y[..., 1:5])
            obj.append(_sigmoid(y[..., 5:6]))
            kps.append(y[..., 6:16])
        return (*cls, *obj, *bbox, *kps)


def _resize(image: np.ndarray, long_side: int) -> tuple[np.ndarray, float, float]:
    """``image`` as is, or scaled so its long side is ``long_side`` (antialiased bilinear)."""
    h, w = image.shape[:2]
    if max(h, w) <= long_side:
        return image, 1.0, 1.0
    from PIL import Image

    factor = long_side / max(h, w)
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    return small, w / nw, h / nh


class NumpyDetector:
    """:class:`facesearch.models.yunet.Detector` on the numpy engine: same settings, same
    decoding, results equal to float32 rounding (downscaled photos are resized by Pillow's
    antialiased bilinear instead of torch's, which moves boxes by a fraction of a pixel)."""

    def __init__(
        self,
        config: DetectorConfig | None = None,
        weights: Path | None = None,
        *,
        threads: EngineThreads | None = None,
    ) -> None:
        self.config = config if config is not None else DetectorConfig()
        self.net = NumpyYuNet(weights, threads)

    def with_config(self, config: DetectorConfig) -> NumpyDetector:
        other = object.__new__(NumpyDetector)
        other.config = config
        other.net = self.net
        return other

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in one ``(H, W, 3) uint8`` RGB photo, best score first."""
        return self.detect_batch([image])[0]

    def detect_batch(
        self, images: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[list[Detection]]:
        """Faces in several photos, one list per image (one forward pass per view)."""
        config = self.config
        out: list[list[Detection]] = []
        for i, image in enumerate(images):
            check_image(image, i)
            fine = self._run(image, config.max_side, config)
            coarse: list[Detection] = []
            if config.coarse_side and max(image.shape[:2]) > config.coarse_side:
                coarse = self._run(image, config.coarse_side, config)
            out.append(add_large(fine, coarse))
        return out

    def _run(self, image: np.ndarray, long_side: int, config: DetectorConfig) -> list[Detection]:
        view, sx, sy = _resize(image, long_side)
        h, w = view.shape[:2]
        pad = (round_up(h), round_up(w))
        x = np.zeros((1, pad[0], pad[1], 3), np.float32)  # zero padding bottom/right
        x[0, :h, :w] = view
        with single_threaded_blas():
            outputs = self.net(x)
        rows = decode(outputs, pad, config)[0]
        return to_detections(rows, sx, sy)


# ----------------------------------------------------------------------------------- SFace


def prepare_sface(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An SFace state (:func:`~facesearch.models.sface_weights.state_arrays` names) as the
    arrays :class:`NumpySFace` runs: batch norms folded, weights in the layouts of the ops
    (``"{i}.w"``, ``"{i}.b"``, ``"{i}.s"`` = PReLU slope per conv; ``"head_t"``, ``"head_b"``).
    """
    layers, head_w, head_b = fused_arrays(state)
    out: dict[str, np.ndarray] = {}
    for i, (spec, (w, b, slope)) in enumerate(zip(LAYERS, layers, strict=True)):
        if spec.groups > 1:  # depthwise (C, 1, 3, 3) -> (3, 3, C)
            wm = w[:, 0].transpose(1, 2, 0)
        elif spec.kernel == 1:  # (C', C, 1, 1) -> (C, C')
            wm = w[:, :, 0, 0].T
        else:  # (C', C, 3, 3) -> (9 C, C') in (dy, dx, c) order
            wm = w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
        out[f"{i}.w"] = np.ascontiguousarray(wm)
        out[f"{i}.b"] = b
        out[f"{i}.s"] = np.ascontiguousarray(slope, np.float32)
    dim, hw = head_w.shape[0], 7
    # the head reads (C, H, W)-flattened features; reorder its columns to (H, W, C)
    head_hwc = head_w.reshape(dim, -1, hw, hw).transpose(0, 2, 3, 1).reshape(dim, -1)
    out["head_t"] = np.ascontiguousarray(head_hwc.T)  # (50176, 128)
    out["head_b"] = head_b
    return out


#: SFace's high-resolution stem (the first ``STEM_LAYERS`` convolutions, 112x112 down to 14x14)
#: runs this many crops at a time (0: the whole batch), the rest on the whole batch: its
#: activations (3.2 MB per crop at the widest) then stay in cache (bench/results/history.md).
_STEM_CHUNK = 1


class NumpySFace:
    """The fused SFace network on numpy arrays: ``(B, 112, 112, 3) float32`` RGB 0..255 ->
    ``(B, 128)`` raw features, as :class:`facesearch.models.sface.FusedSFace`.

    Built from :func:`prepare_sface` arrays.
    """

    def __init__(
        self, prepared: dict[str, np.ndarray], threads: EngineThreads | None = None
    ) -> None:
        self.threads = threads
        self.layers = []
        for i, spec in enumerate(LAYERS):
            kind = "dw" if spec.groups > 1 else "pw" if spec.kernel == 1 else "dense"
            w, b, s = (prepared[f"{i}.{k}"] for k in "wbs")
            self.layers.append((kind, w, b, spec.stride, s))
        self.head_t = prepared["head_t"]
        self.head_b = prepared["head_b"]
        self.embedding_dim = int(self.head_t.shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = (x - np.float32(INPUT_MEAN)) * np.float32(INPUT_SCALE)
        chunk = _STEM_CHUNK
        if chunk and x.shape[0] > chunk:  # the stem a few crops at a time, the rest batched
            parts = [self._run(x[i : i + chunk], 0, STEM_LAYERS) for i in range(0, len(x), chunk)]
            x = self._run(np.concatenate(parts), STEM_LAYERS, len(self.layers))
        else:
            x = self._run(x, 0, len(self.layers))
        y = x.reshape(x.shape[0], -1) @ self.head_t
        y += self.head_b
        return y

    def _run(self, x: np.ndarray, start: int, stop: int) -> np.ndarray:
        """``x`` through the convolutions ``[start, stop)``."""
        for kind, w, b, stride, slope in self.layers[start:stop]:
            th = self.threads
            if kind == "dw":
                x = _depthwise3x3(x, w, b, stride, ACT_PRELU, slope, th)
            elif kind == "pw":
                x = _pointwise(x, w, b, ACT_PRELU, slope, th)
            else:
                x = _dense3x3(x, w, b, stride, ACT_PRELU, slope, th)
        return x


#: Version of the prepared-weights cache layout; bump when :func:`prepare_sface` changes.
_CACHE_FORMAT = "sface-np-2"


def _load_prepared_sface(path: Path) -> dict[str, np.ndarray]:
    """:func:`prepare_sface` of the weight file ``path``, through the on-disk cache of
    :mod:`facesearch.models.weightcache` (dequantizing and folding cost more than reading the
    prepared float32 back)."""

    def prepare() -> dict[str, np.ndarray]:
        _, arrays = read_weights(path)
        return prepare_sface(state_arrays(arrays))

    return cached_arrays(path, _CACHE_FORMAT, prepare)


class NumpyEmbedder:
    """:class:`facesearch.models.sface.Embedder` for the shipped SFace, on the numpy engine."""

    def __init__(
        self,
        weights: Path | None = None,
        name: str = "sface",
        batch_size: int = 8,
        flip: bool = False,
        *,
        threads: EngineThreads | None = None,
    ) -> None:
        path = Path(weights) if weights is not None else WEIGHTS_FILE
        if not path.is_file():
            raise ModelError(f"SFace weight file not found: {path}")
        self.net = NumpySFace(_load_prepared_sface(path), threads)
        self.name = name
        self.batch_size = batch_size
        self.flip = flip
        self.dim: int = self.net.embedding_dim
        self.meta: dict[str, Any] = {}  # the model file meta, as a torch Embedder has it
        self.threshold: float | None = None

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """``(N, 112, 112, 3) uint8`` aligned RGB crops -> ``(N, D) float32`` unit vectors."""

        def forward(batch: np.ndarray) -> np.ndarray:
            with single_threaded_blas():
                return self.net(batch.astype(np.float32))

        return embed_in_batches(crops, forward, self.dim, self.batch_size, self.flip)


__all__ = [
    "NumpyDetector",
    "NumpyEmbedder",
    "NumpySFace",
    "NumpyYuNet",
    "EngineThreads",
    "cache_dir",
    "prepare_sface",
    "single_threaded_blas",
]
