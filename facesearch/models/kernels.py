"""Kernels the networks share: PReLU in place (native when ``facesearch._native`` is built), and
1x1 convolutions on weights packed once for oneDNN.

PyTorch's ``prelu`` writes its result to a new tensor: on SFace's large early activations that
is a second pass over fresh memory. :func:`prelu_` overwrites its
input instead, through the small C kernel of ``facesearch/_native.c`` (built at install time,
optional: :mod:`facesearch.native`). Without it, or for a tensor it does not take, it is
``torch.prelu``: the results are the same bit for bit either way.

:class:`PackedWeights`: ``torch.mkldnn_convolution`` reorders a plain weight into oneDNN's blocked
layout on every call, a large part of SFace's ``conv_14``. A :class:`PackedWeights` keeps the
reordered copy of each weight it has seen.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from facesearch.models.yunet import pointwise
from facesearch.native import NATIVE

#: The native kernels used here (``None``: ``torch.prelu``); tests swap it.
_NATIVE: ModuleType | None = NATIVE


def prelu_(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """PReLU with a slope per channel: ``x if x > 0 else slope[c] * x``.

    ``x``: ``(B, C, H, W)`` activation, ``slope``: ``(C,)``. When ``x`` is a float32 CPU tensor
    in channels-last layout that autograd does not track, ``x`` itself is overwritten and
    returned; otherwise the result is ``torch.prelu(x, slope)``, a new tensor. Either way the
    values equal ``torch.prelu``'s bit for bit. Pass an ``x`` nothing else reads afterwards.
    """
    if (
        _NATIVE is None
        or x.dim() != 4
        or x.dtype != torch.float32
        or x.device.type != "cpu"
        or not x.is_contiguous(memory_format=torch.channels_last)
        or (x.requires_grad and torch.is_grad_enabled())
        or slope.dtype != torch.float32
        or slope.device.type != "cpu"
        or slope.dim() != 1
        or slope.numel() != x.shape[1]
        or not slope.is_contiguous()
    ):
        return torch.prelu(x, slope)
    channels = x.shape[1]
    if x.numel():
        _NATIVE.prelu_rows(x.data_ptr(), x.numel() // channels, channels, slope.data_ptr())
    return x


_PACKING = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
)


class PackedWeights:
    """1x1 convolutions whose weights are reordered for oneDNN once, not on every call.

    :meth:`pointwise` is :func:`facesearch.models.yunet.pointwise` (same values, bit for bit)
    for float32 channels-last inputs that autograd does not track; other inputs go to
    ``pointwise`` itself. A packed copy is remade when its weight is replaced or changed in
    place. Copies and pickles of the owner start with no packed weights.
    """

    def __init__(self) -> None:
        # id(weight) -> (data pointer, version counter, packed oneDNN weight)
        self._packed: dict[int, tuple[int, int, torch.Tensor]] = {}

    def pointwise(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``x (B, C, H, W)``, ``weight (C', C, 1, 1)``, ``bias (C',)`` -> ``(B, C', H, W)``."""
        if (
            not _PACKING
            or x.dtype != torch.float32
            or weight.dtype != torch.float32
            or x.device.type != "cpu"
            or not x.is_contiguous(memory_format=torch.channels_last)
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        ):
            return pointwise(x, weight, bias)
        entry = self._packed.get(id(weight))
        if entry is None or entry[0] != weight.data_ptr() or entry[1] != weight._version:
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
                weight.detach().contiguous().to_mkldnn(), [0, 0], [1, 1], [1, 1], 1, list(x.shape)
            )
            entry = (weight.data_ptr(), weight._version, packed)
            self._packed[id(weight)] = entry
        return torch.ops.mkldnn._convolution_pointwise(
            x, entry[2], bias, [0, 0], [1, 1], [1, 1], 1, "none", [], ""
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedWeights:
        return PackedWeights()

    def __getstate__(self) -> dict[str, Any]:
        return {"_packed": {}}


__all__ = ["PackedWeights", "prelu_"]
