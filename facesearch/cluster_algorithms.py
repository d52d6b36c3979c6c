"""Agglomerative clustering of face embeddings on a sparse k-nearest-neighbour graph.

Pure functions over arrays. Embeddings ``xb`` are ``(N, D) float32`` unit vectors; the distance is
the FaceNet one, ``d(a, b) = |a - b|^2 = 2 - 2 cos(a, b)`` (:mod:`facesearch.distance`).

How it scales
    No ``N x N`` matrix is ever built. :func:`knn_graph` asks FAISS for the ``k`` nearest
    neighbours of every face (an exact flat inner-product index up to
    :attr:`ClusterConfig.exact_max` faces, an HNSW index above), the graph is made symmetric and
    only its edges with ``d < threshold`` are kept: two clusters are candidates for a merge only if
    the graph holds a pair of their faces closer than the threshold (a necessary condition for
    any of the three linkages to be below it). Then, per linkage:

    * ``average``: the nearest-neighbour chain (Murtagh 1983; Mullner 2011), ``O(N)`` chain steps,
      each one vectorised query of a cluster's graph neighbours; neighbour sets are merged
      lazily (set union, resolved through a union-find array when read).
    * ``complete``: a heap of candidate merges with lazy invalidation (a version per cluster).
    * ``single``: Kruskal over the edges sorted by ``d``, with a union-find (edges held back by
      the pair threshold are passed over again until nothing merges).

    Time and memory at 100,000 and 1,000,000 faces: ``bench/results/cluster.md``.

What a missing edge means
    The graph only restricts *which* pairs of clusters are candidates; the linkage of a candidate
    pair is never estimated from the edges alone:

    * ``average``: the mean of ``d`` over *all* ``|A| |B|`` pairs, computed exactly from the
      clusters' sum vectors, because for squared Euclidean distances
      ``mean d = sum|a|^2/|A| + sum|b|^2/|B| - 2 (S_A . S_B) / (|A| |B|)``. A pair of faces that is
      not an edge counts at its true distance.
    * ``complete``: the largest ``d`` over all pairs, computed on demand from the member
      embeddings when the graph does not already know it.
    * ``single``: the smallest ``d`` over the graph edges between the clusters.

    Hence the guarantee, for every linkage: **if every pair of faces closer than the threshold is
    an edge of the graph, the result equals exact (dense) agglomerative clustering cut at the
    threshold** (tested against scipy; for a plain cut, see Thresholds). A pair of clusters that
    shares no such edge then has all of its face pairs at ``d >= threshold``, so its linkage is
    ``>= threshold`` too. When ``k`` is smaller than that needs (identities with more than ``k``
    faces), the approximation is only that two clusters without a close edge between them are
    never compared; since the clusters of one person stay joined by many edges, the result still
    matched the exact one on LFW and on the synthetic sets with identities of up to 60 faces at
    ``k = 8`` (tests, benchmark).

Constraints (cannot-link and must-link)
    * Two faces of the same photo (``photo_ids``) are never in one cluster.
    * Faces labelled as different people (``labels >= 0``, ``-1`` = unlabelled) are never in one
      cluster. A cluster takes the label of its labelled members.
    * Must-link: with :attr:`ClusterConfig.premerge_labels` (default), faces that share a label
      start as one cluster; unlabelled faces can then join that person's cluster by the same
      linkage rule as any other cluster (label propagation). The faces of one labelled person are
      kept together even if two of them are in the same photo (the label is the user's word).
    * Rejections ("not this person"): ``(face, label)`` pairs; the face is never in one
      cluster with a face of that label (a person, or a group the caller kept together under
      a label of its own). Unlabelled faces grouped with the rejected face inherit the
      constraint, so the face cannot reach the label through them either.
    Constraints are monotone (a cluster only gains photos, labels and rejections), so a pair of
    clusters that conflicts once is dropped from the graph for good.

Thresholds
    Merge while the linkage distance is ``< threshold``; but two *single* faces (each in no group
    yet) only while their ``d < pair_threshold`` (stricter). :func:`default_thresholds` derives
    both from the faces being clustered, without labels and without assuming where one person's
    faces lie (:func:`face_statistics`): the different-person distances from random pairs, the
    one-person distances from the pairs in excess of those, and the share of faces that are
    alone (whose nearest neighbour is as far as a nearest stranger). A single threshold fitted
    on one kind of collection fails on another: where people have many photos of mixed quality
    one person's faces lie far apart (mean ``d`` 0.63 on clean LFW photos, 0.87 with every
    photo degraded) and a strict threshold splits them; where most people appear once, a loose
    one joins strangers. So:

    * ``pair_threshold``: the Bayes boundary for two single faces at the prior ``1 / N`` (two
      faces that joined no group are, as far as the clustering knows, of people seen once);
    * ``threshold``: where a face is no longer more likely with its own person than alone next
      to the nearest of its ``N - 1`` strangers, weighed by the share of faces alone, and at
      most the even-odds boundary between one person and two.

    The figures they give on sets of different shapes, beside the other methods, are in
    ``bench/results/cluster.md``. An explicit ``threshold`` alone is a plain cut
    (``pair_threshold = threshold``), hence the guarantee above. With the pair rule the merge
    rule depends on the clusters' sizes, which the nearest-neighbour chain's proof does not
    cover (two single faces that may not merge can later, once one of them joined a group; the
    chain then goes back, see ``run_chain``); its results equal a greedy agglomeration that
    always merges the globally closest allowed pair (dense oracle in the tests). The same rule
    is used for ``single`` and ``complete`` (single linkage chains more, complete splits more).

Cluster quality and ids
    :func:`cohesion` scores every cluster (mean intra-cluster ``d``, share of members whose
    nearest face is inside, the margin between a member's nearest outsider and its own
    cluster) so that doubtful clusters can be shown first. :func:`stable_ids`
    carries cluster ids over a re-run: a new cluster keeps the id of the old one it overlaps
    with a Jaccard index of at least 0.5 (:func:`match_clusters`), others get fresh ids.

Output
    ``(N,) int64`` cluster ids: ``0 .. C-1`` numbered by decreasing size (ties: smallest face
    index first), ``-1`` for a face left alone (its group is smaller than ``min_size``). The
    metrics here count every ``-1`` as a cluster of its own.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from facesearch.distance import DEFAULT_THRESHOLD, UNIT_NORM_TOLERANCE
from facesearch.errors import IndexMismatchError

log = logging.getLogger(__name__)

Linkage = Literal["average", "single", "complete"]
LINKAGES: tuple[str, ...] = ("average", "single", "complete")

#: Edges per chunk when their distances are recomputed (bounds temporary memory).
_CHUNK = 1 << 15
#: Margin on FAISS's float32 distances when edges are selected before the float64 recomputation.
_SLACK = 1e-4


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of one clustering run.

    ``threshold``: merge while the linkage distance (in ``d`` units) is ``< threshold``; ``None``
    (default) takes :func:`default_thresholds` of the faces being clustered (from their own
    statistics). ``pair_threshold``: the stricter bound for a merge of
    two *single* faces (each in no group yet), ``d < pair_threshold``; ``None`` takes the default
    rule's when ``threshold`` is ``None`` too, else ``threshold`` itself (an explicit
    ``threshold`` alone is a plain cut of the dendrogram). It is never above ``threshold``.
    ``linkage``: ``"average"`` (default), ``"single"`` or ``"complete"``. ``k``: neighbours per
    face in the graph (32: exact-equivalent on LFW and on synthetic sets; raise it for identities
    with many hundreds of faces). ``min_size``: groups smaller than this are left as singletons
    (``-1``). ``premerge_labels``: faces with the same label start in one cluster (must-link).
    ``exact_max``: up to this many faces the neighbours come from an exact flat index, above it
    from HNSW (approximate).
    """

    threshold: float | None = None
    linkage: Linkage = "average"
    k: int = 32
    min_size: int = 2
    premerge_labels: bool = True
    exact_max: int = 200_000
    pair_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.linkage not in LINKAGES:
            raise ValueError(f"linkage must be one of {LINKAGES}, got {self.linkage!r}")
        for name in ("threshold", "pair_threshold"):
            t = getattr(self, name)
            if t is not None and not 0.0 < t <= 4.0:
                raise ValueError(f"{name} is a distance d in (0, 4], got {t}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {self.min_size}")
        if self.exact_max < 0:
            raise ValueError(f"exact_max must be >= 0, got {self.exact_max}")

    def thresholds(
        self, xb: np.ndarray, nn_d: np.ndarray | None = None, index: faiss.Index | None = None
    ) -> tuple[float, float]:
        """``(threshold, pair_threshold)`` for clustering ``xb`` ``(N, D) float32`` under these
        settings: the ones given, the default rule's (:func:`default_thresholds`, with the
        optional ``nn_d`` / ``index`` it takes) for those left ``None``; the pair threshold is
        capped at the threshold."""
        if self.threshold is None:
            t, t_pair = default_thresholds(xb, nn_d=nn_d, index=index)
            if self.pair_threshold is not None:
                t_pair = self.pair_threshold
        else:
            t = self.threshold
            t_pair = t if self.pair_threshold is None else self.pair_threshold
        return t, min(t_pair, t)


