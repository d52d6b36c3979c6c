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
from typing import Any

import numpy as np

from facesearch.align import align_faces, dlib_chips
from facesearch.errors import ModelError
from facesearch.models.dlib_npengine import NumpyDlibEmbedder
from facesearch.models.modelfile import FUSED as MODEL_NAME
from facesearch.models.npengine import NumpyEmbedder
from facesearch.models.sface_weights import l2_normalize

#: ``w`` of the fused distance, chosen on LFW View 1 (``bench/dlib_lfw.py``).
DLIB_WEIGHT: float = 0.75


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
    """Faces of photos in, ``sface+dlib`` vectors out (numpy engine for both networks).

    ``embed_photos(images, landmarks)``: RGB photos ``(H, W, 3) uint8`` and, per photo, the
    YuNet landmarks ``(n, 5, 2)`` of its faces in its pixels -> ``(sum n, 256) float32`` unit
    vectors, every crop and chip of the batch through each network together. The model makes
    its own crops: :meth:`embed` (aligned 112x112 crops, as SFace takes) is refused.
    ``flip``: each network also embeds the mirror image of its crop, and the two are averaged
    (SFace's unit vectors, dlib's raw descriptors) before the fusion; the thresholds are
    calibrated without it.
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
        self.batch_size = self.sface.batch_size
        self.meta: dict[str, Any] = {}  # the model's meta, as a model file's embedder has it
        self.threshold: float | None = None

    def embed_photos(
        self,
        images: Sequence[np.ndarray],
        landmarks: Sequence[Sequence[np.ndarray] | np.ndarray],
    ) -> np.ndarray:
        """``(sum n, 256) float32`` unit vectors of the faces with ``landmarks`` in ``images``."""
        if len(images) != len(landmarks):
            raise ValueError(f"{len(images)} images but {len(landmarks)} landmark lists")
        crops = [align_faces(im, lm) for im, lm in zip(images, landmarks, strict=True) if len(lm)]
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        chips = [dlib_chips(im, lm) for im, lm in zip(images, landmarks, strict=True) if len(lm)]
        s = self.sface.embed(np.concatenate(crops))  # (n, 128) unit (flip: SFace's own)
        both = np.concatenate(chips)  # (n, 150, 150, 3)
        d = self.dlib.raw(both)  # (n, 128) raw
        if self.flip:
            d = (d + self.dlib.raw(np.ascontiguousarray(both[:, :, ::-1]))) / np.float32(2.0)
        return fuse(s, d, self.weight)

    @property
    def flip(self) -> bool:
        """Embed each crop and its mirror image, averaged (both networks)."""
        return bool(self.sface.flip)

    @flip.setter
    def flip(self, value: bool) -> None:
        self.sface.flip = bool(value)

    def embed_faces(
        self, image: np.ndarray, landmarks: Sequence[np.ndarray] | np.ndarray
    ) -> np.ndarray:
        """``(N, 256) float32`` unit vectors of the faces with ``landmarks`` in ``image``."""
        return self.embed_photos([image], [landmarks])

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Refused: the fused model reads the photo (two crops per face), not 112x112 crops."""
        raise ModelError(
            f"model {MODEL_NAME!r} embeds faces from their photo and landmarks "
            "(embed_photos), not from aligned 112x112 crops"
        )


__all__ = ["DLIB_WEIGHT", "MODEL_NAME", "FusedEmbedder", "fuse"]
