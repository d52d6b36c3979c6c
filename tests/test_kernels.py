"""The native in-place PReLU against ``torch.prelu`` (the oracle), bit for bit; its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facesearch.models import kernels
from facesearch.models.kernels import prelu_
from facesearch.native import native_available


def test_native_kernels_are_built() -> None:
    """The install builds ``facesearch._native`` (a C compiler is part of the test setup)."""
    assert native_available(), "facesearch._native is not built: run `pip install -e .` again"


def _activation(shape: tuple[int, int, int, int], seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    flat = x.view(-1)
    n = flat.numel()
    # special values: zeros of both signs, infinities, NaN, subnormals
    specials = torch.tensor([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40])
    idx = torch.from_numpy(rng.choice(n, size=min(n, len(specials)), replace=False))
    flat[idx] = specials[: len(idx)]
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1), (2, 3, 5, 7), (1, 8, 4, 4), (3, 13, 9, 6), (4, 64, 28, 28)]
)
def test_prelu_in_place_equals_torch_prelu(shape: tuple[int, int, int, int]) -> None:
    x = _activation(shape, seed=sum(shape))
    slope = torch.from_numpy(np.random.default_rng(1).uniform(-0.5, 1.5, shape[1]).astype("f4"))
    want = torch.prelu(x, slope)
    got = prelu_(x, slope)
    assert got.data_ptr() == x.data_ptr(), "a channels-last float32 tensor is overwritten"
    assert torch.equal(got.isnan(), want.isnan())
    ok = ~want.isnan()
    assert torch.equal(got[ok].view(torch.int32), want[ok].view(torch.int32)), "not bit-equal"


def test_prelu_falls_back_to_torch_for_other_tensors() -> None:
    slope = torch.tensor([0.25, -0.5, 2.0])
    x = torch.randn(2, 3, 4, 5)  # NCHW: not channels-last
    before = x.clone()
    got = prelu_(x, slope)
    assert torch.equal(x, before), "an NCHW input is not touched"
    assert torch.equal(got, torch.prelu(before, slope))
    xd = before.double().contiguous(memory_format=torch.channels_last)
    assert torch.equal(prelu_(xd, slope.double()), torch.prelu(xd, slope.double()))


def test_prelu_keeps_autograd_working() -> None:
    slope = torch.tensor([0.25, 0.5])
    x = torch.randn(2, 2, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    prelu_(x, slope).sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, torch.where(x > 0, 1.0, slope.view(1, 2, 1, 1)).expand_as(x))


def test_packed_pointwise_equals_plain_and_follows_the_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1x1 convolutions on packed weights: ``pointwise``'s values bit for bit, a new packed
    copy when the weight changes in place, and copies of the owner start empty."""
    import copy

    from facesearch.models.kernels import PackedWeights
    from facesearch.models.yunet import pointwise

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 24, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(40, 24, 1, 1, generator=gen)
    bias = torch.randn(40, generator=gen)
    packs = PackedWeights()
    with torch.inference_mode():
        assert torch.equal(packs.pointwise(x, weight, bias), pointwise(x, weight, bias))
        weight.mul_(-0.5)  # in place: the packed copy is stale
        assert torch.equal(packs.pointwise(x, weight, bias), pointwise(x, weight, bias))
        nchw = x.contiguous()  # not channels-last: pointwise itself
        assert torch.equal(packs.pointwise(nchw, weight, bias), pointwise(nchw, weight, bias))
    assert copy.deepcopy(packs)._packed == {}


@pytest.mark.parametrize(
    ("switch", "off"), [("_NATIVE", None), ("_PACKING", False)], ids=["native-prelu", "packing"]
)
def test_sface_is_the_same_with_and_without(
    switch: str, off: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole fused SFace, bit for bit, with the native PReLU or the packed weights off."""
    from facesearch.models.sface import load_fused_sface

    net = load_fused_sface().to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 3, 112, 112, generator=gen) * 255).contiguous(
        memory_format=torch.channels_last
    )
    with torch.inference_mode():
        fast = net(x)
        monkeypatch.setattr(kernels, switch, off)
        plain = net(x)
    assert torch.equal(fast, plain)
