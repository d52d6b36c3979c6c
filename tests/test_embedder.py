"""SFace in torch: parity with the reference features and onnxruntime; the Embedder contract.

Oracles: ``../shared/reference/aligned`` (OpenCV ``FaceRecognizerSF.feature`` on 40 saved crops),
onnxruntime on the source ONNX file (test-only dependency), one-by-one embedding for batching.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facesearch.errors import ModelError
from facesearch.models.sface import (
    EMBEDDING_DIM,
    WEIGHTS_FILE,
    Embedder,
    SFace,
    dequantize_blockwise,
    load_sface,
    read_weights,
    state_dict_from_onnx_arrays,
)

SOURCE_ONNX = "face_recognition_sface_2021dec_int8bq.onnx"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sface() -> SFace:
    return load_sface()


@pytest.fixture(scope="module")
def embedder(sface: SFace) -> Embedder:
    return Embedder(sface)


@pytest.fixture(scope="module")
def aligned(reference: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 40 reference crops ``(40, 112, 112, 3) uint8`` RGB and their features ``(40, 128)``."""
    from PIL import Image

    rows = [
        json.loads(line)
        for line in (reference / "aligned" / "aligned.jsonl").read_text().splitlines()
    ]
    # The PNGs hold RGB (cv2.imwrite of the BGR crop); PIL reads them as RGB.
    crops = np.stack([np.asarray(Image.open(reference / r["crop"]).convert("RGB")) for r in rows])
    feats = np.asarray([r["feature"] for r in rows], dtype=np.float64)
    return crops, feats


def cosines(xb: np.ndarray, feats: np.ndarray) -> np.ndarray:
    return np.sum(xb * (feats / np.linalg.norm(feats, axis=1, keepdims=True)), axis=1)


@pytest.fixture(scope="module")
def source_onnx(shared: Path) -> Path:
    path = shared / "weights" / SOURCE_ONNX
    if not path.is_file():
        pytest.skip(f"source model {path} not found")
    return path


# --------------------------------------------------------------------------- parity


def test_reference_features(embedder: Embedder, aligned: tuple[np.ndarray, np.ndarray]) -> None:
    """Every one of the 40 reference crops: cosine >= 0.99999 to OpenCV's feature."""
    crops, feats = aligned
    cos = cosines(embedder.embed(crops), feats)
    assert cos.min() >= 0.99999, f"crop {int(np.argmin(cos))}: cosine {cos.min():.8f}"


def test_reference_features_unfused(sface: SFace, aligned: tuple[np.ndarray, np.ndarray]) -> None:
    """The trainable (unfused) module too, on every fourth crop."""
    crops, feats = aligned
    cos = cosines(Embedder(sface, fuse=False).embed(crops[::4]), feats[::4])
    assert cos.min() >= 0.99999, f"cosine {cos.min():.8f}"


def test_shipped_weights_come_from_the_source(source_onnx: Path) -> None:
    meta, _ = read_weights(WEIGHTS_FILE)
    assert meta["source"] == SOURCE_ONNX
    assert meta["source_sha256"] == hashlib.sha256(source_onnx.read_bytes()).hexdigest()


