"""SFace without the network: constants, layer table, weight file reading, batch-norm folding.

Plain numpy, shared by the PyTorch module (:mod:`facesearch.models.sface`) and the numpy engine
(:mod:`facesearch.models.npengine`). Importing this module does not import torch. See
:mod:`facesearch.models.sface` for the architecture and the weight file format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.errors import ModelError

#: The converted weights shipped with the package (Apache-2.0, see ``weights/LICENSE-sface.txt``).
WEIGHTS_FILE: Path = Path(__file__).resolve().parent / "weights" / "sface_2021dec_int8bq.npz"
#: Format tag written by ``scripts/convert_sface.py``; a file with another tag is refused.
WEIGHTS_FORMAT: str = "facesearch-sface-int8bq/1"

INPUT_SIZE: int = 112
EMBEDDING_DIM: int = 128
#: Input scaling of the source graph: ``(x - INPUT_MEAN) * INPUT_SCALE`` on RGB 0..255.
INPUT_MEAN: float = 127.5
INPUT_SCALE: float = 0.0078125
CONV_BN_EPS: float = 1e-3
HEAD_BN_EPS: float = 2e-5
#: MXNet momentum 0.9 (weight of the old running value) is torch momentum 0.1.
BN_MOMENTUM: float = 0.1
DROPOUT: float = 0.4


@dataclass(frozen=True)
class ConvSpec:
    """One convolution block of the source graph: conv (no bias) -> BN -> PReLU."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int


def _layer_specs() -> tuple[ConvSpec, ...]:
    # (index, depthwise stride, in channels, out channels) of the separable pairs conv_2..conv_14.
    pairs = [
        (2, 1, 32, 64),
        (3, 2, 64, 128),
        (4, 1, 128, 128),
        (5, 2, 128, 256),
        (6, 1, 256, 256),
        (7, 2, 256, 512),
        (8, 1, 512, 512),
        (9, 1, 512, 512),
        (10, 1, 512, 512),
        (11, 1, 512, 512),
        (12, 1, 512, 512),
        (13, 2, 512, 1024),
        (14, 1, 1024, 1024),
    ]
    specs = [ConvSpec("conv_1", 3, 32, 3, 1, 1)]
    for i, stride, cin, cout in pairs:
        specs.append(ConvSpec(f"conv_{i}_dw", cin, cin, 3, stride, cin))
        specs.append(ConvSpec(f"conv_{i}", cin, cout, 1, 1, 1))
    return tuple(specs)


LAYERS: tuple[ConvSpec, ...] = _layer_specs()
HEAD_CHANNELS: int = 1024
HEAD_SIZE: int = 7  # 112 / 2**4

#: Crops per forward pass. Measured with 1 and 2 threads: 4-8 crops per pass are the fastest
#: per face (activations stay in cache); 32 is about 1.5x slower per face, 64 also needs about
#: 400 MB more memory.
DEFAULT_BATCH_SIZE: int = 8
#: The high-resolution stem (the first ``STEM_LAYERS`` convolutions, 112x112 down to 14x14)
#: runs ``STEM_CHUNK`` crops at a time, the rest of the network on the whole batch. A stem
#: activation of 8 crops is up to 26 MB (8 x 64 x 112 x 112 float32): with glibc's default
#: settings every such buffer is mmapped and page-faulted in again on each batch, where chunks
#: of 4 stay in the heap and in cache; with the allocator tuned (:func:`facesearch.process.tune`)
#: the chunk size does not matter (bench/results/history.md).
STEM_LAYERS: int = 12
STEM_CHUNK: int = 4