@dataclass(frozen=True)
class Proposal:
    """A person proposed for an unlabelled cluster: average-linkage ``distance`` to the person."""

    cluster: int
    label: int
    distance: float


@dataclass(frozen=True)
class PRF:
    """Precision, recall and their harmonic mean ``f``."""

    precision: float
    recall: float
    f: float


# --------------------------------------------------------------------------- inputs


def _check_embeddings(xb: np.ndarray, name: str = "xb") -> np.ndarray:
    """``xb`` as ``(N, D) float32`` C-contiguous unit rows, or ``ValueError``."""
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if xb.ndim != 2:
        raise ValueError(f"{name} must be (N, D), got shape {xb.shape}")
    if len(xb):
        norms = np.concatenate(  # by chunks: no (N, D) temporary
            [np.linalg.norm(xb[s : s + _CHUNK], axis=1) for s in range(0, len(xb), _CHUNK)]
        )
        bad = np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{name} must hold unit-norm embeddings; row {i} has norm {norms[i]:.4f} "
                f"({int(bad.sum())} rows off by more than {UNIT_NORM_TOLERANCE}); "
                "L2-normalise them first"
            )
    return xb


def _check_rejections(r: np.ndarray | None, n: int) -> np.ndarray:
    """Optional ``(M, 2)`` ``(face position, label)`` pairs as ``int64``; ``None``: none."""
    if r is None:
        return np.zeros((0, 2), dtype=np.int64)
    r = np.asarray(r)
    if r.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if r.ndim != 2 or r.shape[1] != 2:
        raise ValueError(f"rejections must be (M, 2) (face position, label), got {r.shape}")
    if r.dtype.kind not in "iu":
        raise ValueError(f"rejections must be integers, got dtype {r.dtype}")
    r = r.astype(np.int64, copy=False)
    bad = (r[:, 0] < 0) | (r[:, 0] >= n) | (r[:, 1] < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"rejection {i} is {r[i].tolist()}: face positions are 0..{n - 1}, labels >= 0"
        )
    return r


def _check_ids(a: np.ndarray | None, n: int, name: str) -> np.ndarray:
    """An optional ``(n,)`` integer array as ``int64``; ``None`` becomes all ``-1``."""
    if a is None:
        return np.full(n, -1, dtype=np.int64)
    a = np.asarray(a)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- threshold


@dataclass(frozen=True)
class FaceStatistics:
    """What the default thresholds are made of, estimated from the faces alone (no labels).

    ``mu_diff``, ``sigma_diff``: median and MAD-based spread of ``d`` over random pairs (almost
    all of two different people). ``mu_same``, ``sigma_same``: mean and spread of ``d`` for two
    faces of one person, from the pairs in excess of the different-person normal below
    ``mu_diff - 2.5 sigma_diff`` (``measured`` False: too few such pairs to tell, and tau's
    symmetric model ``mu_same = 2 tau - mu_diff``, ``sigma_same = sigma_diff`` stands in).
    ``same_share``: that excess as a share of all pairs. ``lone_share``: the share of faces whose
    person has no other face here, from how many faces have their nearest neighbour as far as
    a nearest stranger usually is. ``n``: number of faces. ``crowd`` False: the faces do not look
    like several people (``mu_diff <= tau`` or no spread), and tau is used as it is.
    """

    n: int
    mu_diff: float
    sigma_diff: float
    mu_same: float
    sigma_same: float
    same_share: float
    lone_share: float
    measured: bool
    crowd: bool


