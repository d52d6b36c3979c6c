"""Alignment: the similarity estimate, the bilinear warp, and align + embed against the reference.

Oracles: a known similarity transform (exact geometry), ``cv2.warpAffine`` and OpenCV's own
``FaceRecognizerSF.alignCrop`` (test-only dependency), and the reference SFace features of
``../shared/reference/sface_yunet.jsonl`` (OpenCV YuNet landmarks -> alignCrop -> feature).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import oracles
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facesearch.align import ARCFACE_TEMPLATE, align_faces, estimate_norm, norm_crop, warp_affine

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    """``(2, 3)`` map: rotate by ``angle``, scale, translate."""
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts.astype(np.float64) @ m[:, :2].T + m[:, 2]


def inverse(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, -(a @ m[:, 2])[:, None]], axis=1)


# --------------------------------------------------------------------------- estimate_norm


def test_template_constant() -> None:
    assert ARCFACE_TEMPLATE.shape == (5, 2)
    assert ARCFACE_TEMPLATE.dtype == np.float32
    assert not ARCFACE_TEMPLATE.flags.writeable
    assert ARCFACE_TEMPLATE[0, 0] < ARCFACE_TEMPLATE[1, 0]  # image-left eye first


def test_template_maps_to_itself() -> None:
    m = estimate_norm(ARCFACE_TEMPLATE)
    assert m.shape == (2, 3) and m.dtype == np.float64
    np.testing.assert_allclose(m[:, :2], np.eye(2), atol=1e-6)
    # OpenCV's rounded template mean (56.0262, 71.9008) vs the exact (56.02616, 71.90078).
    np.testing.assert_allclose(m[:, 2], [4e-5, 2e-5], atol=1e-5)


@settings(max_examples=200, deadline=None)
@given(
    scale=st.floats(0.05, 20.0),
    angle=st.floats(-math.pi, math.pi),
    tx=st.floats(-500.0, 500.0),
    ty=st.floats(-500.0, 500.0),
)
def test_recovers_known_similarity(scale: float, angle: float, tx: float, ty: float) -> None:
    truth = similarity(scale, angle, tx, ty)  # photo -> crop
    landmarks = apply(inverse(truth), ARCFACE_TEMPLATE)  # the template points seen in the photo
    m = estimate_norm(landmarks)
    # Up to float32 landmarks and the rounded template mean (< 5e-5 px), the fit is exact.
    np.testing.assert_allclose(m[:, :2], truth[:, :2], rtol=0, atol=2e-5 * scale + 1e-7)
    np.testing.assert_allclose(apply(m, landmarks), ARCFACE_TEMPLATE, atol=1e-3)


def test_reflection_guard() -> None:
    """Mirrored landmarks (eyes swapped sides) still give a rotation, never a mirror image."""
    pts = apply(inverse(similarity(2.0, 0.3, 10.0, 20.0)), ARCFACE_TEMPLATE)
    mirrored = pts * [-1.0, 1.0] + [500.0, 0.0]
    m = estimate_norm(mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_size_scales_template() -> None:
    pts = apply(inverse(similarity(1.5, 0.1, 5.0, 7.0)), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(
        apply(estimate_norm(pts, size=224), pts), ARCFACE_TEMPLATE * 2.0, atol=2e-3
    )


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        (np.zeros((4, 2)), r"shape \(5, 2\), got shape \(4, 2\)"),
        (np.zeros((5, 3)), r"got shape \(5, 3\)"),
        (np.zeros(10), r"got shape \(10,\)"),
        (np.zeros((1, 5, 2)), r"got shape \(1, 5, 2\)"),
        (np.full((5, 2), np.nan), "finite"),
        (np.ones((5, 2)), "coincide"),
    ],
)
def test_bad_landmarks(landmarks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate_norm(landmarks)


# --------------------------------------------------------------------------- warp_affine


def test_warp_identity_and_integer_shift() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (150, 130, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp_affine(img, similarity(1, 0, 0, 0)), img[:112, :112])
    # Shift right/down by (30, 50): crop pixel (x, y) reads image (x - 30, y - 50); outside is 0.
    out = warp_affine(img, similarity(1, 0, 30, 50))
    np.testing.assert_array_equal(out[50:, 30:], img[: 112 - 50, : 112 - 30])
    assert not out[:50].any() and not out[:, :30].any()


def test_warp_half_pixel_is_mean() -> None:
    img = np.zeros((4, 4), dtype=np.uint8)
    img[:, 2:] = 200
    out = warp_affine(img, similarity(1, 0, -1.5, 0), size=2)  # samples x = 1.5, 2.5
    np.testing.assert_array_equal(out, [[100, 200], [100, 200]])


def test_warp_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        warp_affine(np.zeros((10, 10, 3), dtype=np.float32), similarity(1, 0, 0, 0))
    with pytest.raises(ValueError, match="singular"):
        warp_affine(np.zeros((10, 10, 3), dtype=np.uint8), np.zeros((2, 3)))


OPENCV = "opencv-python-headless"


def _cv2(*, exact: bool = False):
    """OpenCV as the oracle: ``exact`` for a bit-exact comparison (the pinned version only)."""
    why = "the alignment oracle"
    cv2 = oracles.exact(OPENCV, why) if exact else oracles.oracle(OPENCV, why)
    # OpenCV before the float warp kernels (5.x, backported to 4.x in late 2024) used 1/32-pixel
    # fixed point; detect it: a 0.1 px shift of a 0/250 step gives 25 in float, 23 in fixed point.
    step = np.zeros((1, 8), dtype=np.uint8)
    step[0, 4:] = 250
    probe = cv2.warpAffine(step, similarity(1, 0, -3.1, 0), (1, 1), flags=cv2.INTER_LINEAR)
    if int(probe[0, 0]) != 25:
        pytest.skip(
            f"OpenCV {cv2.__version__} warps in fixed point; the port follows the float path"
        )
    return cv2


@pytest.mark.parametrize("channels", [3, 1, 4])
def test_warp_matches_cv2(channels: int) -> None:
    cv2 = _cv2()
    rng = np.random.default_rng(channels)
    worst, exact, total = 0, 0, 0
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(20, 400, 2))
        shape = (h, w) if channels == 1 else (h, w, channels)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        m = similarity(
            rng.uniform(0.1, 4.0),
            rng.uniform(-3.2, 3.2),
            rng.uniform(-300, 150),
            rng.uniform(-300, 150),
        )
        ref = cv2.warpAffine(img, m, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0)
        out = warp_affine(img, m)
        assert out.shape == ref.shape and out.dtype == np.uint8
        diff = np.abs(out.astype(np.int16) - ref)
        worst, exact, total = (
            max(worst, int(diff.max())),
            exact + int((diff == 0).sum()),
            total + diff.size,
        )
    assert worst <= 1
    assert exact / total > 0.9999, f"only {exact}/{total} values identical to cv2.warpAffine"


def test_native_warp_equals_numpy_warp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C warp (``facesearch/_native.c``) gives the numpy warp's bytes: general affine maps,
    crops partly or wholly outside the image, 1/3/4 channels, odd sizes, tiny images."""
    import facesearch.align as align
    from facesearch.native import NATIVE

    if NATIVE is None:
        pytest.fail("facesearch._native is not built: run `pip install -e .` again")
    rng = np.random.default_rng(7)
    mismatches = []
    for t in range(600):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        channels = (1, 3, 4)[t % 3]
        img = rng.integers(0, 256, (h, w) if channels == 1 else (h, w, channels), dtype=np.uint8)
        m = similarity(rng.uniform(0.05, 4.0), rng.uniform(-3.2, 3.2), 0.0, 0.0)
        m[:, 2] = rng.uniform(-20, 20, 2) if t % 3 == 0 else rng.uniform(-300, 100, 2)
        if t % 5 == 0:
            m[0, 1] += rng.uniform(-0.3, 0.3)  # not a similarity
        size = (112, 7, 1, 50)[t % 4]
        monkeypatch.setattr(align, "_NATIVE", NATIVE)
        fast = warp_affine(img, m, size)
        monkeypatch.setattr(align, "_NATIVE", None)
        slow = warp_affine(img, m, size)
        if not (fast.shape == slow.shape and np.array_equal(fast, slow)):
            mismatches.append((t, h, w, channels, size))
    assert not mismatches, f"native and numpy warps differ: {mismatches[:5]}"