def dequantize_blockwise(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int, block_size: int
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` with ``block_size``: ``(float(q) - float(zp)) * scale``.

    ``q``: int8 array; ``scale`` float32 and ``zero_point`` int8 have the shape of ``q`` except
    along ``axis``, where they hold ``ceil(q.shape[axis] / block_size)`` entries, one per block of
    ``block_size`` contiguous values. Returns float32 of the shape of ``q``.
    """
    n = q.shape[axis]
    nblocks = -(-n // block_size)
    if scale.shape[axis] != nblocks or zero_point.shape != scale.shape:
        raise ModelError(
            f"quantized tensor {q.shape} with block size {block_size} on axis {axis} needs "
            f"{nblocks} blocks, got scales {scale.shape} and zero points {zero_point.shape}"
        )
    qm = np.moveaxis(q, axis, -1)  # (..., n)
    pad = nblocks * block_size - n
    if pad:
        qm = np.concatenate([qm, np.zeros(qm.shape[:-1] + (pad,), dtype=qm.dtype)], axis=-1)
    blocks = qm.reshape(qm.shape[:-1] + (nblocks, block_size))  # (..., nblocks, block)
    zp = np.moveaxis(zero_point, axis, -1)[..., None].astype(np.float32)
    sc = np.moveaxis(scale, axis, -1)[..., None].astype(np.float32)
    y = blocks.astype(np.float32)
    y -= zp  # small integers: exact in float32
    y *= sc  # the only rounding, as in DequantizeLinear
    y = y.reshape(qm.shape)[..., :n]
    return np.ascontiguousarray(np.moveaxis(y, -1, axis))


def _onnx_quantized(arrays: dict[str, np.ndarray], base: str) -> np.ndarray:
    """Dequantize and reshape the source tensor ``base`` (for example ``conv_3_conv2d_weight``)."""
    w = dequantize_blockwise(
        arrays[f"{base}_quantized"],
        arrays[f"{base}_scales"],
        arrays[f"{base}_zero_point"],
        axis=int(arrays[f"{base}_axis"]),
        block_size=int(arrays[f"{base}_block_size"]),
    )
    shape_key = f"{base}_shape"
    return w.reshape(tuple(int(v) for v in arrays[shape_key])) if shape_key in arrays else w


def state_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the source's initializers (ONNX names) to :class:`SFace` state-dict names (numpy)."""
    sd: dict[str, np.ndarray] = {}

    def bn(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = arrays[f"{src}_gamma"]
        sd[f"{dst}.bias"] = arrays[f"{src}_beta"]
        sd[f"{dst}.running_mean"] = arrays[f"{src}_moving_mean"]
        sd[f"{dst}.running_var"] = arrays[f"{src}_moving_var"]
        sd[f"{dst}.num_batches_tracked"] = np.zeros((), dtype=np.int64)

    for spec in LAYERS:
        n = spec.name
        sd[f"{n}.conv2d.weight"] = _onnx_quantized(arrays, f"{n}_conv2d_weight")
        bn(f"{n}_batchnorm", f"{n}.batchnorm")
        sd[f"{n}.relu.weight"] = arrays[f"{n}_relu_gamma"].reshape(-1)  # (C, 1, 1) -> (C,)
    bn("bn1", "bn1")
    sd["pre_fc1.weight"] = _onnx_quantized(arrays, "pre_fc1_weight")
    sd["pre_fc1.bias"] = _onnx_quantized(arrays, "pre_fc1_bias")
    bn("fc1", "fc1")
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def read_weights(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Read a converted weight file: ``(meta, arrays)`` with arrays under their ONNX names."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise ModelError(f"cannot read SFace weights {path}: {e}") from e
    raw = arrays.pop("__meta__", None)
    if raw is None:
        raise ModelError(f"{path} is not a converted SFace weight file (no __meta__ entry)")
    meta = json.loads(raw.tobytes().decode("utf-8"))
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ModelError(
            f"{path}: weight format {meta.get('format')!r}, expected {WEIGHTS_FORMAT!r}; "
            "re-create it with scripts/convert_sface.py"
        )
    expected = {"input_size": INPUT_SIZE, "input_mean": INPUT_MEAN, "input_scale": INPUT_SCALE}
    expected["embedding_dim"] = EMBEDDING_DIM
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ModelError(f"{path}: {key} is {meta.get(key)!r}, this code expects {value!r}")
    return meta, arrays


def fused_arrays(
    state: dict[str, np.ndarray],
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """Fold every batch norm of an SFace state (numpy, :func:`state_arrays` names) into weights.

    Returns ``(layers, head_weight, head_bias)``: per convolution of :data:`LAYERS`, ``(weight
    (C', C/g, k, k), bias (C',), prelu slope (C',))`` float32; the head ``(128, 50176)`` and
    ``(128,)`` float32 acting on the flattened ``(C, H, W)`` features. Folding runs in float64,
    as :meth:`SFace.fused` does.
    """

    def affine(prefix: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
        var = state[f"{prefix}.running_var"].astype(np.float64)
        a = state[f"{prefix}.weight"].astype(np.float64) / np.sqrt(var + eps)
        b = state[f"{prefix}.bias"].astype(np.float64) - a * state[f"{prefix}.running_mean"]
        return a, b

    layers = []
    for spec in LAYERS:
        a, b = affine(f"{spec.name}.batchnorm", CONV_BN_EPS)
        w = state[f"{spec.name}.conv2d.weight"].astype(np.float64) * a[:, None, None, None]
        slope = state[f"{spec.name}.relu.weight"].astype(np.float32)
        layers.append((w.astype(np.float32), b.astype(np.float32), slope))
    a1, b1 = affine("bn1", HEAD_BN_EPS)
    hw = HEAD_SIZE * HEAD_SIZE
    a1, b1 = np.repeat(a1, hw), np.repeat(b1, hw)  # (50176,), C, H, W order
    a2, b2 = affine("fc1", HEAD_BN_EPS)
    w = state["pre_fc1.weight"].astype(np.float64)  # (128, 50176)
    bias = state["pre_fc1.bias"].astype(np.float64) + w @ b1
    w *= a1[None, :]
    w *= a2[:, None]
    return layers, w.astype(np.float32), (a2 * bias + b2).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm: ``(N, D) -> (N, D) float32`` (a zero row stays zero)."""
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def embed_in_batches(
    crops: np.ndarray,
    forward: Callable[[np.ndarray], np.ndarray],
    dim: int,
    batch_size: int,
    flip: bool,
) -> np.ndarray:
    """What both engines' ``embed`` do around the network.

    Checks ``crops`` (``(N, 112, 112, 3) uint8`` aligned RGB faces), runs ``forward`` (uint8
    crops -> ``(b, dim)`` raw features) ``batch_size`` crops at a time, averages the normalised
    features of each crop and its mirror image when ``flip``, and returns ``(N, dim) float32``
    unit vectors (``(0, dim)`` for ``N = 0``).
    """
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(
            f"crops must be (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) aligned RGB faces, "
            f"got shape {crops.shape}"
        )
    if crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 RGB 0..255, got dtype {crops.dtype}")
    out = np.empty((crops.shape[0], dim), dtype=np.float32)
    for start in range(0, crops.shape[0], batch_size):
        batch = crops[start : start + batch_size]  # (b, 112, 112, 3)
        feats = forward(batch)  # (b, dim)
        if flip:
            feats = l2_normalize(feats) + l2_normalize(forward(batch[:, :, ::-1, :]))
        out[start : start + len(batch)] = l2_normalize(feats)
    return out
