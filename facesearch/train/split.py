"""Split SFace into a frozen trunk and a trainable tail, by layer name.

``--freeze-until LAYER`` freezes every layer **before** ``LAYER``; ``LAYER`` and everything
after it are trained. Layer names are SFace's: ``conv_1``, ``conv_2_dw``, ``conv_2``, ...,
``conv_14_dw``, ``conv_14`` (the convolution blocks, in graph order), then the head
``bn1`` (BatchNorm2d + dropout + flatten), ``pre_fc1`` (Linear 50,176 -> 128) and ``fc1``
(BatchNorm1d). ``none`` trains the whole network.

Because the trunk is frozen (its parameters fixed, its batch norms in eval mode, no
dropout in it) its output on a photo never changes: :func:`trunk_features` computes it once
per crop, and every epoch runs only the tail (:class:`Tail`) on the cached features. This
is what makes CPU training practical: with the default ``conv_14`` (the last 1x1
convolution and the head are trained, 7.5 M parameters) the tail costs about a tenth of a
full forward pass, and one LFW-sized epoch (3,000 photos) takes well under a minute on 2
cores. (``conv_14_dw`` trains one more, depthwise, layer whose backward pass is slow on CPU.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from facesearch.models.sface import INPUT_MEAN, INPUT_SCALE, LAYERS, SFace

#: Stage names in forward order; ``bn1`` includes dropout and flatten.
STAGES: tuple[str, ...] = tuple(spec.name for spec in LAYERS) + ("bn1", "pre_fc1", "fc1")
NO_FREEZE: str = "none"
DEFAULT_FREEZE_UNTIL: str = "conv_14"


def stage_index(layer: str) -> int:
    """Index in :data:`STAGES` of the first trained stage (``'none'`` -> 0)."""
    if layer == NO_FREEZE:
        return 0
    if layer not in STAGES:
        raise ValueError(
            f"unknown layer {layer!r} for --freeze-until; choose one of: "
            f"{', '.join(STAGES)}, or {NO_FREEZE!r} to train everything"
        )
    return STAGES.index(layer)


def _run(model: SFace, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Run stages ``[start, stop)`` of ``model`` on ``x``, the input of stage ``start``."""
    if start == 0:
        x = (x - INPUT_MEAN) * INPUT_SCALE  # (B, 3, 112, 112)
    for name in STAGES[start:stop]:
        if name == "bn1":
            x = torch.flatten(model.dropout5(model.bn1(x)), 1)  # (B, 1024, 7, 7) -> (B, 50176)
        else:
            x = getattr(model, name)(x)
    return x


def trainable_modules(model: SFace, start: int) -> list[nn.Module]:
    """The child modules trained when stages ``start:`` are trained (dropout5 with bn1)."""
    names = list(STAGES[start:])
    if "bn1" in names:
        names.insert(names.index("bn1") + 1, "dropout5")
    return [getattr(model, n) for n in names]


def freeze(model: SFace, layer: str) -> int:
    """Set ``requires_grad`` for ``--freeze-until layer``; returns the first trained stage index.

    Frozen parameters get ``requires_grad=False``; call :func:`set_train_mode` for the modes.
    """
    start = stage_index(layer)
    for p in model.parameters():
        p.requires_grad_(False)
    for m in trainable_modules(model, start):
        for p in m.parameters():
            p.requires_grad_(True)
    return start


def set_train_mode(model: SFace, start: int, train: bool = True) -> None:
    """Eval mode for the frozen trunk (fixed batch-norm statistics, no dropout); ``train``
    mode for the tail when ``train``."""
    model.eval()
    if train:
        for m in trainable_modules(model, start):
            m.train()


@torch.no_grad()
def trunk_features(
    model: SFace,
    crops: np.ndarray,
    start: int,
    *,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float16,
    flip: bool = False,
    device: torch.device | str = "cpu",
    progress: object | None = None,
) -> torch.Tensor:
    """Output of the frozen trunk (stages ``[0, start)``) for every crop, in eval mode.

    ``crops``: ``(N, 112, 112, 3) uint8`` RGB. ``flip``: mirror the crops first. Returns a CPU
    tensor ``(N, *feature_shape)`` of ``dtype`` (float16 by default, to halve the memory; the
    relative rounding error of 5e-4 does not show in the embeddings: cosine > 0.9999). With
    ``start == 0`` the "features" are the crops themselves as ``(N, 3, 112, 112)`` uint8.
    ``progress``: a tqdm-like object whose ``update(n)`` is called per batch.

    The convolution blocks run as :meth:`SFace.fused` (batch norms folded, channels-last),
    the way the embedder runs them: faster on CPU than the training module, equal to
    float rounding. Small batches (8) are fastest on CPU.
    """
    x_all = torch.from_numpy(np.ascontiguousarray(crops[:, :, ::-1] if flip else crops))
    x_all = x_all.permute(0, 3, 1, 2)  # (N, 3, 112, 112) uint8
    if start == 0:
        return x_all.contiguous()
    n_conv = len(LAYERS)
    conv_stop = min(start, n_conv)
    fused = model.fused().features[: 2 * conv_stop]  # conv (BN folded) + PReLU pairs
    fused = fused.to(device=device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for i in range(0, x_all.shape[0], batch_size):
            x = x_all[i : i + batch_size].to(device=device, dtype=torch.float32)
            x = ((x - INPUT_MEAN) * INPUT_SCALE).contiguous(memory_format=torch.channels_last)
            x = fused(x)  # (B, C, H, W) after block conv_stop - 1
            if start > n_conv:
                x = _run(model, x, n_conv, start)  # head stages in eval mode
            chunks.append(x.to("cpu", dtype).contiguous())
            if progress is not None:
                progress.update(int(x.shape[0]))  # type: ignore[attr-defined]
    finally:
        model.train(was_training)
    if not chunks:
        shape = _feature_shape(model, start)
        return torch.zeros((0, *shape), dtype=dtype)
    return torch.cat(chunks)


def _feature_shape(model: SFace, start: int) -> Sequence[int]:
    with torch.no_grad():
        was = model.training
        model.eval()
        out = _run(model, torch.zeros(1, 3, 112, 112), 0, start)
        model.train(was)
    return tuple(out.shape[1:])


class Tail(nn.Module):
    """Stages ``start:`` of an SFace (sharing its parameters): cached trunk features in,
    unit embeddings out.

    ``forward(h)``: ``h (B, *feature_shape)`` (any float dtype; uint8 crops for
    ``start == 0``) -> ``(B, 128) float32`` **L2-normalised** embeddings.
    """

    def __init__(self, model: SFace, start: int) -> None:
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = _run(self.model, h.float(), self.start, len(STAGES))
        return nn.functional.normalize(x, dim=1)


@torch.no_grad()
def tail_embed(
    model: SFace,
    features: torch.Tensor,
    start: int,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Eval-mode unit embeddings from cached features: ``(N, ...) -> (N, 128) float32``."""
    was_training = model.training
    model.eval()
    tail = Tail(model, start)
    out = []
    try:
        for i in range(0, features.shape[0], batch_size):
            out.append(tail(features[i : i + batch_size].to(device)).cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, model.embedding_dim), np.float32)
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
