"""The numpy engine: the same detections and embeddings as the reference, without torch.

Oracles: the golden OpenCV outputs in ``../shared/reference`` (``sface_yunet.jsonl`` for the
detector, ``aligned/`` for the embedder), and the PyTorch engine itself. The engine must also
stay importable without torch: that is what it is for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.models import npengine
from facesearch.models.npengine import (
    ACT_NONE,
    ACT_PRELU,
    ACT_RELU,
    EngineThreads,
    NumpyDetector,
    NumpyEmbedder,
    _dense3x3,
    _depthwise3x3,
    _load_prepared_sface,
    _maxpool2,
    _pointwise,
    cache_dir,
    prepare_sface,
    single_threaded_blas,
)
from facesearch.models.sface_weights import WEIGHTS_FILE, read_weights, state_arrays
from facesearch.models.yunet_decode import DetectorConfig
from facesearch.native import NATIVE

OPENCV = DetectorConfig(max_side=1 << 20, coarse_side=0)  # OpenCV's FaceDetectorYN exactly


@pytest.fixture(autouse=True)
def _weight_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path_factory.getbasetemp() / "npcache"))


@pytest.fixture(scope="module")
def references(reference: Path) -> list[dict]:
    path = reference / "sface_yunet.jsonl"
    if not path.is_file():
        pytest.skip(f"reference file {path} not found")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def detector() -> NumpyDetector:
    return NumpyDetector(OPENCV)


@pytest.fixture(params=["native", "numpy"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine with the C kernels of ``facesearch._native`` (when built), or numpy's alone."""
    if request.param == "native":
        if NATIVE is None:
            pytest.skip("facesearch._native is not built")
    else:
        monkeypatch.setattr(npengine, "_NATIVE", None)
    return str(request.param)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_detections_match_the_opencv_reference(
    detector: NumpyDetector, data: Path, references: list[dict], kernels: str
) -> None:
    """Every 3rd reference image (all categories): same faces, boxes and landmarks within
    0.01 px of OpenCV's, scores within 1e-4 (the torch engine's bar is the same images); with
    the native kernels and with numpy's alone."""
    checked = faces = 0
    for ref in references[::3]:
        dets = detector.detect(_rgb(data / ref["image"]))
        assert len(dets) == len(ref["faces"]), ref["image"]
        for d, f in zip(dets, ref["faces"], strict=True):
            x, y, w, h = f["box"]
            np.testing.assert_allclose(d.box, [x, y, x + w, y + h], atol=0.01, err_msg=ref["image"])
            np.testing.assert_allclose(d.landmarks_array(), f["landmarks"], atol=0.01)
            assert abs(d.score - f["score"]) < 1e-4
            faces += 1
        checked += 1
    assert checked == 72 and faces > 60


def test_detector_agrees_with_the_torch_engine_on_downscaled_photos(data: Path) -> None:
    """Default settings (downscale to 1600 px, the coarse pass): the resize differs (Pillow vs
    torch antialiasing), so boxes agree within a pixel rather than exactly."""
    torch_yunet = pytest.importorskip("facesearch.models.yunet")
    big = sorted(p for p in (data / "photos").rglob("*.jpg") if max(Image.open(p).size) > 1600)
    assert big, "no photo larger than 1600 px in photos/"
    np_det, t_det = NumpyDetector(), torch_yunet.Detector()
    for path in big[:3]:
        image = _rgb(path)
        a, b = np_det.detect(image), t_det.detect(image)
        assert len(a) == len(b), path
        for x, y in zip(a, b, strict=True):
            assert np.abs(np.subtract(x.box, y.box)).max() < 1.0, path


def test_embeddings_match_the_opencv_reference(reference: Path, kernels: str) -> None:
    """The 40 reference crops: cosine >= 0.99999 to OpenCV's features (native kernels and
    numpy's alone)."""
    rows = [
        json.loads(x) for x in (reference / "aligned" / "aligned.jsonl").read_text().splitlines()
    ]
    crops = np.stack([_rgb(reference / r["crop"]) for r in rows])
    ref = np.asarray([r["feature"] for r in rows], np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    got = NumpyEmbedder().embed(crops)
    assert got.shape == (40, 128) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * ref).sum(1).min() >= 0.99999


