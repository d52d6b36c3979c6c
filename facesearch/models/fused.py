"""The accurate model ``sface+dlib``: SFace and dlib's ResNet as one 256-d unit vector.

SFace and dlib's face ResNet make different errors. Their fused distance
``d = d_sface + w * |f_dlib(a) - f_dlib(b)|^2`` (``d_sface`` between unit SFace vectors, raw
dlib descriptors) is the squared L2 distance between the vectors ``[f_sface, sqrt(w) f_dlib]``;
dividing each by its norm keeps every invariant of facesearch (unit vectors, ``d`` in [0, 4],
``d = 2 - 2 ip`` for FAISS), and the thresholds are calibrated on the fused vectors anyway.
:data:`DLIB_WEIGHT` and the raw dlib descriptors were chosen on LFW View 1 (``pairsDevTrain``)
by ``bench/dlib_lfw.py``; see ``bench/results/dlib.md`` for what they give on View 2.

Each network reads its own crop of the photo: SFace the 112x112 ArcFace crop
(:func:`facesearch.align.align_faces`), dlib the 150x150 dlib chip
(:func:`facesearch.align.dlib_chips`), both from the same five YuNet landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facesearch.align import align_faces, dlib_chips
from facesearch.models.dlib_npengine import NumpyDlibEmbedder
from facesearch.models.npengine import NumpyEmbedder
from facesearch.models.sface_weights import l2_normalize

#: ``w`` of the fused distance, chosen on LFW View 1 (``bench/dlib_lfw.py``).
DLIB_WEIGHT: float = 2.0
MODEL_NAME = "sface+dlib"


def fuse(sface: np.ndarray, dlib_raw: np.ndarray, weight: float = DLIB_WEIGHT) -> np.ndarray:
    """``(N, 128)`` unit SFace vectors and ``(N, 128)`` raw dlib descriptors ->
    ``(N, 256) float32`` unit vectors ``[f_sface, sqrt(w) f_dlib] / norm``."""
    if sface.shape != dlib_raw.shape or sface.ndim != 2:
        raise ValueError(f"need two (N, 128) arrays, got {sface.shape} and {dlib_raw.shape}")
    if not weight > 0:
        raise ValueError(f"weight must be > 0, got {weight}")
    both = np.concatenate([sface, np.float32(np.sqrt(weight)) * dlib_raw], axis=1)
    return l2_normalize(both)


class FusedEmbedder:
    """Faces of a photo in, ``sface+dlib`` vectors out (numpy engine for both networks).

    ``embed_faces(image, landmarks)``: ``(H, W, 3) uint8`` RGB and ``(N, 5, 2)`` YuNet
    landmarks in its pixels -> ``(N, 256) float32`` unit vectors.
    """

    def __init__(
        self,
        sface: NumpyEmbedder | None = None,
        dlib: NumpyDlibEmbedder | None = None,
        weight: float = DLIB_WEIGHT,
    ) -> None:
        self.sface = sface if sface is not None else NumpyEmbedder()
        self.dlib = dlib if dlib is not None else NumpyDlibEmbedder()
        self.weight = weight
        self.name = MODEL_NAME
        self.dim: int = int(self.sface.dim + self.dlib.dim)

    def embed_faces(
        self, image: np.ndarray, landmarks: Sequence[np.ndarray] | np.ndarray
    ) -> np.ndarray:
        """``(N, 256) float32`` unit vectors of the faces with ``landmarks`` in ``image``."""
        if len(landmarks) == 0:
            return np.zeros((0, self.dim), np.float32)
        s = self.sface.embed(align_faces(image, landmarks))
        d = self.dlib.raw(dlib_chips(image, landmarks))
        return fuse(s, d, self.weight)


__all__ = ["DLIB_WEIGHT", "MODEL_NAME", "FusedEmbedder", "fuse"]