def test_matches_onnxruntime(sface: SFace, source_onnx: Path) -> None:
    """Dequantized weights are bit-identical to ORT's DequantizeLinear; outputs agree."""
    onnx = pytest.importorskip("onnx", reason="reads the source model (dev dependency)")
    ort = pytest.importorskip("onnxruntime", reason="the oracle (dev dependency)")
    model = onnx.load(str(source_onnx))
    graph = model.graph
    data = [i for i in graph.input if i.name == "data"]
    del graph.input[:]
    graph.input.extend(data)  # drop the 29 unused float inputs ORT refuses
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    dequantized = [n.output[0] for n in graph.node if n.op_type == "Reshape"]
    dequantized += ["pre_fc1_weight_dequantized", "pre_fc1_bias_dequantized"]
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in dequantized)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (3, 3, 112, 112)).astype(np.float32)
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x}), strict=True))

    sd = sface.state_dict()
    for name in dequantized:
        key = {
            "pre_fc1_weight_dequantized": "pre_fc1.weight",
            "pre_fc1_bias_dequantized": "pre_fc1.bias",
        }.get(name, name.removesuffix("_conv2d_weight_reshaped") + ".conv2d.weight")
        np.testing.assert_array_equal(sd[key].numpy(), out[name], err_msg=key)

    ref = out[graph.output[0].name]  # (3, 128)
    with torch.inference_mode():
        for net in (sface, sface.fused()):
            y = net(torch.from_numpy(x)).numpy()
            assert np.abs(y - ref).max() < 1e-4
            assert cosines(y, ref).min() > 0.999999


def test_dequantize_blockwise_matches_onnx_reference() -> None:
    """A ragged last block (7 values, block 3) against ONNX's reference DequantizeLinear."""
    onnx = pytest.importorskip("onnx", reason="the ONNX reference evaluator is the oracle")
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (4, 7), dtype=np.int8)
    scale = rng.uniform(1e-3, 1e-1, (4, 3)).astype(np.float32)
    zp = rng.integers(-128, 128, (4, 3), dtype=np.int8)
    node = onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1, block_size=3)
    expected = ReferenceEvaluator(node).run(None, {"q": q, "s": scale, "z": zp})[0]
    ours = dequantize_blockwise(q, scale, zp, axis=1, block_size=3)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)


# --------------------------------------------------------------------------- embedder contract


def test_output_contract(embedder: Embedder, aligned: tuple[np.ndarray, np.ndarray]) -> None:
    xb = embedder.embed(aligned[0][:5])
    assert xb.shape == (5, EMBEDDING_DIM) and embedder.dim == EMBEDDING_DIM
    assert xb.dtype == np.float32 and xb.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-6)
    assert embedder.name == "sface"


def test_batching_invariance(sface: SFace, aligned: tuple[np.ndarray, np.ndarray]) -> None:
    crops = aligned[0][:9]
    embedder = Embedder(sface, batch_size=1)
    one_by_one = np.concatenate([embedder.embed(c[None]) for c in crops])
    # 3 + 3 + 3, 5 + 4, and 9 at once: its stem in chunks of STEM_CHUNK (4 + 4 + 1)
    for batch_size in (3, 5, 9):
        embedder.batch_size = batch_size
        xb = embedder.embed(crops)
        np.testing.assert_allclose(xb, one_by_one, atol=2e-6, err_msg=f"batch_size={batch_size}")


def test_empty_input(embedder: Embedder) -> None:
    xb = embedder.embed(np.zeros((0, 112, 112, 3), dtype=np.uint8))
    assert xb.shape == (0, EMBEDDING_DIM) and xb.dtype == np.float32


@pytest.mark.parametrize(
    ("crops", "message"),
    [
        (np.zeros((112, 112, 3), dtype=np.uint8), r"\(N, 112, 112, 3\)"),
        (np.zeros((2, 3, 112, 112), dtype=np.uint8), r"got shape \(2, 3, 112, 112\)"),
        (np.zeros((2, 112, 112, 3), dtype=np.float32), "uint8"),
    ],
)
def test_rejects_bad_crops(embedder: Embedder, crops: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        embedder.embed(crops)


def test_flip(sface: SFace, aligned: tuple[np.ndarray, np.ndarray]) -> None:
    crops = aligned[0][:4]
    flipped = Embedder(sface, flip=True)
    xb = flipped.embed(crops)
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-6)
    # Symmetric by construction: a crop and its mirror image get the same embedding.
    np.testing.assert_allclose(
        flipped.embed(np.ascontiguousarray(crops[:, :, ::-1])), xb, atol=2e-6
    )
    # It is the renormalised mean of the two unit embeddings.
    plain = Embedder(sface)
    a, b = plain.embed(crops), plain.embed(np.ascontiguousarray(crops[:, :, ::-1]))
    mean = (a + b) / np.linalg.norm(a + b, axis=1, keepdims=True)
    np.testing.assert_allclose(xb, mean, atol=2e-6)
    assert np.all(np.sum(xb * a, axis=1) > 0.9)


