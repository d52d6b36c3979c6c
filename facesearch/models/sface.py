"""SFace face embedder (OpenCV Zoo ``face_recognition_sface_2021dec``) in PyTorch.

The network is a MobileFaceNet-style stack without residuals: ``conv_1`` (3x3, 3 -> 32), then
13 depthwise-separable pairs ``conv_N_dw`` (3x3 depthwise) + ``conv_N`` (1x1), each convolution
followed by batch norm (eps 1e-3) and PReLU; the head is ``bn1`` (BatchNorm2d, eps 2e-5) ->
dropout -> flatten in C, H, W order (1024 x 7 x 7 = 50,176 values) -> ``pre_fc1`` (Linear 128)
-> ``fc1`` (BatchNorm1d, eps 2e-5). Input: ``(B, 3, 112, 112) float32`` RGB 0..255, scaled
inside the network as ``(x - 127.5) * 0.0078125`` (as the source graph does). Output: raw
(not normalised) 128-d features, norm about 7..16.

Layer names mirror the ONNX source: ONNX ``conv_5_dw_batchnorm_gamma`` is
``conv_5_dw.batchnorm.weight`` here, ``conv_5_dw_relu_gamma`` is ``conv_5_dw.relu.weight``.

Weights ship in ``weights/sface_2021dec_int8bq.npz`` (made once by ``scripts/convert_sface.py``):
the ONNX initializers under their ONNX names, convolution and FC weights still int8 with their
per-block float scales and int8 zero points. They are dequantized at load time exactly as ONNX
``DequantizeLinear`` does: ``(float(q) - float(zp)) * scale`` of the value's block, blocks
contiguous along ``axis``.

:class:`SFace` is the float, trainable module. :meth:`SFace.fused` gives an inference copy with
every batch norm folded into the preceding convolution or linear layer. :class:`Embedder` turns
aligned uint8 crops into unit-length float32 embeddings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facesearch.errors import ModelError

logger = logging.getLogger(__name__)

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


class ConvBlock(nn.Module):
    """``conv2d`` (no bias) -> ``batchnorm`` (eps 1e-3) -> ``relu`` (PReLU, a slope per channel)."""

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__()
        self.conv2d = nn.Conv2d(
            spec.in_channels,
            spec.out_channels,
            spec.kernel,
            stride=spec.stride,
            padding=spec.kernel // 2,
            groups=spec.groups,
            bias=False,
        )
        self.batchnorm = nn.BatchNorm2d(spec.out_channels, eps=CONV_BN_EPS, momentum=BN_MOMENTUM)
        self.relu = nn.PReLU(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.batchnorm(self.conv2d(x)))


class SFace(nn.Module):
    """The SFace network, float and trainable.

    ``forward(x)``: ``x (B, 3, 112, 112) float32`` RGB in 0..255 -> ``(B, 128) float32`` raw
    features (not normalised). Build it with :func:`load_sface` to get the pretrained weights.
    """

    embedding_dim: int = EMBEDDING_DIM

    def __init__(self, dropout: float = DROPOUT) -> None:
        super().__init__()
        for spec in LAYERS:
            self.add_module(spec.name, ConvBlock(spec))
        self.bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=HEAD_BN_EPS, momentum=BN_MOMENTUM)
        self.dropout5 = nn.Dropout(dropout)
        self.pre_fc1 = nn.Linear(HEAD_CHANNELS * HEAD_SIZE * HEAD_SIZE, EMBEDDING_DIM)
        self.fc1 = nn.BatchNorm1d(EMBEDDING_DIM, eps=HEAD_BN_EPS, momentum=BN_MOMENTUM)

    def blocks(self) -> list[ConvBlock]:
        """The convolution blocks in graph order."""
        return [getattr(self, spec.name) for spec in LAYERS]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - INPUT_MEAN) * INPUT_SCALE  # (B, 3, 112, 112)
        for block in self.blocks():
            x = block(x)  # ... -> (B, 1024, 7, 7)
        x = self.dropout5(self.bn1(x))
        x = torch.flatten(x, 1)  # (B, 50176), C, H, W order
        return self.fc1(self.pre_fc1(x))  # (B, 128)

    def fused(self) -> FusedSFace:
        """An inference-only copy with every batch norm folded into a weight (eval semantics).

        The copy does not follow later changes of this module; fuse again after training.
        """
        return FusedSFace.from_sface(self)


def _bn_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as ``y = a * x + b``: returns ``a, b`` ``(C,)`` float64."""
    assert bn.running_var is not None and bn.running_mean is not None
    var = bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - a * bn.running_mean.double()


