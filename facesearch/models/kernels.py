"""Kernels the networks share: PReLU in place, native when ``facesearch._native`` is built.

PyTorch's ``prelu`` writes its result to a new tensor: on SFace's large early activations that
is a second pass over fresh memory, ~15 % of the network's time. :func:`prelu_` overwrites its
input instead, through the small C kernel of ``facesearch/_native.c`` (built at install time,
optional: :mod:`facesearch.native`). Without it, or for a tensor it does not take, it is
``torch.prelu``: the results are the same bit for bit either way.
"""

from __future__ import annotations

from types import ModuleType

import torch

from facesearch.native import NATIVE, native_available

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


__all__ = ["native_available", "prelu_"]