def test_embedder_contract() -> None:
    emb = NumpyEmbedder(batch_size=2)
    assert emb.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 128)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    one_by_one = np.concatenate([emb.embed(c[None]) for c in crops])
    np.testing.assert_allclose(emb.embed(crops), one_by_one, atol=1e-5)
    with pytest.raises(ValueError, match="aligned RGB faces"):
        emb.embed(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        emb.embed(np.zeros((1, 112, 112, 3), np.float32))


def test_depthwise_matches_a_direct_convolution(kernels: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 7, 5)).astype(np.float32)
    w = rng.standard_normal((3, 3, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    for stride in (1, 2):
        ho, wo = (9 - 1) // stride + 1, (7 - 1) // stride + 1
        want = np.zeros((2, ho, wo, 5)) + b
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, i * stride : i * stride + 3, j * stride : j * stride + 3]
                want[:, i, j] += (patch * w).sum(axis=(1, 2))
        np.testing.assert_allclose(_depthwise3x3(x, w, b, stride), want, atol=1e-5)


def test_threads_give_the_same_result(data: Path) -> None:
    image = _rgb(sorted((data / "groups").glob("*.jpg"))[0])
    one = NumpyDetector(OPENCV, threads=EngineThreads(1)).detect(image)
    two = NumpyDetector(OPENCV, threads=EngineThreads(2)).detect(image)
    assert [d.box for d in one] == [d.box for d in two]
    with pytest.raises(ValueError):
        EngineThreads(0)


def test_prepared_weights_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written once, read back identical; a damaged cache file is ignored, an unwritable cache
    folder only costs the caching."""
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    fresh = prepare_sface(state_arrays(read_weights(WEIGHTS_FILE)[1]))
    first = _load_prepared_sface(WEIGHTS_FILE)
    files = list((tmp_path / "c").glob("sface-*.npz"))
    assert len(files) == 1
    again = _load_prepared_sface(WEIGHTS_FILE)
    for k in fresh:
        np.testing.assert_array_equal(first[k], fresh[k])
        np.testing.assert_array_equal(again[k], fresh[k])
    files[0].write_bytes(b"not a zip file")
    damaged = _load_prepared_sface(WEIGHTS_FILE)
    np.testing.assert_array_equal(damaged["head_t"], fresh["head_t"])
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FACESEARCH_CACHE", str(blocker / "sub"))
    np.testing.assert_array_equal(_load_prepared_sface(WEIGHTS_FILE)["0.w"], fresh["0.w"])


def test_rejects_what_is_not_an_rgb_uint8_image(detector: NumpyDetector) -> None:
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((10, 10, 3), np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((10, 10), np.uint8))


def test_the_engine_does_not_import_torch(tmp_path: Path) -> None:
    """Detect and embed a photo, and run the query command's imports, with torch unimportable."""
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('torch must not be imported')\n")
    code = (
        "import numpy as np\n"
        "from facesearch.pipeline import FacePipeline, PipelineConfig\n"
        "pipe = FacePipeline(PipelineConfig(engine='numpy'))\n"
        "img = np.zeros((200, 300, 3), np.uint8)\n"
        "assert pipe.faces(img) == []\n"
        "import facesearch.cli, facesearch.cli.collection, facesearch.identify\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["FACESEARCH_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,  # a hang fails the test instead of the suite
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_numpy_engine_runs_the_shipped_model_only() -> None:
    from facesearch.pipeline import PipelineConfig

    with pytest.raises(ValueError, match="shipped model"):
        PipelineConfig(engine="numpy", model="my-model.pt")
    with pytest.raises(ValueError, match="engine must be"):
        PipelineConfig(engine="tensorflow")


# --------------------------------------------------------------------------- native kernels
# The C kernels of ``facesearch/_native.c`` against float64 references, in their AVX2 paths and
# in the portable ones (``set_simd``); odd sizes reach the edges and the leftover rows/channels.

ACTS = [ACT_NONE, ACT_RELU, ACT_PRELU]


@pytest.fixture(params=[True, False], ids=["avx2", "portable"])
def simd(request: pytest.FixtureRequest) -> Iterator[bool]:
    if NATIVE is None:
        pytest.skip("facesearch._native is not built")
    NATIVE.set_simd(request.param)
    try:
        yield bool(request.param)
    finally:
        NATIVE.set_simd(True)


def _act64(y: np.ndarray, act: int, slope: np.ndarray) -> np.ndarray:
    if act == ACT_RELU:
        return np.maximum(y, 0.0)
    if act == ACT_PRELU:
        return np.where(y > 0, y, slope.astype(np.float64) * y)
    return y


def _conv64(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, depthwise: bool
) -> np.ndarray:
    """3x3 convolution, padding 1, in float64: ``w`` (3, 3, C) depthwise, else (9 C, C')."""
    bsz, h, wd, c = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    w3 = w.astype(np.float64).reshape((3, 3, c) if depthwise else (3, 3, c, -1))
    out = np.zeros((bsz, ho, wo, w3.shape[-1])) + b
    for dy in range(3):
        for dx in range(3):
            patch = xp[
                :,
                dy : dy + stride * (ho - 1) + 1 : stride,
                dx : dx + stride * (wo - 1) + 1 : stride,
            ]
            out += patch * w3[dy, dx] if depthwise else patch @ w3[dy, dx]
    return out


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize(
    "shape",
    [  # batch, h, w, in, out, stride
        (2, 9, 7, 3, 16, 2),
        (1, 12, 11, 3, 32, 1),
        (1, 1, 1, 3, 8, 1),
        (1, 6, 5, 4, 64, 2),
        (1, 7, 9, 3, 8, 2),
        (1, 5, 6, 5, 7, 1),  # out channels not a multiple of 8: portable path
        (1, 3, 2, 2, 24, 1),
    ],
)
@pytest.mark.parametrize("act", ACTS)
def test_native_dense_convolution(shape: tuple[int, ...], act: int, simd: bool) -> None:
    bsz, h, w, cin, cout, stride = shape
    rng = np.random.default_rng(sum(shape) + act)
    x = rng.standard_normal((bsz, h, w, cin)).astype(np.float32)
    wm = rng.standard_normal((9 * cin, cout)).astype(np.float32)
    b, slope = rng.standard_normal((2, cout)).astype(np.float32)
    want = _act64(_conv64(x, wm, b, stride, False), act, slope)
    _close(_dense3x3(x, wm, b, stride, act, slope), want)


@pytest.mark.parametrize(
    "shape",
    [  # batch, h, w, channels, stride
        (2, 9, 7, 16, 1),
        (2, 9, 7, 16, 2),
        (1, 1, 1, 8, 1),
        (1, 2, 3, 8, 2),
        (1, 10, 13, 24, 2),
        (1, 8, 11, 32, 1),
        (1, 5, 6, 5, 1),  # channels not a multiple of 8: portable path
    ],
)
@pytest.mark.parametrize("act", ACTS)
def test_native_depthwise_convolution(shape: tuple[int, ...], act: int, simd: bool) -> None:
    bsz, h, w, c, stride = shape
    rng = np.random.default_rng(sum(shape) + act)
    x = rng.standard_normal((bsz, h, w, c)).astype(np.float32)
    wt = rng.standard_normal((3, 3, c)).astype(np.float32)
    b, slope = rng.standard_normal((2, c)).astype(np.float32)
    want = _act64(_conv64(x, wt, b, stride, True), act, slope)
    _close(_depthwise3x3(x, wt, b, stride, act, slope), want)


@pytest.mark.parametrize(
    "shape",
    [  # rows, in, out
        (100, 16, 16),
        (13, 33, 48),
        (7, 3, 64),
        (1, 1, 8),
        (5, 16, 24),
        (37, 64, 128),
        (12, 5, 5),  # not a multiple of 8: portable path
        (9, 300, 300),  # large weights: numpy's BLAS, then the native bias and activation
    ],
)
@pytest.mark.parametrize("act", ACTS)
def test_native_pointwise_convolution(shape: tuple[int, ...], act: int, simd: bool) -> None:
    rows, k, cout = shape
    rng = np.random.default_rng(sum(shape) + act)
    x = rng.standard_normal((1, 1, rows, k)).astype(np.float32)
    w_t = rng.standard_normal((k, cout)).astype(np.float32)
    b, slope = rng.standard_normal((2, cout)).astype(np.float32)
    want = _act64(x.astype(np.float64) @ w_t + b, act, slope)
    _close(_pointwise(x, w_t, b, act, slope), want)


@pytest.mark.parametrize("shape", [(1, 4, 4, 3), (2, 5, 7, 16), (1, 1, 5, 8), (1, 3, 3, 1)])
def test_native_max_pool_equals_numpy(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = _maxpool2(x)
    monkeypatch.setattr(npengine, "_NATIVE", None)
    want = _maxpool2(x)
    assert got.shape == want.shape and np.array_equal(got, want)


def test_native_kernels_refuse_bad_arguments() -> None:
    """Bad shapes, activations and buffers are refused before anything is written: arrays are
    checked to hold what the kernel would read or write, and to be C-contiguous."""
    if NATIVE is None:
        pytest.skip("facesearch._native is not built")
    x = np.ones((1, 4, 4, 8), np.float32)
    w = np.ones((3, 3, 8), np.float32)
    b = np.ones(8, np.float32)
    out = np.zeros((1, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match="stride"):
        NATIVE.conv3x3(x, 1, 4, 4, 8, 3, w, 8, b, None, ACT_NONE, 8, out)
    with pytest.raises(ValueError, match="groups"):
        NATIVE.conv3x3(x, 1, 4, 4, 8, 1, w, 16, b, None, ACT_NONE, 8, out)
    with pytest.raises(ValueError, match="activation"):
        NATIVE.conv3x3(x, 1, 4, 4, 8, 1, w, 8, b, None, 7, 8, out)
    with pytest.raises(ValueError, match="slopes"):
        NATIVE.bias_act(out, 16, 8, b, None, ACT_PRELU)
    with pytest.raises(ValueError, match="x holds 512 bytes, 1024 needed"):
        NATIVE.conv3x3(x, 2, 4, 4, 8, 1, w, 8, b, None, ACT_NONE, 8, out)
    with pytest.raises(ValueError, match="the weights holds"):  # dense 8 -> 8 needs 9 x 8 x 8
        NATIVE.conv3x3(x, 1, 4, 4, 8, 1, w, 8, b, None, ACT_NONE, 1, out)
    with pytest.raises(ValueError, match="the output holds"):
        NATIVE.pointwise(x, 16, 8, np.ones((8, 16), np.float32), 16, np.ones(16, "f4"), None,
                         ACT_NONE, out)  # fmt: skip
    with pytest.raises(ValueError, match="no memory given for the bias"):
        NATIVE.pointwise(x, 16, 8, w, 8, None, None, ACT_NONE, out)
    with pytest.raises(ValueError, match="shape"):
        NATIVE.pointwise(x, 16, 0, w, 8, b, None, ACT_NONE, out)
    with pytest.raises(ValueError, match="negative"):
        NATIVE.max_pool2(x, 1, -4, 4, 8, out)
    with pytest.raises((ValueError, BufferError), match="contiguous"):
        NATIVE.bias_act(np.ones((16, 16), np.float32)[:, ::2], 16, 8, b, None, ACT_NONE)
    with pytest.raises(ValueError, match="float32"):
        NATIVE.bias_act(np.ones((16, 8)), 16, 8, b, None, ACT_NONE)  # float64
    read_only = np.zeros(128, np.float32)
    read_only.setflags(write=False)
    with pytest.raises((ValueError, BufferError), match="read-only"):
        NATIVE.max_pool2(x, 1, 4, 4, 8, read_only)
    assert not out.any(), "nothing was written"


def test_arrays_the_native_kernels_cannot_take_go_to_numpy() -> None:
    """Not float32, or not contiguous: the numpy code runs (same values)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 8, 16))
    w = rng.standard_normal((3, 3, 16)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    want = _conv64(x, w, b, 1, True)
    got = _depthwise3x3(x.astype(np.float32)[:, :, ::2], w, b, 1)  # a strided view
    _close(got, _conv64(x[:, :, ::2], w, b, 1, True))
    np.testing.assert_allclose(_depthwise3x3(x, w, b, 1), want, rtol=1e-5)  # float64 input


def test_single_threaded_blas_nests_across_threads() -> None:
    """The first caller in sets OpenBLAS to one thread, the last one out restores it."""
    blas = npengine._openblas_threads()
    if blas is None:
        pytest.skip("numpy's OpenBLAS not found")
    get, put = blas
    before = get()
    put(2)
    try:
        inside, go_on = threading.Event(), threading.Event()

        def other() -> None:
            with single_threaded_blas():
                inside.set()
                go_on.wait(30)

        t = threading.Thread(target=other)
        with single_threaded_blas():
            assert get() == 1
            t.start()
            assert inside.wait(30)
        assert get() == 1, "the other thread is still inside"
        go_on.set()
        t.join(30)
        assert get() == 2
    finally:
        put(before)
