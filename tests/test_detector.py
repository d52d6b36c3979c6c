"""YuNet port: weights, network, decoding, and detections against OpenCV's own output.

Oracles, from the most to the least local:

* the ONNX file itself (re-conversion gives the bundled weights bit for bit);
* OpenCV's DNN on the same ONNX (raw head outputs; its ``FaceDetectorYN`` rows from those
  outputs; ``cv::dnn::NMSBoxes`` on random boxes);
* the golden file ``reference/sface_yunet.jsonl`` (OpenCV 5.0.0 ``FaceDetectorYN``, 214 images;
  the oracle versions are in ``tests/oracles.py``);
* geometry (a 2x image gives 2x boxes) and invariants (batch == one by one, no face in noise).

OpenCV and onnx are test-only dependencies: those tests skip without them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import oracles
import pytest
import torch

from facesearch.errors import ModelError
from facesearch.models.yunet import (
    Detector,
    DetectorConfig,
    YuNet,
    decode,
    default_weights_path,
    load_weights,
    nms_boxes,
)
from facesearch.types import Detection

ONNX_NAME = "face_detection_yunet_2023mar_int8bq.onnx"
OUTPUT_NAMES = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]
# The reference at native size: no downscale, no extra pass (exactly OpenCV's FaceDetectorYN).
NATIVE = DetectorConfig(max_side=1 << 20, coarse_side=0)
THRESHOLD = NATIVE.score_threshold
BORDERLINE = 0.02  # a face scored within this of the threshold may be found or not


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(NATIVE)


@pytest.fixture(scope="module")
def onnx_path(shared: Path) -> Path:
    path = shared / "weights" / ONNX_NAME
    if not path.is_file():
        pytest.skip(f"source model {path} not found")
    return path


@pytest.fixture(scope="module")
def references(reference: Path) -> list[dict]:
    path = reference / "sface_yunet.jsonl"
    if not path.is_file():
        pytest.skip(f"reference file {path} not found")
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def read_bgr(path: Path) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image


def read_rgb_cv2(path: Path) -> np.ndarray:
    """Decoded as the reference was (OpenCV), then RGB."""
    return np.ascontiguousarray(read_bgr(path)[..., ::-1])


def read_rgb_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def padded_blob(bgr: np.ndarray) -> np.ndarray:
    """``(1, 3, Hp, Wp) float32``: raw BGR, zero-padded bottom/right to multiples of 32."""
    h, w = bgr.shape[:2]
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    blob = np.zeros((1, 3, hp, wp), np.float32)
    blob[0, :, :h, :w] = bgr.transpose(2, 0, 1)
    return blob


# ---------------------------------------------------------------------------------- weights


def test_bundled_weights_are_the_conversion_of_the_onnx_file(onnx_path: Path) -> None:
    pytest.importorskip("onnx")
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "convert_yunet.py"
    spec = importlib.util.spec_from_file_location("convert_yunet", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state, _ = module.convert(onnx_path)
    bundled = load_weights(default_weights_path())
    assert sorted(state) == sorted(bundled)
    for name, value in state.items():
        np.testing.assert_array_equal(bundled[name].numpy(), value, err_msg=name)


def test_foreign_or_missing_weights_raise_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_weights(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3, np.float32))
    with pytest.raises(ModelError, match="format"):
        load_weights(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="cannot read"):
        load_weights(tmp_path / "junk.npz")


# ---------------------------------------------------------------------------------- network


@pytest.fixture(scope="module")
def opencv_net(onnx_path: Path) -> Any:
    cv2 = pytest.importorskip("cv2")
    return cv2.dnn.readNet(str(onnx_path))


@pytest.mark.parametrize("name", ["groups/bbt2.jpg", "lfw/images/AJ_Cook/AJ_Cook_0001.jpg"])
def test_network_outputs_match_opencv_dnn(data: Path, opencv_net: Any, name: str) -> None:
    blob = padded_blob(read_bgr(data / name))
    opencv_net.setInput(blob)
    expected = opencv_net.forward(OUTPUT_NAMES)
    net = YuNet.from_weights(input_order="bgr")
    with torch.inference_mode():
        got = net(torch.from_numpy(blob))
    assert len(got) == 12
    for out_name, e, g in zip(OUTPUT_NAMES, expected, got, strict=True):
        assert tuple(g.shape) == e.shape, out_name
        np.testing.assert_allclose(g.numpy(), e, atol=2e-5, rtol=0, err_msg=out_name)


def test_rgb_weights_are_bgr_weights_with_swapped_input(data: Path) -> None:
    blob = padded_blob(read_bgr(data / "groups/bbt3.jpg"))
    bgr_net = YuNet.from_weights(input_order="bgr")
    rgb_net = YuNet.from_weights(input_order="rgb")
    with torch.inference_mode():
        a = bgr_net(torch.from_numpy(blob))
        b = rgb_net(torch.from_numpy(blob[:, ::-1].copy()))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------- decoding


def test_nms_matches_opencv_nmsboxes() -> None:
    """Same indices as ``cv2.dnn.NMSBoxes`` (bit-exact: the pinned OpenCV only)."""
    cv2 = oracles.exact("opencv-python-headless", "YuNet's NMS is OpenCV's NMSBoxes")
    rng = np.random.default_rng(0)
    for trial in range(30):
        k = int(rng.integers(1, 60))
        xy = rng.integers(-20, 200, size=(k, 2))
        wh = rng.integers(0, 80, size=(k, 2))
        boxes = np.concatenate([xy, wh], axis=1).astype(np.int64)
        # coarse scores so that ties (stable order) are exercised
        scores = (rng.integers(80, 100, size=k) / 100).astype(np.float32)
        thr, nms, top_k = 0.85, float(rng.choice([0.1, 0.3, 0.5])), int(rng.integers(1, 70))
        expected = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), thr, nms, top_k=top_k)
        got = nms_boxes(boxes, scores, thr, nms, top_k)
        assert got.tolist() == np.asarray(expected).reshape(-1).tolist(), f"trial {trial}"


@pytest.mark.parametrize(
    "name", ["groups/bbt2.jpg", "groups/selfie-many-people.jpg", "groups/dlib/2008_004176.jpg"]
)
def test_decode_of_opencv_outputs_gives_opencv_faces(
    data: Path,
    onnx_path: Path,
    opencv_net: Any,
    name: str,
) -> None:
    """Decoding + NMS alone: OpenCV's own raw outputs through :func:`decode` must give the rows
    ``cv2.FaceDetectorYN`` returns for the same image."""
    cv2 = pytest.importorskip("cv2")
    bgr = read_bgr(data / name)
    h, w = bgr.shape[:2]
    blob = padded_blob(bgr)
    opencv_net.setInput(blob)
    raw = [np.asarray(o) for o in opencv_net.forward(OUTPUT_NAMES)]
    (got,) = decode(raw, blob.shape[2:], replace(NATIVE, score_threshold=0.6))
    yn = cv2.FaceDetectorYN.create(str(onnx_path), "", (w, h), 0.6, 0.3, 5000)
    _, expected = yn.detect(bgr)
    expected = np.zeros((0, 15), np.float32) if expected is None else expected
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-5)


# ---------------------------------------------------------------------------------- parity


def _compare(dets: list[Detection], ref_faces: list[dict]) -> list[str]:
    """Problems between our detections and the reference faces of one image (empty: agree)."""
    problems = []
    unused = list(range(len(dets)))
    for face in ref_faces:
        x, y, w, h = face["box"]  # the reference is [x, y, w, h]
        ref_box = np.array([x, y, x + w, y + h])
        errs = [np.abs(np.array(dets[j].box) - ref_box).max() for j in unused]
        j = unused[int(np.argmin(errs))] if errs else None
        if j is None or min(errs) > 1.0:
            if abs(face["score"] - THRESHOLD) > BORDERLINE:
                problems.append(f"missing face {face['box']} score {face['score']}")
            continue
        unused.remove(j)
        d = dets[j]
        lm_err = np.abs(d.landmarks_array() - np.asarray(face["landmarks"])).max()
        if lm_err > 1.0:
            problems.append(f"landmarks off by {lm_err:.2f} px for {face['box']}")
        if abs(d.score - face["score"]) > 1e-3:
            problems.append(f"score {d.score:.4f} vs {face['score']} for {face['box']}")
    for j in unused:
        if dets[j].score - THRESHOLD > BORDERLINE:
            problems.append(f"extra face {dets[j].box} score {dets[j].score:.4f}")
    return problems


@pytest.mark.slow
def test_parity_with_opencv_reference_all_images(
    detector: Detector, data: Path, references: list[dict]
) -> None:
    """All 214 reference images, decoded as the reference was: same faces, boxes and landmarks
    within 1 px, scores within 1e-3."""
    assert len(references) == 214
    categories = {r["image"].split("/")[0] for r in references}
    assert categories == {"photos", "groups", "negatives", "lfw"}
    problems = []
    n_faces = 0
    for ref in references:
        image = read_rgb_cv2(data / ref["image"])
        assert image.shape[:2] == (ref["height"], ref["width"])
        dets = detector.detect(image)
        assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
        problems += [f"{ref['image']}: {p}" for p in _compare(dets, ref["faces"])]
        n_faces += len(dets)
    assert not problems, "\n".join(problems)
    assert n_faces == 248


def test_parity_with_pil_decoding(detector: Detector, data: Path, references: list[dict]) -> None:
    """Decoded by Pillow (as facesearch does) instead of OpenCV: on this set the decoders agree,
    so the detections must too. Every 4th image, all categories."""
    problems = []
    for ref in references[::4]:
        image = read_rgb_pil(data / ref["image"])
        dets = detector.detect(image)
        problems += [f"{ref['image']}: {p}" for p in _compare(dets, ref["faces"])]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------- behaviour


def test_no_face_in_plain_or_noise_images() -> None:
    detector = Detector()  # default config, with downscale and the large-face pass
    rng = np.random.default_rng(1)
    images = [
        np.zeros((240, 320, 3), np.uint8),
        np.full((480, 640, 3), 255, np.uint8),
        np.full((100, 37, 3), 128, np.uint8),
        rng.integers(0, 256, size=(600, 800, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(1500, 2100, 3), dtype=np.uint8),  # downscaled + coarse
        np.zeros((1, 1, 3), np.uint8),
    ]
    for image in images:
        assert detector.detect(image) == [], image.shape


def test_rejects_what_is_not_an_rgb_uint8_image(detector: Detector) -> None:
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detector.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detector.detect(np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(ValueError, match="max_side"):
        DetectorConfig(max_side=8)


def _scaled_pairs(
    big: list[Detection], small: list[Detection], k: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box + landmarks of a detection in the k-times image, k * those of its face in the
    original), pairing each with the nearest centre."""
    pairs = []
    for d in big:
        centre = np.array(d.center) / k
        e = min(small, key=lambda o: float(np.abs(np.array(o.center) - centre).max()))
        ours = np.r_[d.box, d.landmarks_array().ravel()]
        pairs.append((ours, k * np.r_[e.box, e.landmarks_array().ravel()]))
    return pairs


