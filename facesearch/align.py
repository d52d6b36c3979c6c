"""Face alignment: 5 landmarks -> similarity transform -> 112x112 crop. Pure functions, no state.

The transform and the warp reproduce OpenCV's ``FaceRecognizerSF.alignCrop`` (the crops SFace
was used with), without OpenCV:

- :func:`estimate_norm` is OpenCV's least-squares (Umeyama-style) similarity estimate, with its
  reflection guard and its float32 / float64 arithmetic, including the rounded template mean
  ``(56.0262, 71.9008)`` OpenCV hard-codes.
- :func:`warp_affine` is ``cv2.warpAffine(..., INTER_LINEAR, BORDER_CONSTANT, 0)`` as OpenCV 5
  computes it: inverse map in float64, source coordinates and bilinear blend in float32 (fused
  multiply-adds), round half to even. It matches ``cv2.warpAffine`` bit for bit on tests. The
  same arithmetic runs in C when ``facesearch._native`` is built (several times faster), else
  in numpy; both give the same bytes (``tests/test_align.py``).

Landmarks are in pixels of the image they are sampled from (the full-resolution photo), in
YuNet / ArcFace order: image-left eye, other eye, nose tip, image-left mouth corner, other
mouth corner.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np

from facesearch.native import NATIVE

#: The native warp (``facesearch/_native.c``), or ``None`` for the numpy one; tests swap it.
_NATIVE: ModuleType | None = NATIVE

#: The ArcFace 112x112 template (OpenCV ``alignCrop``), ``(5, 2) float32`` (x, y) pixels.
ARCFACE_TEMPLATE: np.ndarray = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
ARCFACE_TEMPLATE.setflags(write=False)

#: The template mean as OpenCV hard-codes it (rounded; the exact mean is (56.02616, 71.90078)).
_TEMPLATE_MEAN: np.ndarray = np.array([56.0262, 71.9008], dtype=np.float32)
_TEMPLATE_SIZE = 112
_FLT_MIN = float(np.finfo(np.float32).tiny)


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """``(5, 2)`` finite landmarks as float32 (OpenCV reads them as float), else ValueError."""
    pts = np.asarray(landmarks)
    if pts.shape != (5, 2):
        raise ValueError(
            f"landmarks must be 5 (x, y) points, shape (5, 2), got shape {pts.shape}; "
            "pass one face at a time (Detection.landmarks_array())"
        )
    if not np.issubdtype(pts.dtype, np.number):
        raise ValueError(f"landmarks must be numbers, got dtype {pts.dtype}")
    pts = pts.astype(np.float32)
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"landmarks must be finite, got {pts.tolist()}")
    return pts


def _mean5(v: np.ndarray) -> np.float32:
    """``(v0 + v1 + v2 + v3 + v4) / 5`` summed left to right in float32, as OpenCV does."""
    s = np.float32(0.0)
    for x in v:
        s = np.float32(s + x)
    return np.float32(s / np.float32(5.0))


def _dot5(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a[i] * b[i]) / 5``: float32 products accumulated in float64, as OpenCV does."""
    acc = 0.0
    for p in (a * b).astype(np.float32):  # float32 products
        acc += float(p)
    return acc / 5.0


def _det2(m: np.ndarray) -> float:
    return float(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])