class FusedSFace(nn.Module):
    """SFace for inference: batch norms folded into convolutions and the linear layer.

    Same ``forward`` contract as :class:`SFace` (eval mode). Folding is done in float64 and
    changes the features by float32 rounding only (cosine to the unfused model > 0.999999).
    """

    embedding_dim: int = EMBEDDING_DIM

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for spec in LAYERS:
            layers.append(
                nn.Conv2d(
                    spec.in_channels,
                    spec.out_channels,
                    spec.kernel,
                    stride=spec.stride,
                    padding=spec.kernel // 2,
                    groups=spec.groups,
                    bias=True,
                )
            )
            layers.append(nn.PReLU(spec.out_channels))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(HEAD_CHANNELS * HEAD_SIZE * HEAD_SIZE, EMBEDDING_DIM)

    @classmethod
    @torch.no_grad()
    def from_sface(cls, model: SFace) -> FusedSFace:
        """Fold ``model``'s batch norms (running statistics) into its weights, in float64."""
        sd: dict[str, torch.Tensor] = {}
        for i, block in enumerate(model.blocks()):
            a, b = _bn_affine(block.batchnorm)
            w = block.conv2d.weight.detach().double() * a[:, None, None, None]
            sd[f"features.{2 * i}.weight"] = w.float()
            sd[f"features.{2 * i}.bias"] = b.float()
            sd[f"features.{2 * i + 1}.weight"] = block.relu.weight.detach().clone()
        # bn1 (per channel, before the flatten) and fc1 (per output) around pre_fc1.
        a1, b1 = _bn_affine(model.bn1)
        hw = HEAD_SIZE * HEAD_SIZE
        a1 = a1.repeat_interleave(hw)  # (50176,), C, H, W order
        b1 = b1.repeat_interleave(hw)
        a2, b2 = _bn_affine(model.fc1)
        w = model.pre_fc1.weight.detach().double()  # (128, 50176)
        bias = model.pre_fc1.bias.detach().double() + w @ b1
        w.mul_(a1[None, :]).mul_(a2[:, None])
        sd["head.weight"] = w.float()
        sd["head.bias"] = (a2 * bias + b2).float()
        with torch.device("meta"):
            fused = cls()
        fused.load_state_dict(sd, strict=True, assign=True)
        return fused.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - INPUT_MEAN) * INPUT_SCALE  # (B, 3, 112, 112)
        x = self.features(x)  # (B, 1024, 7, 7)
        return self.head(torch.flatten(x, 1))  # (B, 128)


# --------------------------------------------------------------------------- weight loading


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


def state_dict_from_onnx_arrays(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map the source's initializers (ONNX names) to an :class:`SFace` state dict."""
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
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}


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


def load_sface(weights: Path | None = None) -> SFace:
    """The pretrained SFace in eval mode; ``weights`` defaults to the shipped file."""
    path = Path(weights) if weights is not None else WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"SFace weight file not found: {path}")
    meta, arrays = read_weights(path)
    try:
        sd = state_dict_from_onnx_arrays(arrays)
    except KeyError as e:
        raise ModelError(f"{path}: missing tensor {e.args[0]!r}") from e
    with torch.device("meta"):
        model = SFace()  # no random initialisation: every tensor comes from the file
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelError(f"{path} does not fit the SFace architecture: {e}") from e
    logger.debug("loaded SFace weights from %s (source sha256 %s)", path, meta.get("source_sha256"))
    return model.eval()


# --------------------------------------------------------------------------- embedder


#: Crops per forward pass. Measured with 1 and 2 threads: 4-8 crops per pass are the fastest
#: per face (activations stay in cache); 32 is about 1.5x slower per face, 64 also needs about
#: 400 MB more memory.
DEFAULT_BATCH_SIZE: int = 8