def test_downscale_maps_boxes_back_to_full_resolution(detector: Detector, data: Path) -> None:
    """A 2x enlarged photo detected with max_side at the original size gives 2x the boxes and
    landmarks of the original (up to the resampling: a few px)."""
    image = read_rgb_pil(data / "groups/bbt2.jpg")  # 675x469, 3 faces
    h, w = image.shape[:2]
    big = np.ascontiguousarray(image.repeat(2, axis=0).repeat(2, axis=1))
    native = detector.detect(image)
    scaled = Detector(replace(NATIVE, max_side=max(h, w))).detect(big)
    assert len(native) == len(scaled) == 3
    for ours, theirs in _scaled_pairs(scaled, native, 2.0):
        np.testing.assert_allclose(ours, theirs, atol=6.0)
    assert all(d.box[2] > w for d in scaled if d.center[0] > w)  # coordinates are of `big`


def test_large_face_found_by_the_coarse_pass(data: Path) -> None:
    """YuNet alone misses a face of ~800 px; the default config finds it at 6x its position."""
    image = read_rgb_pil(data / "lfw/images/AJ_Cook/AJ_Cook_0001.jpg")  # 250x250
    big = np.ascontiguousarray(image.repeat(6, axis=0).repeat(6, axis=1))  # 1500x1500
    (small,) = Detector(NATIVE).detect(image)
    assert Detector(NATIVE).detect(big) == []  # the limitation the coarse pass is for
    (found,) = Detector(DetectorConfig()).detect(big)
    # In original pixels: YuNet itself moves points by a few px between scales (face ~130 px).
    np.testing.assert_allclose(np.array(found.box) / 6, small.box, atol=6.0)
    np.testing.assert_allclose(found.landmarks_array() / 6, small.landmarks_array(), atol=6.0)


