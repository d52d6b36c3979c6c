"""The FaceNet distance: d(a, b) = |f(a) - f(b)|^2 between unit vectors.

0 means identical, 4 means opposite. For unit vectors d = 2 - 2 cos(a, b).
"""

from __future__ import annotations

import numpy as np

#: The base operating point of the shipped SFace model: the distance at which the
#: false-accept rate over all 174.6 million impostor pairs of LFW is 1e-3 (1.273; it is also
#: SFace's published cosine threshold 0.363, d = 2 - 2 * 0.363). Clustering derives its merge
#: threshold from it (see facesearch.cluster_algorithms).
DEFAULT_THRESHOLD: float = 1.274

#: Default 1:1 "same person" threshold for ``facesearch verify``: the mean of the ten
#: per-fold thresholds fitted for accuracy by the LFW View 2 protocol (1.3249; folds 1.30-1.32),
#: measured with ``facesearch evaluate lfw`` (README, "Thresholds").
DEFAULT_VERIFY_THRESHOLD: float = 1.325

#: Default 1:K "this is person X" threshold for ``facesearch query``. Identification compares a
#: face with every person of the collection, so its false-match rate grows with their number;
#: it takes the stricter LFW operating point FAR = 1e-4 over all impostor pairs (d = 1.147,
#: where 99.2% of LFW's same-person pairs still match), i.e. about 1% false matches per query
#: against a gallery of 100 people.
DEFAULT_IDENTIFY_THRESHOLD: float = 1.147


#: Embeddings are unit vectors: ``| |x| - 1 |`` above this is refused (store, index, clustering).
UNIT_NORM_TOLERANCE: float = 1e-3


def shipped_threshold(purpose: str = "verify") -> float:
    """The shipped SFace's LFW-calibrated tau for ``verify`` (1:1) or ``identify`` (1:K)."""
    return DEFAULT_IDENTIFY_THRESHOLD if purpose == "identify" else DEFAULT_VERIFY_THRESHOLD


def distance(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Squared Euclidean distance between unit embeddings.

    ``a`` and ``b``: ``(D,)`` or ``(N, D)`` float arrays (broadcast row-wise).
    Returns a float for two vectors, else ``(N,) float32``.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"embedding sizes differ: {a.shape[-1]} vs {b.shape[-1]}")
    d = np.sum((a - b) ** 2, axis=-1)
    return float(d) if d.ndim == 0 else d.astype(np.float32)


def pairwise_distance(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """All distances between rows: ``(Na, D), (Nb, D) -> (Na, Nb) float32``, clipped to [0, 4]."""
    xa = np.asarray(xa, dtype=np.float32)
    xb = np.asarray(xb, dtype=np.float32)
    d = (xa * xa).sum(1)[:, None] + (xb * xb).sum(1)[None, :] - 2.0 * xa @ xb.T
    return np.clip(d, 0.0, 4.0).astype(np.float32)


def same_person(d: float, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """The verification decision: same person when d < tau."""
    return d < threshold
