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
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.models.detection import DetectorConfig
from facesearch.models.npengine import (
    NumpyDetector,
    NumpyEmbedder,
    _depthwise3x3,
    _load_prepared_sface,
    cache_dir,
    prepare_sface,
    set_threads,
)
from facesearch.models.sface_arrays import WEIGHTS_FILE, read_weights, state_arrays

NATIVE = DetectorConfig(max_side=1 << 20, coarse_side=0)  # OpenCV's FaceDetectorYN exactly


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
    return NumpyDetector(NATIVE)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_detections_match_the_opencv_reference(
    detector: NumpyDetector, data: Path, references: list[dict]
) -> None:
    """Every 3rd reference image (all categories): same faces, boxes and landmarks within
    0.01 px of OpenCV's, scores within 1e-4 (the torch engine's bar is the same images)."""
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


def test_embeddings_match_the_opencv_reference(reference: Path) -> None:
    """The 40 reference crops: cosine >= 0.99999 to OpenCV's features."""
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


def test_depthwise_matches_a_direct_convolution() -> None:
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


def test_threads_give_the_same_result(detector: NumpyDetector, data: Path) -> None:
    image = _rgb(sorted((data / "groups").glob("*.jpg"))[0])
    try:
        set_threads(1)
        one = detector.detect(image)
        set_threads(2)
        two = detector.detect(image)
    finally:
        set_threads(max(1, min(4, os.cpu_count() or 1)))
    assert [d.box for d in one] == [d.box for d in two]
    with pytest.raises(ValueError):
        set_threads(0)


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
        "import facesearch.cli, facesearch.cli.collection, facesearch.search\n"
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