# --------------------------------------------------------------------------- module and loading


def test_module_is_trainable_and_embedder_sees_it_unfused(sface: SFace) -> None:
    assert not sface.training
    model = copy.deepcopy(sface)
    embedder = Embedder(model, fuse=False)
    assert embedder.module is model
    model.train()
    x = torch.rand(2, 3, 112, 112) * 255
    loss = model(x).pow(2).sum()
    loss.backward()
    assert model.conv_1.conv2d.weight.grad is not None and model.pre_fc1.weight.grad is not None
    crops = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    before = embedder.embed(crops)
    assert model.training  # the embedder restores the caller's mode
    with torch.no_grad():
        model.fc1.bias.add_(1.0)  # a weight update is seen at once without fusing
    assert np.abs(embedder.embed(crops) - before).max() > 1e-3


def test_embedder_with_another_module() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.mean(dim=(2, 3)))  # (B, 3, 112, 112) -> (B, 16)

    torch.manual_seed(0)
    embedder = Embedder(Tiny(), name="tiny", batch_size=2)
    crops = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    xb = embedder.embed(crops)
    assert embedder.dim == 16 and embedder.name == "tiny" and xb.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-6)


def test_state_dict_names_mirror_onnx() -> None:
    _, arrays = read_weights(WEIGHTS_FILE)
    sd = state_dict_from_onnx_arrays(arrays)
    assert set(sd) == set(SFace().state_dict())
    assert sd["conv_5_dw.relu.weight"].shape == (128,)
    np.testing.assert_array_equal(
        sd["conv_5_dw.batchnorm.weight"].numpy(), arrays["conv_5_dw_batchnorm_gamma"]
    )
    assert arrays["pre_fc1_weight_quantized"].dtype == np.int8  # shipped still quantized


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_sface(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="cannot read"):
        load_sface(bad)
    _, arrays = read_weights(WEIGHTS_FILE)
    other = tmp_path / "other.npz"
    meta = json.dumps({"format": "something-else/9"}).encode()
    np.savez(other, __meta__=np.frombuffer(meta, dtype=np.uint8), **arrays)
    with pytest.raises(ModelError, match="something-else/9"):
        load_sface(other)
    del arrays["fc1_gamma"]
    ok_meta, _ = read_weights(WEIGHTS_FILE)
    partial = tmp_path / "partial.npz"
    np.savez(
        partial, __meta__=np.frombuffer(json.dumps(ok_meta).encode(), dtype=np.uint8), **arrays
    )
    with pytest.raises(ModelError, match="fc1_gamma"):
        load_sface(partial)


def test_shipped_embedder_reads_folded_weights_from_the_cache(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    embedder: Embedder,
    aligned: tuple[np.ndarray, np.ndarray],
) -> None:
    """``Embedder()`` (the shipped SFace) gives the same features as the fused module, whether
    its folded weights were just made, read back from the cache, or the cache is damaged; the
    trainable module is loaded only when asked for."""
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "c"))
    crops, feats = aligned
    want = embedder.embed(crops)
    first = Embedder()
    files = list((tmp_path / "c").glob("sface-*.npz"))
    assert len(files) == 1
    again = Embedder()
    files[0].write_bytes(b"damaged")
    damaged = Embedder()
    for emb in (first, again, damaged):
        np.testing.assert_array_equal(emb.embed(crops), want)
    assert float(cosines(again.embed(crops), feats).min()) > 0.99999999
    assert again._module is None  # not loaded so far
    assert isinstance(again.module, SFace) and again.module is again.module