def test_detect_batch_equals_detect_one_by_one(data: Path) -> None:
    detector = Detector()
    names = [
        "lfw/images/AJ_Cook/AJ_Cook_0001.jpg",
        "lfw/images/AJ_Lamas/AJ_Lamas_0001.jpg",
        "negatives/white.png",
        "groups/bbt2.jpg",
        "groups/obama_and_biden.jpg",  # downscaled
        "lfw/images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
    ]
    images = [read_rgb_pil(data / n) for n in names if (data / n).is_file()]
    assert len(images) >= 5
    images.append(np.ascontiguousarray(images[0][5:, 3:]))  # same padded size, other size
    batched = detector.detect_batch(images, batch_size=3)
    assert len(batched) == len(images)
    for image, dets in zip(images, batched, strict=True):
        single = detector.detect(image)
        assert len(single) == len(dets)
        for a, b in zip(single, dets, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks_array(), b.landmarks_array(), atol=1e-3)
            assert a.score == pytest.approx(b.score, abs=1e-5)
    assert detector.detect_batch([]) == []


def test_with_config_shares_the_network(detector: Detector, data: Path) -> None:
    image = read_rgb_pil(data / "groups/bbt2.jpg")
    low = detector.with_config(replace(NATIVE, score_threshold=0.5))
    assert low.net is detector.net
    assert len(low.detect(image)) >= len(detector.detect(image))
    assert detector.config == NATIVE