def _norm_logpdf(t: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    z = (t - mu) / sigma
    return np.asarray(-0.5 * z * z - math.log(sigma * math.sqrt(2.0 * math.pi)))


def _norm_logsf(t: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """``log P(X > t)`` for ``X ~ N(mu, sigma)``, accurate far into the lower tail too."""
    z = np.asarray((t - mu) / (sigma * math.sqrt(2.0)), dtype=np.float64)
    return np.log(np.maximum([0.5 * math.erfc(float(v)) for v in z.ravel()], 1e-300)).reshape(
        z.shape
    )


def _sample_nn_d(xb: np.ndarray, m: int, seed: int, index: faiss.Index | None) -> np.ndarray:
    """Nearest-neighbour ``d`` (itself excluded) of up to ``m`` seeded faces ``(m,) float64``."""
    n = len(xb)
    pos = np.sort(np.random.default_rng(seed).choice(n, min(n, m), replace=False))
    q = xb[pos]
    if index is not None and index.ntotal == n:
        sims, ids = index.search(q, 2)
        other = ids != pos[:, None]
        best = np.where(other[:, 0], sims[:, 0], sims[:, 1])
    else:  # brute force in chunks of faces (bounded memory)
        best = np.full(len(q), -np.inf, dtype=np.float32)
        for s in range(0, n, 1 << 14):
            sims = q @ xb[s : s + (1 << 14)].T  # (m, chunk)
            own = (pos >= s) & (pos < s + sims.shape[1])
            sims[np.flatnonzero(own), pos[own] - s] = -np.inf
            best = np.maximum(best, sims.max(axis=1))
    return np.clip(2.0 - 2.0 * best.astype(np.float64), 0.0, 4.0)


def face_statistics(
    xb: np.ndarray,
    tau: float = DEFAULT_THRESHOLD,
    nn_d: np.ndarray | None = None,
    index: faiss.Index | None = None,
    sample: int = 3000,
    seed: int = 0,
) -> FaceStatistics:
    """:class:`FaceStatistics` of ``xb`` ``(N, D) float32`` unit rows.

    The pairs are all pairs of ``min(N, sample)`` faces drawn with ``seed`` (3,000 faces: 4.5
    million pairs, ~0.1 s; the estimates are shares and spreads, which a uniform sample of faces
    keeps). ``nn_d``: the nearest-neighbour ``d`` of every face (e.g. the first column of
    :func:`knn_graph`); without it, that of up to 2,000 seeded faces is searched (in ``index``
    when it holds exactly ``xb``, else by brute force).
    """
    xb = _check_embeddings(xb)
    n = len(xb)
    if n < 3:
        return FaceStatistics(n, 4.0, 0.0, 0.0, 0.0, 0.0, 1.0, False, False)
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.choice(n, min(n, sample), replace=False))
    xs = xb[pos]
    iu = np.triu_indices(len(pos), 1)
    d = np.clip(2.0 - 2.0 * (xs @ xs.T)[iu].astype(np.float64), 0.0, 4.0)
    mu = float(np.median(d))
    sigma = 1.4826 * float(np.median(np.abs(d - mu)))
    if mu <= tau or sigma == 0.0:
        return FaceStatistics(n, mu, sigma, 0.0, 0.0, 0.0, 0.0, False, False)
    # same-person pairs: the histogram's excess over the different-person normal
    edges = np.arange(0.0, mu - 2.5 * sigma + 1e-9, 0.01)
    counts = np.histogram(d, edges)[0].astype(np.float64)
    expected = -len(d) * np.diff(np.exp(_norm_logsf(edges, mu, sigma)))
    # a bin counts when it holds clearly more than the normal's tail: twice as many (its shape
    # is only roughly right there) and beyond Poisson noise
    excess = np.where(counts > 2.0 * expected + 3.0 * np.sqrt(expected), counts - expected, 0.0)
    mid = (edges[1:] + edges[:-1]) / 2.0
    total = float(excess.sum())
    measured = total >= 20.0  # a few dozen pairs of one person, at least
    if measured:
        mu_s = float((excess * mid).sum() / total)
        sigma_s = max(math.sqrt(float((excess * (mid - mu_s) ** 2).sum() / total)), 0.01)
    else:
        mu_s, sigma_s = 2.0 * tau - mu, sigma
    # lone faces: nearest neighbour beyond the lower quartile of the nearest of N-1 strangers
    if nn_d is None:
        nn_d = _sample_nn_d(xb, 2000, seed, index)
    grid = np.linspace(0.0, mu, 4001)
    p_min_above = np.exp((n - 1) * _norm_logsf(grid, mu, sigma))  # P(nearest stranger > t)
    q25 = float(grid[np.argmax(p_min_above <= 0.75)])
    lone = float(np.mean(np.asarray(nn_d) > q25)) / 0.75
    lone = min(max(lone, 1.0 / n), 1.0 - 1.0 / n)
    return FaceStatistics(n, mu, sigma, mu_s, sigma_s, total / len(d), lone, measured, True)


def _first_failure(ok: np.ndarray, grid: np.ndarray) -> float:
    """The first ``grid`` value where ``ok`` is False (the grid's end when it never is)."""
    bad = np.flatnonzero(~ok)
    return float(grid[bad[0]]) if len(bad) else float(grid[-1])


def thresholds_from(stats: FaceStatistics, tau: float = DEFAULT_THRESHOLD) -> tuple[float, float]:
    """``(threshold, pair_threshold)`` from :class:`FaceStatistics` (:func:`default_thresholds`)."""
    if not stats.crowd:
        return tau, tau
    n, mu, sigma = stats.n, stats.mu_diff, stats.sigma_diff
    grid = np.linspace(stats.mu_same, mu, 4001)
    log_same = _norm_logpdf(grid, stats.mu_same, stats.sigma_same)
    log_diff = _norm_logpdf(grid, mu, sigma)
    # a pair at even odds, and two faces of people seen once (prior 1 / N)
    even = _first_failure(log_same >= log_diff, grid)
    p = 1.0 / n
    pair = _first_failure(log_same + math.log(p) >= log_diff + math.log(1.0 - p), grid)
    # a face against the nearest of its N - 1 strangers, a share `lone` of faces being alone
    lam = stats.lone_share
    log_nearest = math.log(n - 1) + log_diff + (n - 2) * _norm_logsf(grid, mu, sigma)
    alone = _first_failure(log_same + math.log(1.0 - lam) >= log_nearest + math.log(lam), grid)
    t = max(min(even, alone), pair)
    return t, pair


def default_thresholds(
    xb: np.ndarray,
    tau: float = DEFAULT_THRESHOLD,
    nn_d: np.ndarray | None = None,
    index: faiss.Index | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """The merge thresholds for these faces, from their own statistics (no labels).

    Two normals model ``d``: different people ``N(mu_diff, sigma_diff)`` from random pairs, one
    person ``N(mu_same, sigma_same)`` from the pairs in excess of it
    (:func:`face_statistics`). Nothing assumes where one person's faces lie: photos of mixed
    quality move ``mu_same`` up (0.63 on clean LFW, 0.87 with every photo degraded, measured),
    and the thresholds move with it. Then, for ``N`` faces of which a share ``lone`` are of
    people seen once:

    * ``pair_threshold``: the Bayes boundary for two single faces at the prior ``1 / N`` (as far
      as the clustering knows, both are of people seen once, and one given other face of the
      ``N`` is theirs with probability ``1 / N``). It guards against the commonest error where
      most people appear once: two strangers who are each other's nearest face.
    * ``threshold`` (any merge with a group): the largest ``d`` at which a face is still more
      likely with its own person (prior ``1 - lone``) than alone with the nearest of its
      ``N - 1`` strangers there (prior ``lone``; the nearest of ``N - 1`` normal draws), and at
      most the even-odds boundary between the two normals (never merge what a single pair at
      even odds would call two people). Where nearly every face has company (``lone`` ~ 0)
      this is the even-odds boundary; where many faces are alone, it drops towards the
      strangers' nearest distances.

    ``threshold >= pair_threshold``. Both are tau when the faces do not look like several people
    (fewer than 3 faces, ``mu_diff <= tau``); tau also supplies the one-person normal when too
    few same-person pairs show (``mu_same = 2 tau - mu_diff``). ``xb``: ``(N, D) float32``
    unit rows; ``nn_d`` / ``index``: see :func:`face_statistics`. Measured values:
    ``bench/results/cluster.md``.
    """
    stats = face_statistics(xb, tau, nn_d=nn_d, index=index, seed=seed)
    t, t_pair = thresholds_from(stats, tau)
    log.info(
        "default thresholds %.3f, single faces %.3f (mu_diff %.3f, sigma_diff %.3f, mu_same "
        "%.3f, sigma_same %.3f%s, same-person pairs %.4f, lone faces %.3f, N %d)",
        t, t_pair, stats.mu_diff, stats.sigma_diff, stats.mu_same, stats.sigma_same,
        "" if stats.measured else " from tau", stats.same_share, stats.lone_share, stats.n,
    )  # fmt: skip
    return t, t_pair


def default_threshold(xb: np.ndarray, tau: float = DEFAULT_THRESHOLD, seed: int = 0) -> float:
    """The first of :func:`default_thresholds`: the merge threshold for a merge with a group."""
    return default_thresholds(xb, tau, seed=seed)[0]


# --------------------------------------------------------------------------- k-NN graph


def build_index(xb: np.ndarray, exact: bool = True) -> faiss.Index:
    """A FAISS inner-product index over ``xb`` ``(N, D) float32``: flat (exact) or HNSW.

    HNSW uses ``M = 32``, ``efConstruction = 80`` and ``efSearch = 128``.
    """
    xb = _check_embeddings(xb)
    dim = xb.shape[1]
    if exact:
        index: faiss.Index = faiss.IndexFlatIP(dim)
    else:
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.hnsw.efSearch = 128
        index = hnsw
    index.add(xb)
    return index


def knn_graph(
    xb: np.ndarray, k: int, index: faiss.Index | None = None, exact_max: int = 200_000
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every face, itself excluded.

    ``xb``: ``(N, D) float32`` unit rows. ``index``: an inner-product FAISS index that holds
    exactly ``xb`` with ids ``0 .. N-1`` (e.g. the collection's); without it one is built, exact
    when ``N <= exact_max``. Returns ``D`` ``(N, k') float32`` distances ``d`` (ascending) and
    ``I`` ``(N, k') int64`` neighbour positions, ``k' = min(k, N - 1)``; an approximate index may
    leave trailing slots empty as ``I = -1``, ``D = inf``.
    Raises :class:`IndexMismatchError` when ``index`` does not hold ``xb``.
    """
    xb = _check_embeddings(xb)
    n = len(xb)
    kk = min(k, n - 1)
    if kk <= 0:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    if index is None:
        index = build_index(xb, exact=n <= exact_max)
    elif index.ntotal != n or index.d != xb.shape[1]:
        raise IndexMismatchError(
            f"index holds {index.ntotal} vectors of dimension {index.d}, but {n} embeddings of "
            f"dimension {xb.shape[1]} are being clustered; pass the index built over exactly them"
        )
    sims, ids = index.search(xb, kk + 1)  # (N, k+1), self usually first
    ids = ids.astype(np.int64, copy=False)
    is_self = ids == np.arange(n)[:, None]
    found = is_self.any(axis=1)
    # Rows where a perfect duplicate pushed the face itself out: drop the last slot instead.
    is_self[~found, -1] = True
    lost = (~found) & (sims[:, 0] < 1.0 - 1e-4)
    if lost.mean() > 0.01:
        raise IndexMismatchError(
            f"{int(lost.sum())} of {n} faces are not their own nearest neighbour in the index; "
            "it does not hold these embeddings in this order (ids must be positions 0..N-1)"
        )
    # non-self slots, in order; most rows have themselves first (a slice, no sort)
    first = is_self[:, 0]
    out_ids = np.ascontiguousarray(ids[:, 1:])
    out_sims = np.ascontiguousarray(sims[:, 1:])
    other = np.flatnonzero(~first)
    if len(other):
        keep = np.argsort(is_self[other], axis=1, kind="stable")[:, :kk]
        out_ids[other] = np.take_along_axis(ids[other], keep, axis=1)
        out_sims[other] = np.take_along_axis(sims[other], keep, axis=1)
    del ids, sims, is_self
    ids = out_ids
    dist = np.clip(2.0 - 2.0 * out_sims, 0.0, 4.0).astype(np.float32)
    del out_sims
    dist[ids < 0] = np.inf
    return dist, ids


def _edges(
    dist: np.ndarray, ids: np.ndarray, max_d: float = np.inf
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges ``(a, b, d)`` with ``a < b`` and ``d < max_d``, each once, from a k-NN
    table. Only the selected slots are ever expanded (at 1M faces x 32 neighbours the whole
    table would make several 256 MB temporaries)."""
    n = len(ids)
    keep = (ids >= 0) & (dist < max_d)
    src = np.nonzero(keep)[0].astype(np.int64)
    dst = ids[keep].astype(np.int64, copy=False)
    w = dist[keep]
    del keep
    ok = dst != src
    src, dst, w = src[ok], dst[ok], w[ok]
    key = np.minimum(src, dst) * n + np.maximum(src, dst)
    del src, dst
    order = np.lexsort((w, key))  # by pair, smallest d first
    key, w = key[order], w[order]
    del order
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, w = key[first], w[first]
    return key // n, key % n, w.astype(np.float64)


# --------------------------------------------------------------------------- core


class _Agglomerator:
    """Agglomeration over a graph whose nodes start as the groups of ``init``.

    ``init[i]`` is the root face of face ``i``'s starting group (``init[init[i]] == init[i]``).
    ``tags``: cannot-link arrays ``(N,)``; two clusters with different non-negative values of one
    array never merge. ``photo_ids``: ``(N,)``, ``-1`` for unknown. ``threshold``: merge while
    the linkage is below it; ``pair_threshold`` (``<= threshold``): the bound instead when both
    clusters are single faces. ``rejections``: ``(M, 2)`` ``(face, label)`` pairs; a cluster
    holding the face never merges with one whose ``tags[0]`` (the labels) is that label.
    """

    def __init__(
        self,
        xb: np.ndarray,
        init: np.ndarray,
        tags: list[np.ndarray],
        photo_ids: np.ndarray,
        threshold: float,
        linkage: str,
        pair_threshold: float | None = None,
        rejections: np.ndarray | None = None,
    ) -> None:
        n = len(xb)
        self.threshold = threshold
        self.pair_threshold = (
            threshold if pair_threshold is None else min(pair_threshold, threshold)
        )
        self.linkage = linkage
        self.x = xb  # (N, D) float32; rows are read in float64 where linkages are computed
        self.parent = init.copy()
        self.alive = np.zeros(n, dtype=bool)
        self.alive[np.unique(init)] = True
        self.size = np.bincount(init, minlength=n).astype(np.int64)
        self.version = np.zeros(n, dtype=np.int64)
        # average linkage: float64 sum vectors of the roots of groups only (a single face's sum
        # is its own row), in slots that are reused as groups merge: at 1M faces this is a small
        # share of N x D, where a sum per face took 1 GB
        self.slot = np.full(n, -1, dtype=np.int64)
        groups = np.flatnonzero(self.size > 1)
        self.sums = np.zeros((max(16, 2 * len(groups)), xb.shape[1]), dtype=np.float64)
        self.free: list[int] = []
        self.used = len(groups)
        if len(groups):
            self.slot[groups] = np.arange(len(groups))
            member = self.size[init] > 1
            np.add.at(self.sums, self.slot[init[member]], xb[member].astype(np.float64))
        sq = np.empty(n, dtype=np.float64)
        for s in range(0, n, _CHUNK):
            rows = xb[s : s + _CHUNK].astype(np.float64)
            sq[s : s + _CHUNK] = np.einsum("ij,ij->i", rows, rows)
        self.sqn = np.bincount(init, weights=sq, minlength=n)
        self.msq = self.sqn / np.maximum(self.size, 1)  # mean squared norm per root
        # cannot-link state per root
        self.tags = [self._root_tags(t, init, n) for t in tags]
        self.photos: dict[int, set[int]] = {}
        if len(photo_ids):
            valid = photo_ids >= 0
            uniq, counts = np.unique(photo_ids[valid], return_counts=True)
            shared = np.isin(photo_ids, uniq[counts > 1]) & valid
            for i in np.flatnonzero(shared).tolist():
                self.photos.setdefault(int(init[i]), set()).add(int(photo_ids[i]))
        # rejected labels per root (a rejection of the group's own label is moot: ignored)
        self.forbid: dict[int, set[int]] = {}
        if rejections is not None and len(rejections):
            for face, label in rejections.tolist():
                self.forbid.setdefault(int(init[face]), set()).add(int(label))
        # members per root (complete linkage needs them)
        self.members: dict[int, list[int]] = {}
        if linkage == "complete":
            order = np.argsort(init, kind="stable")
            roots, starts = np.unique(init[order], return_index=True)
            for r, grp in zip(roots.tolist(), np.split(order, starts[1:]), strict=True):
                self.members[r] = grp.tolist()

    @staticmethod
    def _root_tags(t: np.ndarray, init: np.ndarray, n: int) -> np.ndarray:
        out = np.full(n, -1, dtype=np.int64)
        lab = t >= 0
        out[init[lab]] = t[lab]  # faces of one group share their tag, or it is a given conflict
        return out

    # -- constraints

    def compatible(self, a: int, b: int) -> bool:
        for t in self.tags:
            ta, tb = t[a], t[b]
            if ta >= 0 and tb >= 0 and ta != tb:
                return False
        if self.forbid:
            lab = self.tags[0]
            fa, fb = self.forbid.get(a), self.forbid.get(b)
            if (fa and lab[b] >= 0 and int(lab[b]) in fa) or (
                fb and lab[a] >= 0 and int(lab[a]) in fb
            ):
                return False
        pa, pb = self.photos.get(a), self.photos.get(b)
        if pa and pb:
            small, large = (pa, pb) if len(pa) <= len(pb) else (pb, pa)
            return small.isdisjoint(large)
        return True

    def _absorb(self, keep: int, gone: int) -> None:
        """Bookkeeping shared by every linkage: ``gone`` joins ``keep``."""
        self.parent[gone] = keep
        self.alive[gone] = False
        self.size[keep] += self.size[gone]
        total = self._sum(keep)
        total += self._sum(gone)
        if self.slot[gone] >= 0:
            self.free.append(int(self.slot[gone]))
            self.slot[gone] = -1
        if self.slot[keep] < 0:
            self.slot[keep] = self._new_slot()
        self.sums[self.slot[keep]] = total
        self.sqn[keep] += self.sqn[gone]
        self.msq[keep] = self.sqn[keep] / self.size[keep]
        self.version[keep] += 1
        for t in self.tags:
            if t[keep] < 0:
                t[keep] = t[gone]
        fg = self.forbid.pop(gone, None)
        if fg:
            fk = self.forbid.get(keep)
            if fk is None:
                self.forbid[keep] = fg
            else:
                fk |= fg
        pg = self.photos.pop(gone, None)
        if pg:
            pk = self.photos.get(keep)
            if pk is None:
                self.photos[keep] = pg
            elif len(pk) >= len(pg):
                pk |= pg
            else:
                pg |= pk
                self.photos[keep] = pg
        if self.members:
            mk, mg = self.members[keep], self.members.pop(gone)
            if len(mk) < len(mg):
                mg.extend(mk)
                self.members[keep] = mg
            else:
                mk.extend(mg)

    def _new_slot(self) -> int:
        if self.free:
            return self.free.pop()
        if self.used == len(self.sums):
            grown = np.zeros((2 * len(self.sums), self.sums.shape[1]), dtype=np.float64)
            grown[: self.used] = self.sums
            self.sums = grown
        self.used += 1
        return self.used - 1

    def _sum(self, r: int) -> np.ndarray:
        """A copy of the float64 sum vector of root ``r`` ``(D,)``."""
        k = self.slot[r]
        return self.sums[k].copy() if k >= 0 else self.x[r].astype(np.float64)

    def _sums(self, roots: np.ndarray) -> np.ndarray:
        """The float64 sum vectors of ``roots`` ``(m,)`` -> ``(m, D)``."""
        out = self.x[roots].astype(np.float64)
        k = self.slot[roots]
        grp = k >= 0
        if grp.any():
            out[grp] = self.sums[k[grp]]
        return out

    # -- linkages

    def average(self, a: int, nb: np.ndarray) -> np.ndarray:
        """Exact average linkage between root ``a`` and roots ``nb`` ``(m,)`` -> ``(m,)``."""
        k = self.slot[a]
        sa = self.sums[k] if k >= 0 else self.x[a].astype(np.float64)
        dot = self._sums(nb) @ sa
        return np.asarray(self.msq[a] + self.msq[nb] - 2.0 * dot / (self.size[a] * self.size[nb]))

    def complete_exact(self, a: int, b: int) -> float:
        """Exact complete linkage: largest ``d`` over the members of roots ``a`` and ``b``."""
        xa = self.x[self.members[a]].astype(np.float64)
        xb = self.x[self.members[b]].astype(np.float64)
        d = (xa * xa).sum(1)[:, None] + (xb * xb).sum(1)[None, :] - 2.0 * xa @ xb.T
        return float(d.max())

    # -- runs

    def run_single(self, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> None:
        """Kruskal over the edges below the threshold, skipping merges that break a constraint."""
        sel = w < self.threshold
        a, b, w = a[sel], b[sel], w[sel]
        order = np.argsort(w, kind="stable")
        a, b, w = a[order], b[order], w[order]
        parent, size, pair = self.parent, self.size, self.pair_threshold
        while len(a):
            # an edge between two single faces at >= pair_threshold waits: it becomes a merge
            # once one of its faces joined a group, so such edges are passed over again
            wait: list[int] = []
            merged = False
            for e, (i, j, d) in enumerate(zip(a.tolist(), b.tolist(), w.tolist(), strict=True)):
                ri = _find(parent, i)
                rj = _find(parent, j)
                if ri == rj or not self.compatible(ri, rj):
                    continue
                if d >= pair and size[ri] == 1 and size[rj] == 1:
                    wait.append(e)
                    continue
                keep, gone = (ri, rj) if size[ri] >= size[rj] else (rj, ri)
                self._absorb(keep, gone)
                merged = True
            if not merged:
                break
            a, b, w = a[wait], b[wait], w[wait]

    def run_chain(self, a: np.ndarray, b: np.ndarray) -> None:
        """Average linkage by the nearest-neighbour chain (Murtagh 1983; Mullner 2011).

        Average linkage is reducible, ``L(A+C, B) >= min(L(A, B), L(C, B))``, and stays so when a
        cannot-link pair counts as infinitely far (a cluster keeps every conflict of its parts).
        So following nearest neighbours until two clusters are each other's nearest neighbour and
        merging them gives the same clusters as always merging the globally closest pair, and a
        cluster whose nearest neighbour is at ``>= threshold`` can never merge again.
        """
        n = len(self.alive)
        # Neighbour lists as int64 arrays (views into one CSR array of 2E entries: Python sets
        # of ints took 3 GB at 1M faces). They are merged lazily: they may hold faces that have
        # since joined another cluster, and are resolved through ``parent`` (and compacted)
        # when read.
        src = np.concatenate([a, b])
        dst = np.concatenate([b, a])
        order = np.argsort(src, kind="stable")
        dst = dst[order]
        bounds = np.searchsorted(src[order], np.arange(n + 1))
        del src, order
        empty = np.zeros(0, dtype=np.int64)
        adj: list[np.ndarray] = [
            dst[bounds[i] : bounds[i + 1]] if bounds[i + 1] > bounds[i] else empty for i in range(n)
        ]
        alive = self.alive
        done = np.zeros(n, dtype=bool)
        todo = np.flatnonzero(np.diff(bounds) > 0).tolist()  # no edge: can never merge
        del bounds
        pos = 0
        chain: list[int] = []
        on_chain: set[int] = set()
        merges = 0
        while True:
            if not chain:
                while pos < len(todo) and (done[todo[pos]] or not alive[todo[pos]]):
                    pos += 1
                if pos == len(todo):
                    break
                chain.append(todo[pos])
                on_chain.add(todo[pos])
            top = chain[-1]
            prev = chain[-2] if len(chain) > 1 else -1
            nxt = self._nearest(top, prev, adj)
            if nxt < 0:  # nothing below the threshold: final (with the pair rule, for now)
                done[top] = True
                on_chain.discard(chain.pop())
                continue
            if nxt != prev:
                if nxt in on_chain:
                    # only with the pair rule (not reducible: a merge of two single faces can
                    # bring a group closer than the chain's last step): go back to nxt
                    while chain[-1] != nxt:
                        on_chain.discard(chain.pop())
                else:
                    chain.append(nxt)
                    on_chain.add(nxt)
                continue
            on_chain.discard(chain.pop())
            on_chain.discard(chain.pop())
            merges += 1
            keep, gone = (top, prev) if len(adj[top]) >= len(adj[prev]) else (prev, top)
            self._absorb(keep, gone)
            adj[keep] = np.concatenate([adj[keep], adj[gone]])
            adj[gone] = empty
            todo.append(keep)
        log.debug("average linkage: %d merges", merges)

    def _resolve(self, ids: np.ndarray) -> np.ndarray:
        """Current root of every face in ``ids`` ``(m,) int64`` (with path compression)."""
        parent = self.parent
        r = parent[ids]
        while True:
            up = parent[r]
            if np.array_equal(up, r):
                break
            r = up
        parent[ids] = r
        return r

    def _nearest(self, top: int, prev: int, adj: list[np.ndarray]) -> int:
        """Nearest compatible neighbour of ``top`` below the threshold, ``prev`` on ties; or -1.

        Incompatible neighbours are dropped from the graph for good (constraints are monotone).
        """
        raw = adj[top]
        if not len(raw):
            return -1
        nb = np.unique(self._resolve(raw))  # merged neighbours: duplicates and stale ids
        nb = nb[nb != top]
        adj[top] = nb
        if not len(nb):
            return -1
        lv = self.average(top, nb)
        if self.pair_threshold < self.threshold and self.size[top] == 1:
            thr = np.where(self.size[nb] == 1, self.pair_threshold, self.threshold)
        else:
            thr = np.full(len(nb), self.threshold)
        cand = np.flatnonzero(lv < thr)
        if not len(cand):
            return -1
        cand = cand[np.argsort(lv[cand], kind="stable")]
        dropped: list[int] = []  # x still lists top; it drops it when it finds the conflict
        found = -1
        for idx in cand.tolist():
            x = int(nb[idx])
            if self.compatible(top, x):
                found = x
                if prev >= 0 and x != prev and prev not in dropped:
                    at = np.flatnonzero(nb == prev)
                    # ties go to the chain (no cycles)
                    if len(at):
                        lp = float(lv[at[0]])
                        if lp < float(thr[at[0]]) and lp <= float(lv[idx]) + 1e-12:
                            found = prev
                break
            dropped.append(x)
        if dropped:
            adj[top] = nb[~np.isin(nb, dropped)]
        return found

    def run_complete(self, a: np.ndarray, b: np.ndarray, w: np.ndarray, trivial: bool) -> None:
        """Complete linkage with a lazily invalidated heap of candidate merges.

        Only pairs below the threshold are kept: a complete linkage never decreases, so a pair at
        ``>= threshold`` (or in conflict) is dropped for good. When the graph does not know a
        linkage (no edge between one part of a merged cluster and a neighbour), it is computed
        exactly from the member embeddings.
        """
        thr = self.threshold
        if trivial:
            lk = w
        else:
            pairs = zip(a.tolist(), b.tolist(), strict=True)
            lk = np.array([self.complete_exact(i, j) for i, j in pairs], dtype=np.float64)
        adj: dict[int, dict[int, float]] = {}
        sel = np.flatnonzero(lk < thr)
        heap = []
        for v, i, j in zip(lk[sel].tolist(), a[sel].tolist(), b[sel].tolist(), strict=True):
            adj.setdefault(i, {})[j] = v
            adj.setdefault(j, {})[i] = v
            heap.append((v, i, j, 0, 0))
        heapq.heapify(heap)
        alive, version = self.alive, self.version
        merges = 0
        while heap:
            v, i, j, vi, vj = heapq.heappop(heap)
            if not (alive[i] and alive[j]) or version[i] != vi or version[j] != vj:
                continue
            if not self.compatible(i, j):  # monotone: the pair conflicts for good
                adj[i].pop(j, None)
                adj[j].pop(i, None)
                continue
            if v >= self.pair_threshold and self.size[i] == 1 and self.size[j] == 1:
                continue  # kept in adj: recomputed when one of them joins a group
            merges += 1
            keep, gone = (i, j) if len(self.members[i]) >= len(self.members[j]) else (j, i)
            dk, dg = adj[keep], adj.pop(gone)
            dk.pop(gone, None)
            fresh: dict[int, float] = {}
            for x in set(dk) | set(dg):
                if x in (gone, keep):
                    continue
                lk_x, lg_x = dk.get(x), dg.get(x)
                if lk_x is None:
                    lk_x = self.complete_exact(keep, x)
                if lg_x is None and lk_x < thr:
                    lg_x = self.complete_exact(gone, x)
                v = lk_x if lg_x is None else max(lk_x, lg_x)
                ax = adj[x]
                ax.pop(gone, None)
                if v < thr:
                    fresh[x] = v
                    ax[keep] = v
                else:
                    ax.pop(keep, None)
            self._absorb(keep, gone)
            adj[keep] = fresh
            vk = int(version[keep])
            for x, v in fresh.items():
                heapq.heappush(heap, (v, keep, x, vk, int(version[x])))
        log.debug("complete linkage: %d merges", merges)

    def roots(self) -> np.ndarray:
        """``(N,) int64``: the root face of every face's final cluster."""
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q


def _find(parent: np.ndarray, i: int) -> int:
    """Root of ``i`` with path halving (on the shared ``parent`` array)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def _run(
    xb: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    w: np.ndarray,
    init: np.ndarray,
    tags: list[np.ndarray],
    photo_ids: np.ndarray,
    config: ClusterConfig,
    threshold: float,
    pair_threshold: float,
    rejections: np.ndarray | None = None,
) -> np.ndarray:
    """Map the face edges onto the starting groups and agglomerate; ``(N,)`` root per face.

    Only edges with ``d < threshold`` are kept: a linkage (average, complete or single) can only be
    below the threshold if some face pair between the two clusters is. Their ``d`` is recomputed
    in float64 (FAISS works in float32), so that a pair right at the threshold is decided the same
    way as by a dense computation.
    """
    close = w < threshold + _SLACK
    a, b = a[close], b[close]
    w = _exact_d(xb, a, b)
    close = w < threshold
    a, b, w = a[close], b[close], w[close]
    trivial = bool(np.array_equal(init, np.arange(len(init))))
    if not trivial:  # edges between starting groups, one per pair, smallest d kept
        n = len(init)
        ra, rb = init[a], init[b]
        ok = ra != rb
        ra, rb, w = ra[ok], rb[ok], w[ok]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        key = lo * n + hi
        order = np.lexsort((w, key))
        key, w = key[order], w[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        key, w = key[first], w[first]
        a, b = key // n, key % n
    agg = _Agglomerator(
        xb, init, tags, photo_ids, threshold, config.linkage, pair_threshold, rejections
    )
    if config.linkage == "single":
        agg.run_single(a, b, w)
    elif config.linkage == "average":
        agg.run_chain(a, b)
    else:
        agg.run_complete(a, b, w, trivial)
    return agg.roots()


def _exact_d(xb: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``d`` in float64 between rows ``a`` and ``b`` ``(E,)`` of ``xb``, by chunks."""
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), _CHUNK):
        diff = xb[a[s : s + _CHUNK]].astype(np.float64) - xb[b[s : s + _CHUNK]]
        out[s : s + _CHUNK] = np.einsum("ij,ij->i", diff, diff)
    return out


def _label_groups(labels: np.ndarray) -> np.ndarray:
    """``(N,)`` root per face: faces sharing a label ``>= 0`` start as one group."""
    n = len(labels)
    init = np.arange(n, dtype=np.int64)
    lab = np.flatnonzero(labels >= 0)
    if len(lab):
        _, first, inv = np.unique(labels[lab], return_index=True, return_inverse=True)
        init[lab] = lab[first][inv]
    return init


def _number(roots: np.ndarray, min_size: int, start: int = 0) -> np.ndarray:
    """Cluster ids ``start ..`` by decreasing size (ties: smallest face), ``-1`` below min_size."""
    n = len(roots)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    uniq, first, inv, counts = np.unique(
        roots, return_index=True, return_inverse=True, return_counts=True
    )
    big = counts >= min_size
    order = np.lexsort((first[big], -counts[big]))
    ids = np.full(len(uniq), -1, dtype=np.int64)
    ids[np.flatnonzero(big)[order]] = np.arange(start, start + int(big.sum()))
    out[:] = ids[inv]
    return out


# --------------------------------------------------------------------------- public API


def agglomerate(
    xb: np.ndarray,
    config: ClusterConfig | None = None,
    photo_ids: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    index: faiss.Index | None = None,
    graph: tuple[np.ndarray, np.ndarray] | None = None,
    rejections: np.ndarray | None = None,
) -> np.ndarray:
    """Cluster faces into people.

    ``xb``: ``(N, D) float32`` unit embeddings. ``photo_ids``: ``(N,)`` int, the photo of each face
    (``-1`` unknown); faces of one photo never share a cluster. ``labels``: ``(N,)`` int person of
    each face, ``-1`` unlabelled; different people never share a cluster, one person's faces
    start together when ``config.premerge_labels``. ``index``: optional FAISS inner-product index
    holding exactly ``xb`` (ids = positions) to take the neighbours from. ``graph``: optional
    ``(D, I)`` from :func:`knn_graph` (then ``config.k`` and ``index`` are not used), to cluster
    the same faces at several settings with one search. ``rejections``: ``(M, 2)`` int
    ``(face position, label)`` pairs: that face never shares a cluster with a face labelled
    ``label`` ("not this person").
    Returns ``(N,) int64`` cluster ids, ``0 .. C-1`` by decreasing size, ``-1`` = left alone.
    """
    config = config or ClusterConfig()
    xb = _check_embeddings(xb)
    n = len(xb)
    photo_ids = _check_ids(photo_ids, n, "photo_ids")
    labels = _check_ids(labels, n, "labels")
    rejections = _check_rejections(rejections, n)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if graph is None:
        dist, ids = knn_graph(xb, config.k, index=index, exact_max=config.exact_max)
    else:
        dist, ids = graph
        if dist.shape != ids.shape or len(ids) != n:
            raise ValueError(f"graph must be two (N={n}, k) arrays, got {dist.shape}, {ids.shape}")
    threshold, pair_threshold = config.thresholds(xb, nn_d=dist[:, 0] if dist.shape[1] else None)
    init = _label_groups(labels) if config.premerge_labels else np.arange(n, dtype=np.int64)
    roots = _run(  # the edges are passed on, not kept here (memory at 1M faces)
        xb, *_edges(dist, ids, max_d=threshold + _SLACK), init, [labels], photo_ids, config,
        threshold, pair_threshold, rejections,
    )  # fmt: skip
    out = _number(roots, config.min_size)
    log.info(
        "clustered %d faces: %d clusters, %d left alone (%s linkage, threshold %.3f, single "
        "faces %.3f, k %d)",
        n, int(out.max(initial=-1)) + 1, int((out < 0).sum()), config.linkage, threshold,
        pair_threshold, config.k,
    )  # fmt: skip
    return out


def assign_new(
    cluster_ids: np.ndarray,
    xb: np.ndarray,
    xq: np.ndarray,
    config: ClusterConfig | None = None,
    photo_ids: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    rejections: np.ndarray | None = None,
) -> np.ndarray:
    """Add new faces to an existing clustering without starting over.

    ``cluster_ids``: ``(N,) int`` the existing ids of the old faces ``xb`` ``(N, D)`` (``-1`` =
    alone). ``xq``: ``(M, D) float32`` unit embeddings of the new faces. ``photo_ids``,
    ``labels`` (``(N + M,)``) and ``rejections`` (positions in ``N + M``): old faces first,
    as in :func:`agglomerate`.

    Existing clusters stay as they are and never merge with each other (they may have been named,
    merged or split by hand); a new face joins one when the linkage between them is below the
    threshold and no constraint forbids it, by the same agglomeration as :func:`agglomerate` run
    over the neighbourhoods of the new faces only (the ``k`` nearest faces of each new face, old or
    new). New faces that join no existing cluster are clustered among themselves and with old
    faces that were alone. Labels act as cannot-link only here. Cost: one k-NN search of ``M``
    queries over ``N + M`` faces. A full :func:`agglomerate` is the fallback when much has changed.

    Returns ``(N + M,) int64`` ids: old clusters keep theirs; new clusters are numbered from
    ``max(cluster_ids) + 1`` by decreasing size; ``-1`` = alone.
    """
    config = config or ClusterConfig()
    xb = _check_embeddings(xb, "xb")
    xq = _check_embeddings(xq, "xq")
    n_old, m = len(xb), len(xq)
    cluster_ids = _check_ids(cluster_ids, n_old, "cluster_ids")
    if m == 0:
        return cluster_ids.copy()
    if n_old and xb.shape[1] != xq.shape[1]:
        raise ValueError(f"embedding sizes differ: {xb.shape[1]} (old) vs {xq.shape[1]} (new)")
    n = n_old + m
    photo_ids = _check_ids(photo_ids, n, "photo_ids")
    labels = _check_ids(labels, n, "labels")
    rejections = _check_rejections(rejections, n)
    xall = np.concatenate([xb, xq]) if n_old else xq
    kk = min(config.k, n - 1)
    init = np.arange(n, dtype=np.int64)
    old_tag = np.full(n, -1, dtype=np.int64)
    if n_old:
        old_tag[:n_old] = cluster_ids
        clustered = np.flatnonzero(cluster_ids >= 0)
        if len(clustered):
            _, first, inv = np.unique(
                cluster_ids[clustered], return_index=True, return_inverse=True
            )
            init[clustered] = clustered[first][inv]
    index: faiss.Index | None = None
    if kk > 0:
        index = build_index(xall, exact=n <= config.exact_max)
        sims, nbr = index.search(xq, kk + 1)
        qpos = np.arange(n_old, n, dtype=np.int64)
        nbr = nbr.astype(np.int64)
        src = np.repeat(qpos, nbr.shape[1])
        dst = nbr.ravel()
        w = np.clip(2.0 - 2.0 * sims.ravel(), 0.0, 4.0)
        ok = (dst >= 0) & (dst != src)
        src, dst, w = src[ok], dst[ok], w[ok]
        lo, hi = np.minimum(src, dst), np.maximum(src, dst)
        key = lo * n + hi
        order = np.lexsort((w, key))
        key, w = key[order], w[order]
        first_e = np.ones(len(key), dtype=bool)
        first_e[1:] = key[1:] != key[:-1]
        key, w = key[first_e], w[first_e].astype(np.float64)
        a, b = key // n, key % n
    else:
        a = b = np.zeros(0, dtype=np.int64)
        w = np.zeros(0, dtype=np.float64)
    threshold, pair_threshold = config.thresholds(xall, index=index)
    roots = _run(
        xall, a, b, w, init, [labels, old_tag], photo_ids, config, threshold, pair_threshold,
        rejections,
    )  # fmt: skip
    out = np.full(n, -1, dtype=np.int64)
    # faces whose final cluster holds an old cluster take that cluster's id
    root_tag = np.full(n, -1, dtype=np.int64)
    has = old_tag >= 0
    root_tag[roots[has]] = old_tag[has]
    out[:] = root_tag[roots]
    rest = np.flatnonzero(out < 0)
    start = int(cluster_ids.max(initial=-1)) + 1
    out[rest] = _number(roots[rest], config.min_size, start=start)
    log.info(
        "assigned %d new faces: %d joined existing clusters, %d new clusters",
        m, int((out[n_old:] >= 0).sum() - (out[n_old:] >= start).sum()),
        int(out.max(initial=-1)) + 1 - start if out.max(initial=-1) >= start else 0,
    )  # fmt: skip
    return out


def propose_people(
    cluster_ids: np.ndarray,
    xb: np.ndarray,
    labels: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    photo_ids: np.ndarray | None = None,
    rejections: np.ndarray | None = None,
) -> list[Proposal]:
    """Propose a labelled person for every cluster that has no labelled face.

    ``cluster_ids``: ``(N,) int`` (``-1`` = alone, never proposed); ``xb``: ``(N, D) float32``
    unit embeddings; ``labels``: ``(N,) int`` person per face, ``-1`` unlabelled. The person
    proposed is the one with the smallest average-linkage distance (mean ``d`` between the
    cluster's faces and the person's labelled faces), if it is ``< threshold`` (tau), no face of
    the person is in a photo with a face of the cluster, and no face of the cluster was rejected
    for the person (``rejections``: ``(M, 2)`` ``(face position, label)``; a cluster is one
    person, so a face that is not P makes the cluster not P). Returns the proposals, by cluster
    id; clusters with no person close enough get none.
    """
    xb = _check_embeddings(xb)
    n = len(xb)
    cluster_ids = _check_ids(cluster_ids, n, "cluster_ids")
    labels = _check_ids(labels, n, "labels")
    photo_ids = _check_ids(photo_ids, n, "photo_ids")
    rejections = _check_rejections(rejections, n)
    clustered = cluster_ids >= 0
    labelled = labels >= 0
    if not clustered.any() or not labelled.any():
        return []
    cids = np.unique(cluster_ids[clustered])
    has_label = np.unique(cluster_ids[clustered & labelled])
    cids = np.setdiff1d(cids, has_label)
    if not len(cids):
        return []
    people = np.unique(labels[labelled])
    x64 = xb.astype(np.float64)
    sq = (x64 * x64).sum(1)

    def group_sums(keys: np.ndarray, mask: np.ndarray, uniq: np.ndarray) -> tuple[np.ndarray, ...]:
        pos = np.searchsorted(uniq, keys[mask])
        s = np.zeros((len(uniq), xb.shape[1]))
        np.add.at(s, pos, x64[mask])
        cnt = np.bincount(pos, minlength=len(uniq)).astype(np.float64)
        q = np.bincount(pos, weights=sq[mask], minlength=len(uniq))
        return s, cnt, q

    cmask = np.isin(cluster_ids, cids)
    sc, nc, qc = group_sums(cluster_ids, cmask, cids)
    sp, npp, qp = group_sums(labels, labelled, people)
    link = (qc / nc)[:, None] + (qp / npp)[None, :] - 2.0 * (sc @ sp.T) / np.outer(nc, npp)
    # a person with a face in the same photo as a face of the cluster is ruled out
    both = (photo_ids >= 0) & (cmask | labelled)
    if both.any():
        order = np.argsort(photo_ids[both], kind="stable")
        faces = np.flatnonzero(both)[order]
        photos = photo_ids[faces]
        starts = np.flatnonzero(np.r_[True, photos[1:] != photos[:-1]])
        for grp in np.split(faces, starts[1:]):
            if len(grp) < 2:
                continue
            cs = cluster_ids[grp][cmask[grp]]
            ps = labels[grp][labelled[grp]]
            if len(cs) and len(ps):
                ci = np.searchsorted(cids, cs)
                pi = np.searchsorted(people, ps)
                link[np.ix_(ci, pi)] = np.inf
    if len(rejections):
        rc = cluster_ids[rejections[:, 0]]
        ok = np.isin(rc, cids) & np.isin(rejections[:, 1], people)
        if ok.any():
            ci = np.searchsorted(cids, rc[ok])
            pi = np.searchsorted(people, rejections[ok, 1])
            link[ci, pi] = np.inf
    best = np.argmin(link, axis=1)
    dbest = link[np.arange(len(cids)), best]
    out = [
        Proposal(cluster=int(c), label=int(people[p]), distance=float(d))
        for c, p, d in zip(cids.tolist(), best.tolist(), dbest.tolist(), strict=True)
        if d < threshold
    ]
    return out


# --------------------------------------------------------------------------- cluster quality


@dataclass(frozen=True)
class Cohesion:
    """How tight each cluster is, for showing the doubtful ones first. Arrays ``(C,)``, by id.

    ``ids`` ``int64``: the cluster ids (``>= 0``, ascending). ``size`` ``int64``. ``mean_d``
    ``float64``: the mean ``d`` over all pairs of the cluster's faces (exact, from its sum
    vector; ``0`` for a cluster of one face). ``nn_inside`` ``float64``: the share of its faces
    whose nearest other face (of all ``N``) is in the cluster (``1`` for a cluster of one face:
    nothing of it is elsewhere). ``margin`` ``float64``: over the cluster's faces, the smallest
    ``d`` to the nearest face outside the cluster minus the mean ``d`` to the cluster's other
    faces (for a single face, its nearest-neighbour ``d``); negative when some face is closer to
    an outsider than to its own cluster on average: the most telling of the three for a cluster
    that holds a stranger (``bench/results/cluster.md``). A cluster of one person has a small
    ``mean_d`` (clean SFace photos of one person: ~0.6), ``nn_inside`` near 1 and a large
    ``margin``.
    """

    ids: np.ndarray
    size: np.ndarray
    mean_d: np.ndarray
    nn_inside: np.ndarray
    margin: np.ndarray

    def as_dict(self) -> dict[int, dict[str, float]]:
        """``{cluster id: {"size", "mean_d", "nn_inside", "margin"}}`` of plain Python values."""
        return {
            int(c): {"size": int(s), "mean_d": float(m), "nn_inside": float(i), "margin": float(g)}
            for c, s, m, i, g in zip(
                self.ids, self.size, self.mean_d, self.nn_inside, self.margin, strict=True
            )
        }


def cohesion(
    cluster_ids: np.ndarray,
    xb: np.ndarray,
    nn: np.ndarray | None = None,
    graph: tuple[np.ndarray, np.ndarray] | None = None,
) -> Cohesion:
    """:class:`Cohesion` of every cluster of ``cluster_ids`` ``(N,) int`` (``-1`` = alone, not
    scored) over ``xb`` ``(N, D) float32`` unit rows.

    ``graph``: ``(D, I)`` ``(N, k)`` the nearest other faces of every face, nearest first (e.g.
    :func:`knn_graph`; ``I = -1`` for an empty slot); searched exactly (``k = 8``) when ``None``.
    A face whose ``k`` neighbours are all in its cluster counts its ``k``-th distance as the
    nearest outsider's (a lower bound). ``nn``: ``(N,) int64`` instead of ``graph``, when only
    ``nn_inside`` is wanted (``margin`` is then NaN). ``O(N (D + k))`` besides the search.
    """
    xb = _check_embeddings(xb)
    n = len(xb)
    cluster_ids = _check_ids(cluster_ids, n, "cluster_ids")
    inside = cluster_ids >= 0
    ids, pos = np.unique(cluster_ids[inside], return_inverse=True)
    c = len(ids)
    size = np.bincount(pos, minlength=c).astype(np.int64)
    x = xb[inside].astype(np.float64)
    sums = np.zeros((c, xb.shape[1]), dtype=np.float64)
    np.add.at(sums, pos, x)
    sq = np.einsum("ij,ij->i", x, x)
    sqn = np.bincount(pos, weights=sq, minlength=c)
    # sum over ordered pairs i != j of |xi - xj|^2 = 2 m sum|x|^2 - 2 |S|^2
    pairs = size * (size - 1)
    total = 2.0 * size * sqn - 2.0 * (sums * sums).sum(1)
    mean_d = np.where(pairs > 0, np.maximum(total, 0.0) / np.maximum(pairs, 1), 0.0)
    dist: np.ndarray | None = None
    nbrs = np.zeros((n, 0), dtype=np.int64)
    if graph is None and nn is None:
        graph = knn_graph(xb, 8)
    if graph is not None:
        dist, nbrs = graph
        if dist.shape != nbrs.shape or len(nbrs) != n:
            raise ValueError(f"graph must be two (N={n}, k) arrays, got {dist.shape}, {nbrs.shape}")
        nn = nbrs[:, 0] if nbrs.shape[1] else np.full(n, -1, dtype=np.int64)
    nn = np.asarray(nn, dtype=np.int64)
    if nn.shape != (n,):
        raise ValueError(f"nn must have shape ({n},), got {nn.shape}")
    ok = nn >= 0
    same = np.zeros(n, dtype=bool)
    same[ok] = cluster_ids[nn[ok]] == cluster_ids[ok]
    hits = np.bincount(pos, weights=same[inside].astype(np.float64), minlength=c)
    nn_inside = np.where(size > 1, hits / np.maximum(size, 1), 1.0)
    margin = np.full(c, np.nan)
    if dist is not None and dist.shape[1]:
        nb = nbrs[inside]
        dn = np.asarray(dist[inside], dtype=np.float64)
        valid = nb >= 0
        out = valid & (cluster_ids[np.where(valid, nb, 0)] != cluster_ids[inside][:, None])
        last = np.where(valid, dn, -np.inf).max(axis=1)  # the k-th (farthest known) distance
        d_out = np.where(out, dn, np.inf).min(axis=1)
        d_out = np.where(np.isfinite(d_out), d_out, np.maximum(last, 0.0))
        m = size[pos].astype(np.float64)
        # mean d to the cluster's other faces, from its sum vector
        d_in = np.where(
            m > 1,
            sq
            + (sqn[pos] - sq) / np.maximum(m - 1, 1)
            - 2.0 * (np.einsum("ij,ij->i", x, sums[pos]) - sq) / np.maximum(m - 1, 1),
            0.0,
        )
        margin = np.full(c, np.inf)
        np.minimum.at(margin, pos, d_out - d_in)
    return Cohesion(ids.astype(np.int64), size, mean_d, nn_inside, margin)


# --------------------------------------------------------------------------- stable ids


def match_clusters(
    old_ids: np.ndarray, new_ids: np.ndarray, min_jaccard: float = 0.5
) -> dict[int, int]:
    """Which new cluster continues which old one: ``{new id: old id}``.

    ``old_ids``, ``new_ids``: ``(N,) int`` the cluster of every face before and after a re-run,
    aligned face by face (``-1`` = alone, or a face that did not exist before). A new cluster
    takes the id of the old cluster it overlaps most when their Jaccard index (shared faces
    over faces in either) is at least ``min_jaccard``: with ``min_jaccard >= 0.5`` each old
    cluster is continued by at most one new one and vice versa (two clusters that share more
    than half of their union cannot both overlap a third that much), so the matching is
    one-to-one; pairs are taken greedily by decreasing Jaccard, ties by ids, for any value.
    Cost ``O(N log N)``.
    """
    old_ids = np.asarray(old_ids, dtype=np.int64)
    new_ids = np.asarray(new_ids, dtype=np.int64)
    if old_ids.shape != new_ids.shape or old_ids.ndim != 1:
        raise ValueError(
            f"old_ids and new_ids must be (N,) alike, got {old_ids.shape} and {new_ids.shape}"
        )
    if not 0.0 < min_jaccard <= 1.0:
        raise ValueError(f"min_jaccard must be in (0, 1], got {min_jaccard}")
    both = (old_ids >= 0) & (new_ids >= 0)
    if not both.any():
        return {}
    o_u, o_n = np.unique(old_ids[old_ids >= 0], return_counts=True)
    n_u, n_n = np.unique(new_ids[new_ids >= 0], return_counts=True)
    pairs, inter = np.unique(
        np.stack([old_ids[both], new_ids[both]], axis=1), axis=0, return_counts=True
    )
    so = o_n[np.searchsorted(o_u, pairs[:, 0])]
    sn = n_n[np.searchsorted(n_u, pairs[:, 1])]
    jac = inter / (so + sn - inter)
    keep = jac >= min_jaccard
    pairs, jac = pairs[keep], jac[keep]
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -jac))
    out: dict[int, int] = {}
    used: set[int] = set()
    for o, c in pairs[order].tolist():
        if c not in out and o not in used:
            out[c] = o
            used.add(o)
    return out


def stable_ids(
    old_ids: np.ndarray,
    new_ids: np.ndarray,
    min_jaccard: float = 0.5,
    next_id: int | None = None,
) -> np.ndarray:
    """``new_ids`` renumbered so that clusters that barely changed keep their old id.

    Matching by :func:`match_clusters`; the other new clusters get fresh ids from ``next_id``
    (default ``max(old_ids) + 1``) upwards in the order of ``new_ids``, so an id that
    disappeared is never reused for other faces. ``-1`` stays ``-1``. Returns ``(N,) int64``.
    """
    old_ids = np.asarray(old_ids, dtype=np.int64)
    new_ids = np.asarray(new_ids, dtype=np.int64)
    match = match_clusters(old_ids, new_ids, min_jaccard)
    start = int(old_ids.max(initial=-1)) + 1 if next_id is None else int(next_id)
    uniq = np.unique(new_ids[new_ids >= 0])
    table = np.empty(len(uniq), dtype=np.int64)
    fresh = start
    for i, c in enumerate(uniq.tolist()):
        if c in match:
            table[i] = match[c]
        else:
            table[i] = fresh
            fresh += 1
    out = np.full(len(new_ids), -1, dtype=np.int64)
    has = new_ids >= 0
    out[has] = table[np.searchsorted(uniq, new_ids[has])]
    return out


# --------------------------------------------------------------------------- metrics


def _singletons_apart(ids: np.ndarray) -> np.ndarray:
    """``(N,) int64`` ids where every ``-1`` becomes a cluster of its own."""
    ids = np.asarray(ids, dtype=np.int64).copy()
    alone = ids < 0
    if alone.any():
        ids[alone] = ids.max(initial=-1) + 1 + np.arange(int(alone.sum()))
    return ids


def _contingency(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, ...]:
    """Non-zero cells ``n_ij`` with their row size ``a_i`` (pred) and column size ``b_j`` (true)."""
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape or pred.ndim != 1:
        raise ValueError(f"pred and true must be (N,) alike, got {pred.shape} and {true.shape}")
    _, p = np.unique(_singletons_apart(pred), return_inverse=True)
    _, t = np.unique(_singletons_apart(true), return_inverse=True)
    nt = int(t.max(initial=-1)) + 1
    cells, n_ij = np.unique(p * nt + t, return_counts=True)
    a = np.bincount(p)[cells // nt]
    b = np.bincount(t)[cells % nt]
    return n_ij.astype(np.float64), a.astype(np.float64), b.astype(np.float64)


def _f(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def pairwise_prf(pred: np.ndarray, true: np.ndarray) -> PRF:
    """Pairwise precision/recall/F over all pairs of faces put together (pred) / same person (true).

    ``pred``, ``true``: ``(N,) int`` cluster ids, ``-1`` = a cluster of its own. With no predicted
    pair precision is 1; with no true pair recall is 1. ``O(N log N)`` through contingency counts.
    """
    n_ij, a, b = _contingency(pred, true)
    if not len(n_ij):
        return PRF(1.0, 1.0, 1.0)
    tp = float((n_ij * (n_ij - 1)).sum()) / 2
    # sum over the cells of row i of n_ij (a_i - 1) / 2 is a_i (a_i - 1) / 2: each row once
    pred_pairs = float((n_ij * (a - 1)).sum()) / 2
    true_pairs = float((n_ij * (b - 1)).sum()) / 2
    p = tp / pred_pairs if pred_pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    return PRF(p, r, _f(p, r))


def bcubed_prf(pred: np.ndarray, true: np.ndarray) -> PRF:
    """BCubed precision/recall/F (Bagga & Baldwin), every face counting itself.

    Precision is the mean over faces of the share of the face's cluster that is its person;
    recall the mean share of the face's person that is in its cluster. ``-1`` = alone.
    """
    n_ij, a, b = _contingency(pred, true)
    if not len(n_ij):
        return PRF(1.0, 1.0, 1.0)
    n = n_ij.sum()
    p = float((n_ij * n_ij / a).sum() / n)
    r = float((n_ij * n_ij / b).sum() / n)
    return PRF(p, r, _f(p, r))


def n_clusters(ids: np.ndarray) -> int:
    """Number of clusters, every ``-1`` counting as a cluster of its own."""
    ids = np.asarray(ids)
    return int(len(np.unique(ids[ids >= 0])) + (ids < 0).sum())
