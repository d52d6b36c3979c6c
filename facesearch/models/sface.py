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

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facesearch.errors import ModelError
from facesearch.models.kernels import PackedWeights, prelu_
from facesearch.models.sface_weights import (
    BN_MOMENTUM,
    CONV_BN_EPS,
    DEFAULT_BATCH_SIZE,
    DROPOUT,
    EMBEDDING_DIM,
    HEAD_BN_EPS,
    HEAD_CHANNELS,
    HEAD_SIZE,
    INPUT_MEAN,
    INPUT_SCALE,
    INPUT_SIZE,
    LAYERS,
    STEM_CHUNK,
    STEM_LAYERS,
    WEIGHTS_FILE,
    ConvSpec,
    dequantize_blockwise,
    embed_in_batches,
    read_weights,
    state_arrays,
)

logger = logging.getLogger(__name__)


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
        self._packs = PackedWeights()  # oneDNN copies of the 1x1 weights, made on first use

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
        layers = list(self.features)
        pairs = list(zip(layers[::2], layers[1::2], strict=True))
        stem, rest = pairs[:STEM_LAYERS], pairs[STEM_LAYERS:]
        # the stem a few crops at a time (its activations stay in cache), the rest batched
        parts = [
            _run((x[i : i + STEM_CHUNK] - INPUT_MEAN) * INPUT_SCALE, stem, self._packs)
            for i in range(0, x.shape[0], STEM_CHUNK)
        ]  # (b, 3, 112, 112) -> (b, 256, 14, 14) each
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        x = _run(x, rest, self._packs)  # (B, 1024, 7, 7)
        return self.head(torch.flatten(x, 1))  # (B, 128)


def _run(
    x: torch.Tensor, pairs: list[tuple[nn.Module, nn.Module]], packs: PackedWeights
) -> torch.Tensor:
    """``x`` through (convolution, PReLU) pairs of :class:`FusedSFace`; each PReLU overwrites
    the fresh output of its convolution when it can (:func:`facesearch.models.kernels.prelu_`);
    the 1x1 convolutions run on packed weights (:class:`facesearch.models.kernels.PackedWeights`).
    """
    for conv, act in pairs:
        assert isinstance(conv, nn.Conv2d) and isinstance(act, nn.PReLU)
        if conv.kernel_size == (1, 1):
            x = prelu_(packs.pointwise(x, conv.weight, conv.bias), act.weight)
        else:
            x = prelu_(conv(x), act.weight)
    return x


# --------------------------------------------------------------------------- weight loading


def state_dict_from_onnx_arrays(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map the source's initializers (ONNX names) to an :class:`SFace` state dict."""
    return {k: torch.from_numpy(v) for k, v in state_arrays(arrays).items()}


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


#: Tag of the fused-weights cache entries; bump when :meth:`FusedSFace.from_sface` changes.
_FUSED_CACHE_TAG = "sface-torch-fused-1"


def load_fused_sface(weights: Path | None = None) -> FusedSFace:
    """:meth:`SFace.fused` of the pretrained weights, through the on-disk cache of
    :mod:`facesearch.models.weightcache` (loading and folding cost ~0.4 s per process, reading
    the folded weights back ~30 ms)."""
    from facesearch.models.weightcache import cached_arrays

    path = Path(weights) if weights is not None else WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"SFace weight file not found: {path}")

    def prepare() -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in load_sface(path).fused().state_dict().items()}

    arrays = cached_arrays(path, _FUSED_CACHE_TAG, prepare)
    with torch.device("meta"):
        fused = FusedSFace()
    try:
        fused.load_state_dict(
            {k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True, assign=True
        )
    except RuntimeError as e:  # a cache entry of another shape: prepare afresh
        logger.warning("ignoring fused SFace weights that do not fit: %s", e)
        return load_sface(path).fused()
    return fused.eval().requires_grad_(False)


# --------------------------------------------------------------------------- embedder


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
        # the shipped SFace, fused: its folded weights come from the cache, and the trainable
        # module is loaded only if asked for (``module``)
        self._module: nn.Module | None = module
        self.name = name
        self.batch_size = batch_size
        self.flip = flip
        if module is None and fuse:
            fused: nn.Module = load_fused_sface()
        elif fuse and isinstance(self.module, SFace):
            fused = self.module.fused().cpu()
        else:
            fused = self.module
        self._runner: nn.Module = fused
        if fused is not self._module:
            self._runner = fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.dim: int = int(getattr(self._runner, "embedding_dim", 0)) or self._probe_dim()

    @property
    def module(self) -> nn.Module:
        """The module given (or loaded): unfused, trainable, never modified by the embedder."""
        if self._module is None:
            self._module = load_sface()
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
        return embed_in_batches(crops, self._forward, self.dim, self.batch_size, self.flip)


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
    "load_fused_sface",
    "load_sface",
    "state_dict_from_onnx_arrays",
]
