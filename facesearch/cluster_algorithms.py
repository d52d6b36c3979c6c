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

    Measured: 100,000 faces in a few minutes within about 1 GB (``bench/results/cluster.md``).

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
    Constraints are monotone (a cluster only gains photos and labels), so a pair of clusters that
    conflicts once is dropped from the graph for good.

Thresholds
    Merge while the linkage distance is ``< threshold``; but two *single* faces (each in no group
    yet) only while their ``d < pair_threshold`` (stricter). Both defaults are derived from the
    verification threshold tau, :data:`facesearch.distance.DEFAULT_THRESHOLD` (d = 1.274, cosine
    0.363, SFace's own "same person" threshold), and follow it when tau is recalibrated. tau
    is a 1:1 decision for pairs that are as often the same person as not; in a collection a
    random pair of faces is rarely the same person (one in 40 among LFW's 158 people with 10 or
    more images, one in 360 over all of LFW), and at tau the nearest stranger of a face seen only
    once is often closer than tau. :func:`default_thresholds` moves tau to the Bayes boundary
    ``T(p)`` for a prior ``p`` of "same person", from the faces themselves (no labels):

    * ``threshold = T(pi)``, ``pi`` the share of random pairs below tau: ``d = 1.157`` on the
      first LFW set above, ``1.110`` on all of LFW. With average linkage, a face or group joins
      a group when their faces, on average, would be judged the same person at that prior.
    * ``pair_threshold = T(1 / N)``: ``pi`` is dominated by the people with many photos (a
      person with ``m`` faces makes ``m^2 / 2`` of the pairs), but two faces that joined no
      group are, as far as the clustering knows, of people seen once, for whom one given other
      face of the ``N`` is theirs with probability ``1 / N``: ``d = 0.999`` and ``0.998`` on
      the two LFW sets. It guards against the commonest error in a collection where most
      people appear once: two strangers who happen to be each other's nearest face.

    An explicit ``threshold`` alone is a plain cut (``pair_threshold = threshold``), hence the
    guarantee above. With the pair rule the merge rule depends on the clusters' sizes, which the
    nearest-neighbour chain's proof does not cover (two single faces that may not merge can
    later, once one of them joined a group; the chain then goes back, see ``run_chain``); its
    results equalled a greedy agglomeration that always merges the globally closest allowed
    pair, dense in the tests and over the same graph on both LFW sets. The same rule is used
    for ``single`` and ``complete`` (single linkage chains more, complete splits more).

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
    (default) takes :func:`default_thresholds` of the faces being clustered, tau adjusted for how
    rare same-person pairs are among them. ``pair_threshold``: the stricter bound for a merge of
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

    def thresholds(self, xb: np.ndarray) -> tuple[float, float]:
        """``(threshold, pair_threshold)`` for clustering ``xb`` ``(N, D) float32`` under these
        settings: the ones given, the default rule's (:func:`default_thresholds`) for those left
        ``None``; the pair threshold is capped at the threshold."""
        if self.threshold is None:
            t, t_pair = default_thresholds(xb)
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
        norms = np.linalg.norm(xb, axis=1)
        bad = np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{name} must hold unit-norm embeddings; row {i} has norm {norms[i]:.4f} "
                f"({int(bad.sum())} rows off by more than {UNIT_NORM_TOLERANCE}); "
                "L2-normalise them first"
            )
    return xb


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


def default_thresholds(
    xb: np.ndarray, tau: float = DEFAULT_THRESHOLD, pairs: int = 200_000, seed: int = 0
) -> tuple[float, float]:
    """The merge thresholds for these faces: tau, shifted by the prior of "same person".

    tau is a 1:1 verification threshold: the point where a pair is as likely the same person as
    not when both are equally common (LFW's protocol). Among the faces of a collection a pair is
    the same person with a small prior probability ``p``, so the Bayes decision moves below tau.
    With same- and different-person distances modelled as two normals of equal spread ``sigma``,
    tau halfway between their means (``mu_same = 2 tau - mu_diff``), the boundary for a prior
    ``p`` is

        ``T(p) = tau - sigma^2 / (2 (mu_diff - tau)) * ln((1 - p) / p)``.

    ``mu_diff`` and ``sigma`` are the median and the MAD-based spread of ``d`` over random pairs
    of ``xb`` (almost all different people). Two priors, both from the faces, no labels:

    * ``threshold = T(pi)`` for every merge that involves a group: ``pi`` is the fraction of
      random pairs below tau (at least ``1 / N``; slightly more than the true share, as it
      counts the false accepts too), the chance that two faces taken at random are one person.
    * ``pair_threshold = T(1 / N)`` for a merge of two single faces. ``pi`` is dominated by the
      people with many photos (a person with ``m`` faces makes ``m^2 / 2`` of the pairs); a face
      that matched no group yet is, as far as the clustering knows, of a person seen once, and
      the chance that one given other face of the ``N`` is that person is ``1 / N``.

    Both are never above tau; tau itself is returned for both when the faces do not look like a
    collection of several people (fewer than 2 faces, ``mu_diff <= tau``, ``pi >= 0.5``).
    ``xb``: ``(N, D) float32`` unit rows; all pairs when ``N (N - 1) / 2 <= pairs``, else
    ``pairs`` random ones (seeded). On SFace LFW embeddings with tau = 1.274: ``(1.157, 0.999)``
    for the 158 people with at least 10 images, ``(1.110, 0.998)`` for all of LFW.
    """
    xb = _check_embeddings(xb)
    n = len(xb)
    if n < 2:
        return tau, tau
    if n * (n - 1) // 2 <= pairs:
        i, j = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(0, n, pairs), rng.integers(0, n, pairs)
        keep = i != j
        i, j = i[keep], j[keep]
    d = _exact_d(xb, i.astype(np.int64), j.astype(np.int64))
    mu = float(np.median(d))
    sigma = 1.4826 * float(np.median(np.abs(d - mu)))
    pi = max(float(np.mean(d < tau)), 1.0 / n)
    if mu <= tau or pi >= 0.5 or sigma == 0.0:
        return tau, tau

    def boundary(p: float) -> float:
        t = tau - sigma**2 / (2.0 * (mu - tau)) * math.log((1.0 - p) / p)
        return float(min(tau, max(t, 0.0)))

    t, t_pair = boundary(pi), boundary(1.0 / n)
    log.info(
        "default thresholds %.3f, single faces %.3f (tau %.3f, mu_diff %.3f, sigma %.3f, "
        "pi %.4f, N %d)",
        t, t_pair, tau, mu, sigma, pi, n,
    )  # fmt: skip
    return t, min(t_pair, t)