def estimate_norm(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Similarity transform mapping ``landmarks`` onto the ArcFace template.

    ``landmarks``: ``(5, 2)`` (x, y) pixels. ``size``: crop side; the 112 template is scaled by
    ``size / 112``. Returns the ``(2, 3) float64`` matrix ``M`` with ``M @ [x, y, 1] -> crop``,
    the least-squares (Umeyama) fit with a reflection guard, computed as OpenCV's
    ``FaceRecognizerSF.alignCrop`` does. Raises ``ValueError`` on a wrong shape, non-finite
    values, or landmarks that all coincide.
    """
    src = _check_landmarks(landmarks)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    k = np.float32(size / _TEMPLATE_SIZE)
    dst = ARCFACE_TEMPLATE * k if size != _TEMPLATE_SIZE else ARCFACE_TEMPLATE
    dst_mean = _TEMPLATE_MEAN * k if size != _TEMPLATE_SIZE else _TEMPLATE_MEAN

    src_mean = np.array([_mean5(src[:, 0]), _mean5(src[:, 1])], dtype=np.float32)
    src_d = (src - src_mean).astype(np.float32)  # (5, 2)
    dst_d = (dst - dst_mean).astype(np.float32)  # (5, 2)

    var = _dot5(src_d[:, 0], src_d[:, 0]) + _dot5(src_d[:, 1], src_d[:, 1])
    if not var > 0.0:
        raise ValueError(f"landmarks all coincide, no transform exists: {src.tolist()}")

    a = np.array(
        [
            [_dot5(dst_d[:, 0], src_d[:, 0]), _dot5(dst_d[:, 0], src_d[:, 1])],
            [_dot5(dst_d[:, 1], src_d[:, 0]), _dot5(dst_d[:, 1], src_d[:, 1])],
        ]
    )  # (2, 2) float64 covariance dst^T src / 5
    d = np.array([1.0, 1.0])
    if _det2(a) < 0:
        d[1] = -1.0  # reflection guard
    u, s, vt = np.linalg.svd(a)
    tol = max(s) * 2 * _FLT_MIN
    rank = int(np.sum(s > tol))
    if rank == 1 and _det2(u) * _det2(vt) > 0:
        r = u @ vt
    elif rank == 1:
        r = u @ (np.diag([1.0, -1.0]) @ vt)
    else:
        r = u @ (np.diag(d) @ vt)

    scale = 1.0 / var * float(s @ d)
    mean = src_mean.astype(np.float64)
    t = dst_mean.astype(np.float64) - scale * (r @ mean)
    return np.concatenate([r * scale, t[:, None]], axis=1)  # (2, 3)


def _invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``(2, 3)`` affine map (OpenCV's formula, float64): dst -> src."""
    m = np.asarray(matrix, dtype=np.float64).reshape(6)
    det = m[0] * m[4] - m[1] * m[3]
    if det == 0.0 or not np.all(np.isfinite(m)):
        raise ValueError(f"affine matrix is singular: {m.reshape(2, 3).tolist()}")
    inv_det = 1.0 / det
    a11, a22 = m[4] * inv_det, m[0] * inv_det
    a12, a21 = -m[1] * inv_det, -m[3] * inv_det
    b1 = -a11 * m[2] - a12 * m[5]
    b2 = -a21 * m[2] - a22 * m[5]
    return np.array([[a11, a12, b1], [a21, a22, b2]])


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a * b + c`` in float32 with a single rounding (a float32 product is exact in float64)."""
    r = np.multiply(a, b, dtype=np.float64)  # inputs cast on the fly: no float64 copies
    r += c
    return r.astype(np.float32)


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``image`` by the affine ``matrix`` into a ``size x size`` crop.

    ``image``: ``(H, W, C)`` or ``(H, W)`` uint8. ``matrix``: ``(2, 3)`` map from image to crop
    pixels. Bilinear sampling; samples outside the image are 0 (black). Same result as
    ``cv2.warpAffine(image, matrix, (size, size), flags=INTER_LINEAR, borderValue=0)``.
    Returns ``(size, size, C)`` (or ``(size, size)``) uint8.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(
            f"image must be a non-empty (H, W) or (H, W, C) uint8 array, "
            f"got shape {img.shape} dtype {img.dtype}"
        )
    if np.shape(matrix) != (2, 3):
        raise ValueError(f"matrix must have shape (2, 3), got {np.shape(matrix)}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    h, w = img.shape[:2]

    m = _invert_affine(matrix).astype(np.float32).reshape(6)  # crop -> image
    if _NATIVE is not None:
        src = np.ascontiguousarray(img)
        out = np.empty((size, size, src.shape[2]), dtype=np.uint8)
        _NATIVE.warp_affine(
            src.ctypes.data, h, w, src.shape[2], out.ctypes.data, size, *map(float, m)
        )
        return out[:, :, 0] if squeeze else out
    return _warp_numpy(img, m, size, squeeze)


def _warp_numpy(img: np.ndarray, m: np.ndarray, size: int, squeeze: bool) -> np.ndarray:
    """:func:`warp_affine` in numpy: ``img (H, W, C) uint8``, ``m (6,) float32`` crop -> image."""
    h, w = img.shape[:2]
    f32 = np.float32
    xs = np.arange(size, dtype=f32)
    ys = np.arange(size, dtype=f32)
    row_x = m[1] * ys + m[2]  # (size,) float32
    row_y = m[4] * ys + m[5]
    sx = _fma32(np.broadcast_to(m[0], (size, size)), xs[None, :], row_x[:, None])  # (size, size)
    sy = _fma32(np.broadcast_to(m[3], (size, size)), xs[None, :], row_y[:, None])
    x0f = np.floor(sx)
    y0f = np.floor(sy)
    ax = (sx - x0f).reshape(-1, 1)  # (size * size, 1) float32
    ay = (sy - y0f).reshape(-1, 1)
    # Clip before the int cast so that wild coordinates cannot overflow.
    x0 = np.clip(x0f, -2, w + 1).astype(np.int64).reshape(-1)
    y0 = np.clip(y0f, -2, h + 1).astype(np.int64).reshape(-1)
    flat = img.reshape(h * w, img.shape[2])  # a view for C-contiguous images
    in_x0, in_x1 = (x0 >= 0) & (x0 < w), (x0 >= -1) & (x0 < w - 1)
    in_y0, in_y1 = (y0 >= 0) & (y0 < h), (y0 >= -1) & (y0 < h - 1)
    cx0, cx1 = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    ry0, ry1 = np.clip(y0, 0, h - 1) * w, np.clip(y0 + 1, 0, h - 1) * w

    def tap(row: np.ndarray, col: np.ndarray, inside: np.ndarray) -> np.ndarray:
        v = flat.take(row + col, axis=0).astype(f32)  # (size * size, C)
        v[~inside] = 0.0  # outside the image: black
        return v

    p00, p01 = tap(ry0, cx0, in_y0 & in_x0), tap(ry0, cx1, in_y0 & in_x1)
    p10, p11 = tap(ry1, cx0, in_y1 & in_x0), tap(ry1, cx1, in_y1 & in_x1)
    top = _fma32(ax, p01 - p00, p00)
    bottom = _fma32(ax, p11 - p10, p10)
    out = _fma32(ay, bottom - top, top).reshape(size, size, -1)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out[:, :, 0] if squeeze else out


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The aligned face: ``(H, W, 3) uint8`` + ``(5, 2)`` landmarks -> ``(size, size, 3) uint8``."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB uint8, got shape {img.shape}")
    return warp_affine(img, estimate_norm(landmarks, size), size)


def align_faces(
    image: np.ndarray, landmarks: Sequence[np.ndarray] | np.ndarray, size: int = 112
) -> np.ndarray:
    """Aligned crops of every face in ``image``.

    ``image``: ``(H, W, 3) uint8`` RGB at full resolution. ``landmarks``: ``(N, 5, 2)`` array or
    a sequence of ``(5, 2)`` arrays, in pixels of ``image``. Returns ``(N, size, size, 3) uint8``
    (``N = 0`` gives an empty batch).
    """
    pts = [np.asarray(p) for p in landmarks]
    out = np.empty((len(pts), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(pts):
        out[i] = norm_crop(image, p, size)
    return out


__all__ = ["ARCFACE_TEMPLATE", "align_faces", "estimate_norm", "norm_crop", "warp_affine"]