class Embedder:
    """Aligned face crops in, unit-length embeddings out.

    ``module`` maps ``(B, 3, 112, 112) float32`` RGB 0..255 to ``(B, D)`` raw features: the
    shipped SFace by default, or any module of that shape (for example a fine-tuned SFace).

    - ``fuse=True`` (default) and an :class:`SFace`: the embedder runs a fused copy
      (:meth:`SFace.fused`, channels-last). It is a snapshot: after changing the weights, build a
      new embedder, or use ``fuse=False``.
    - ``fuse=False``, or any other module: the module itself runs, switched to eval mode for the
      call and back to its previous mode afterwards, so weight updates show at once.

    ``batch_size``: crops per forward pass (memory grows with it; 8 is about the fastest).
    ``flip``: also embed the mirror image of each crop; the two L2-normalised features are averaged
    and normalised again, so each view weighs the same whatever its feature norm. Off by default:
    on LFW View 1 (pairsDevTest) it changed the best-threshold accuracy from 98.8% to 98.7% and
    doubles the cost. ``flip`` and ``batch_size`` are plain attributes and may be changed later.
    """

    def __init__(
        self,
        module: nn.Module | None = None,
        name: str = "sface",
        batch_size: int = DEFAULT_BATCH_SIZE,
        flip: bool = False,
        *,
        fuse: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._module: nn.Module = module if module is not None else load_sface()
        self.name = name
        self.batch_size = batch_size
        self.flip = flip
        self._runner: nn.Module = self._module
        if fuse and isinstance(self._module, SFace):
            fused = self._module.fused().cpu()
            self._runner = fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.dim: int = int(getattr(self._module, "embedding_dim", 0)) or self._probe_dim()

    @property
    def module(self) -> nn.Module:
        """The module given (or loaded): unfused, trainable, never modified by the embedder."""
        return self._module

    def _probe_dim(self) -> int:
        x = np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
        return int(self._forward(x).shape[1])

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        """``(B, 112, 112, 3) uint8`` -> ``(B, D) float32`` raw features, in eval mode."""
        runner = self._runner
        param = next(runner.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = runner.training
        runner.eval()
        try:
            with torch.inference_mode():
                # NHWC uint8 -> NCHW float32 with channels-last strides: no layout copy.
                arr = np.ascontiguousarray(crops)
                if not arr.flags.writeable:  # torch.from_numpy wants a writable buffer
                    arr = arr.copy()
                x = torch.from_numpy(arr).permute(0, 3, 1, 2)
                y = runner(x.to(device=device, dtype=torch.float32))  # (B, D)
                return y.float().cpu().numpy()
        finally:
            runner.train(was_training)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed aligned crops.

        ``crops``: ``(N, 112, 112, 3) uint8`` RGB (from :func:`facesearch.align.align_faces`).
        Returns ``(N, D) float32``, unit L2 norm, C-contiguous; ``(0, D)`` for ``N = 0``.
        Computed ``batch_size`` crops at a time.
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(
                f"crops must be (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) aligned RGB faces, "
                f"got shape {crops.shape}"
            )
        if crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8 RGB 0..255, got dtype {crops.dtype}")
        n = crops.shape[0]
        xb = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, self.batch_size):
            batch = crops[start : start + self.batch_size]  # (b, 112, 112, 3)
            feats = self._forward(batch)  # (b, D)
            if self.flip:
                mirrored = self._forward(batch[:, :, ::-1, :])
                feats = _l2_normalize(feats) + _l2_normalize(mirrored)
            xb[start : start + len(batch)] = _l2_normalize(feats)
        return xb


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm: ``(N, D) -> (N, D) float32`` (a zero row stays zero)."""
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EMBEDDING_DIM",
    "INPUT_SIZE",
    "WEIGHTS_FILE",
    "ConvBlock",
    "Embedder",
    "FusedSFace",
    "SFace",
    "dequantize_blockwise",
    "load_sface",
    "state_dict_from_onnx_arrays",
]