def default_threshold(
    xb: np.ndarray, tau: float = DEFAULT_THRESHOLD, pairs: int = 200_000, seed: int = 0
) -> float:
    """The first of :func:`default_thresholds`: the merge threshold for a merge with a group."""
    return default_thresholds(xb, tau, pairs, seed)[0]


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
    keep = np.argsort(is_self, axis=1, kind="stable")[:, :kk]  # non-self slots, in order
    ids = np.take_along_axis(ids, keep, axis=1)
    sims = np.take_along_axis(sims, keep, axis=1)
    dist = np.clip(2.0 - 2.0 * sims, 0.0, 4.0).astype(np.float32)
    dist[ids < 0] = np.inf
    return dist, ids


def _edges(dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges ``(a, b, d)`` with ``a < b``, each once, from a k-NN table."""
    n = len(ids)
    src = np.repeat(np.arange(n, dtype=np.int64), ids.shape[1])
    dst = ids.ravel()
    w = dist.ravel()
    ok = (dst >= 0) & (dst != src)
    src, dst, w = src[ok], dst[ok], w[ok]
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    key = a * n + b
    order = np.lexsort((w, key))  # by pair, smallest d first
    key, w = key[order], w[order]
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
    clusters are single faces.
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
    ) -> None:
        n = len(xb)
        self.threshold = threshold
        self.pair_threshold = (
            threshold if pair_threshold is None else min(pair_threshold, threshold)
        )
        self.linkage = linkage
        self.x64 = xb.astype(np.float64)
        self.parent = init.copy()
        self.alive = np.zeros(n, dtype=bool)
        self.alive[np.unique(init)] = True
        self.size = np.bincount(init, minlength=n).astype(np.int64)
        self.version = np.zeros(n, dtype=np.int64)
        # average linkage: sum vectors and sums of squared norms per root
        if np.array_equal(init, np.arange(n)):
            self.sums = self.x64.copy()
        else:
            self.sums = np.zeros_like(self.x64)
            np.add.at(self.sums, init, self.x64)
        self.sqn = np.bincount(init, weights=(self.x64 * self.x64).sum(1), minlength=n)
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
        self.sums[keep] += self.sums[gone]
        self.sqn[keep] += self.sqn[gone]
        self.msq[keep] = self.sqn[keep] / self.size[keep]
        self.version[keep] += 1
        for t in self.tags:
            if t[keep] < 0:
                t[keep] = t[gone]
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

    # -- linkages

    def average(self, a: int, nb: np.ndarray) -> np.ndarray:
        """Exact average linkage between root ``a`` and roots ``nb`` ``(m,)`` -> ``(m,)``."""
        dot = self.sums[nb] @ self.sums[a]
        return np.asarray(self.msq[a] + self.msq[nb] - 2.0 * dot / (self.size[a] * self.size[nb]))

    def complete_exact(self, a: int, b: int) -> float:
        """Exact complete linkage: largest ``d`` over the members of roots ``a`` and ``b``."""
        xa, xb = self.x64[self.members[a]], self.x64[self.members[b]]
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
        adj: dict[int, set[int]] = {}
        for i, j in zip(a.tolist(), b.tolist(), strict=True):
            adj.setdefault(i, set()).add(j)
            adj.setdefault(j, set()).add(i)
        # Neighbour sets are merged lazily: they may hold faces that have since joined another
        # cluster, and are resolved through ``parent`` (and compacted) when read.
        alive = self.alive
        done = np.zeros(len(alive), dtype=bool)
        todo = sorted(adj)  # clusters without any edge can never merge
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
            adj[keep] |= adj.pop(gone)
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

    def _nearest(self, top: int, prev: int, adj: dict[int, set[int]]) -> int:
        """Nearest compatible neighbour of ``top`` below the threshold, ``prev`` on ties; or -1.

        Incompatible neighbours are dropped from the graph for good (constraints are monotone).
        """
        raw = adj[top]
        if not raw:
            return -1
        ids = np.fromiter(raw, dtype=np.int64, count=len(raw))
        nb = self._resolve(ids)
        if not np.array_equal(nb, ids):  # some neighbours merged since: duplicates possible
            nb = np.unique(nb)
        nb = nb[nb != top]
        if len(nb) < len(raw):
            raw = adj[top] = set(nb.tolist())
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
        for idx in cand.tolist():
            x = int(nb[idx])
            if self.compatible(top, x):
                if prev >= 0 and x != prev and prev in raw:
                    at = np.flatnonzero(nb == prev)
                    lp = float(lv[at[0]])
                    # ties go to the chain (no cycles)
                    if lp < float(thr[at[0]]) and lp <= float(lv[idx]) + 1e-12:
                        return prev
                return x
            raw.discard(x)  # x still lists top; it drops it when it finds the conflict itself
        return -1

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
    agg = _Agglomerator(xb, init, tags, photo_ids, threshold, config.linkage, pair_threshold)
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
) -> np.ndarray:
    """Cluster faces into people.

    ``xb``: ``(N, D) float32`` unit embeddings. ``photo_ids``: ``(N,)`` int, the photo of each face
    (``-1`` unknown); faces of one photo never share a cluster. ``labels``: ``(N,)`` int person of
    each face, ``-1`` unlabelled; different people never share a cluster, one person's faces
    start together when ``config.premerge_labels``. ``index``: optional FAISS inner-product index
    holding exactly ``xb`` (ids = positions) to take the neighbours from. ``graph``: optional
    ``(D, I)`` from :func:`knn_graph` (then ``config.k`` and ``index`` are not used), to cluster
    the same faces at several settings with one search.
    Returns ``(N,) int64`` cluster ids, ``0 .. C-1`` by decreasing size, ``-1`` = left alone.
    """
    config = config or ClusterConfig()
    xb = _check_embeddings(xb)
    n = len(xb)
    photo_ids = _check_ids(photo_ids, n, "photo_ids")
    labels = _check_ids(labels, n, "labels")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    threshold, pair_threshold = config.thresholds(xb)
    if graph is None:
        dist, ids = knn_graph(xb, config.k, index=index, exact_max=config.exact_max)
    else:
        dist, ids = graph
        if dist.shape != ids.shape or len(ids) != n:
            raise ValueError(f"graph must be two (N={n}, k) arrays, got {dist.shape}, {ids.shape}")
    a, b, w = _edges(dist, ids)
    init = _label_groups(labels) if config.premerge_labels else np.arange(n, dtype=np.int64)
    roots = _run(xb, a, b, w, init, [labels], photo_ids, config, threshold, pair_threshold)
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
) -> np.ndarray:
    """Add new faces to an existing clustering without starting over.

    ``cluster_ids``: ``(N,) int`` the existing ids of the old faces ``xb`` ``(N, D)`` (``-1`` =
    alone). ``xq``: ``(M, D) float32`` unit embeddings of the new faces. ``photo_ids`` and
    ``labels``: ``(N + M,)``, old faces first, as in :func:`agglomerate`.

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
    threshold, pair_threshold = config.thresholds(xall)
    roots = _run(
        xall, a, b, w, init, [labels, old_tag], photo_ids, config, threshold, pair_threshold
    )
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
) -> list[Proposal]:
    """Propose a labelled person for every cluster that has no labelled face.

    ``cluster_ids``: ``(N,) int`` (``-1`` = alone, never proposed); ``xb``: ``(N, D) float32``
    unit embeddings; ``labels``: ``(N,) int`` person per face, ``-1`` unlabelled. The person
    proposed is the one with the smallest average-linkage distance (mean ``d`` between the
    cluster's faces and the person's labelled faces), if it is ``< threshold`` (tau) and no face of
    the person is in a photo with a face of the cluster. Returns the proposals, by cluster id;
    clusters with no person close enough get none.
    """
    xb = _check_embeddings(xb)
    n = len(xb)
    cluster_ids = _check_ids(cluster_ids, n, "cluster_ids")
    labels = _check_ids(labels, n, "labels")
    photo_ids = _check_ids(photo_ids, n, "photo_ids")
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
    best = np.argmin(link, axis=1)
    dbest = link[np.arange(len(cids)), best]
    out = [
        Proposal(cluster=int(c), label=int(people[p]), distance=float(d))
        for c, p, d in zip(cids.tolist(), best.tolist(), dbest.tolist(), strict=True)
        if d < threshold
    ]
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