# --------------------------------------------------------------------------- with real faces


def _reference_faces(reference: Path) -> list[dict]:
    return [json.loads(line) for line in (reference / "sface_yunet.jsonl").read_text().splitlines()]


def _imread_rgb(cv2, path: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture(scope="module")
def reference_crops(data: Path, reference: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Our crops from the reference landmarks ``(N, 112, 112, 3)``, their features ``(N, 128)``."""
    cv2 = oracles.oracle(OPENCV, "the reference images were decoded with OpenCV")
    crops, feats, names = [], [], []
    for rec in _reference_faces(reference):
        if not rec["faces"]:
            continue
        rgb = _imread_rgb(cv2, data / rec["image"])
        crops.append(align_faces(rgb, [np.asarray(f["landmarks"]) for f in rec["faces"]]))
        feats += [f["feature"] for f in rec["faces"]]
        names += [f"{rec['image']}#{i}" for i in range(len(rec["faces"]))]
    return np.concatenate(crops), np.asarray(feats, dtype=np.float64), names


def test_crops_match_reference_pngs(
    reference_crops: tuple[np.ndarray, np.ndarray, list[str]], reference: Path
) -> None:
    """The 40 saved alignCrop outputs, within 1 grey level (the JSONL landmarks are rounded)."""
    from PIL import Image

    crops, _, names = reference_crops
    rows = [
        json.loads(line)
        for line in (reference / "aligned" / "aligned.jsonl").read_text().splitlines()
    ]
    for row in rows:
        ours = crops[names.index(f"{row['image']}#{row['face_index']}")]
        ref = np.asarray(Image.open(reference / row["crop"]).convert("RGB"))
        assert np.abs(ours.astype(np.int16) - ref).max() <= 1, row["crop"]


def test_norm_crop_equals_opencv_align_crop(data: Path, reference: Path, tmp_path: Path) -> None:
    """Same landmarks in, same pixels out as ``cv2.FaceRecognizerSF.alignCrop`` (bit for bit, on
    the OpenCV version pinned in tests/oracles.py: 5.1 rounds 3 of 37,632 pixels differently)."""
    cv2 = _cv2(exact=True)
    onnx = pytest.importorskip("onnx", reason="builds a stand-in network for FaceRecognizerSF")
    # alignCrop does not touch the network; any loadable ONNX model lets us create the object.
    x = onnx.helper.make_tensor_value_info("data", onnx.TensorProto.FLOAT, [1, 3, 112, 112])
    y = onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 112, 112])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["data"], ["out"])], "g", [x], [y]
    )
    onnx.save(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]),
        str(tmp_path / "stub.onnx"),
    )
    recognizer = cv2.FaceRecognizerSF.create(str(tmp_path / "stub.onnx"), "")
    checked = 0
    for rec in _reference_faces(reference)[::3]:
        if not rec["faces"]:
            continue
        rgb = _imread_rgb(cv2, data / rec["image"])
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        for f in rec["faces"]:
            row = np.array([f["box"] + sum(f["landmarks"], []) + [f["score"]]], dtype=np.float32)
            expected = recognizer.alignCrop(bgr, row)[:, :, ::-1]
            np.testing.assert_array_equal(norm_crop(rgb, np.asarray(f["landmarks"])), expected)
            checked += 1
    assert checked > 50


def test_align_then_embed_matches_reference_features(
    reference_crops: tuple[np.ndarray, np.ndarray, list[str]],
) -> None:
    """Reference landmarks -> our alignment -> our SFace: cosine >= 0.999.

    Every third of the 248 reference faces (photos, group photos, greyscale crops, LFW), to keep
    the file fast on 2 shared cores; all 248 reach cosine > 0.99999 when run in full.
    """
    from facesearch.models.sface import Embedder

    crops, feats, names = reference_crops
    assert len(crops) == 248
    crops, feats, names = crops[::3], feats[::3], names[::3]
    xb = Embedder().embed(crops)
    cos = np.sum(xb * (feats / np.linalg.norm(feats, axis=1, keepdims=True)), axis=1)
    worst = int(np.argmin(cos))
    assert cos[worst] >= 0.999, f"{names[worst]}: cosine {cos[worst]:.6f}"


def test_align_faces_shapes() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    pts = apply(inverse(similarity(0.8, 0.2, -20.0, -30.0)), ARCFACE_TEMPLATE)
    one = align_faces(img, [pts])
    assert one.shape == (1, 112, 112, 3) and one.dtype == np.uint8
    np.testing.assert_array_equal(align_faces(img, np.stack([pts, pts + 5])[:1]), one)
    np.testing.assert_array_equal(one[0], norm_crop(img, pts))
    assert align_faces(img, []).shape == (0, 112, 112, 3)
    assert align_faces(img, np.zeros((0, 5, 2))).shape == (0, 112, 112, 3)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        norm_crop(img[:, :, 0], pts)
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        align_faces(img, [pts[:4]])
