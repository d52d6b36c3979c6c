"""The clustering algorithms people use on face embeddings, as the cluster benchmark runs them.

* :func:`chinese_whispers`: dlib's ``chinese_whispers`` (what ``dlib.chinese_whispers_clustering``
  and face_recognition users run), ported: an unweighted graph with an edge for every pair closer
  than the threshold plus a self-loop per face; every face starts with its own label; then
  ``N * iterations`` times a face drawn at random takes the label most common among its edges
  (ties: the smallest label, as dlib's ``std::map`` walk with a strict ``>`` does). dlib draws
  with its own seeded generator; here it is numpy's, seeded. :func:`dlib_chinese_whispers` runs
  dlib's own code on the same graph when dlib is installed.
* :func:`dbscan`: DBSCAN (Ester et al. 1996) with ``min_samples`` counting the point itself, as
  scikit-learn does; neighbourhoods ``d <= eps`` from a FAISS range search; clusters are the
  connected components of the core points; a border point joins the cluster of its nearest
  core point; noise points are left alone (``-1``).
* :func:`hdbscan`: scikit-learn's HDBSCAN (Campello et al. 2013) on the Euclidean distance of the
  unit vectors (``sqrt(d)``, the same order as ``d``); noise is left alone.
* :func:`infomap` and :func:`leiden`: community detection on the k-NN graph, as the face
  clustering work that uses them builds it (e.g. "face clustering by Infomap"): the ``k``
  nearest neighbours of every face, the edges with ``d < threshold`` kept, weighted by the cosine
  similarity ``1 - d / 2``. Infomap (the map equation, two-level, ``infomap`` package) and Leiden
  (modularity, ``leidenalg`` on ``igraph``), seeded; a face without an edge is alone.
* :func:`exact_average_tree`: scipy's exact average-linkage dendrogram on ``d`` (dense,
  ``O(N^2)`` memory), cut by :func:`cut`.

All take ``(N, D) float32`` unit embeddings and thresholds in ``d = |a - b|^2`` units, and return
``(N,) int64`` labels (``-1`` = alone). Benchmark-only: scipy (the ``dev`` extra), dlib-bin,
scikit-learn, infomap, leidenalg and igraph (the ``bench`` extra).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import faiss
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def range_graph(xb: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs with ``d < radius`` (self pairs included), as CSR: ``lims (N+1,)``, ``D``, ``I``.

    ``D`` holds the distances ``d`` ``float32``, ``I`` the neighbour positions ``int64``.
    """
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    lims, sims, ids = index.range_search(xb, 1.0 - radius / 2.0)  # IP > 1 - r/2  <=>  d < r
    return lims.astype(np.int64), (2.0 - 2.0 * sims).astype(np.float32), ids.astype(np.int64)


def chinese_whispers(
    xb: np.ndarray, threshold: float, iterations: int = 100, seed: int = 0
) -> np.ndarray:
    """dlib's Chinese whispers on the graph ``d < threshold`` -> ``(N,) int64`` labels."""
    n = len(xb)
    lims, _, ids = range_graph(xb, threshold)
    nbrs = [ids[lims[i] : lims[i + 1]].tolist() for i in range(n)]  # includes the self-loop
    labels = list(range(n))
    get = labels.__getitem__
    picks = np.random.default_rng(seed).integers(0, n, size=n * iterations).tolist()
    for idx in picks:
        nb = nbrs[idx]
        if len(nb) == 1:  # only the self-loop
            continue
        counts = Counter(map(get, nb))
        best, best_count = labels[idx], -1
        for lab, c in counts.items():
            if c > best_count or (c == best_count and lab < best):
                best, best_count = lab, c
        labels[idx] = best
    return np.asarray(labels, dtype=np.int64)


def dlib_chinese_whispers(xb: np.ndarray, threshold: float) -> np.ndarray:
    """dlib's own ``chinese_whispers`` (100 iterations, dlib's fixed seed) on the same graph."""
    import dlib  # benchmark-only: pip install dlib-bin

    n = len(xb)
    lims, _, ids = range_graph(xb, threshold)
    src = np.repeat(np.arange(n), np.diff(lims))
    keep = src <= ids  # each undirected edge once, self-loops kept (as chinese_whispers_clustering)
    edges = list(zip(src[keep].tolist(), ids[keep].tolist(), strict=True))
    return np.asarray(dlib.chinese_whispers(edges), dtype=np.int64)


def dbscan(xb: np.ndarray, eps: float, min_samples: int = 3) -> np.ndarray:
    """DBSCAN with neighbourhoods ``d <= eps`` -> ``(N,) int64`` labels, ``-1`` for noise."""
    n = len(xb)
    lims, dist, ids = range_graph(xb, float(np.nextafter(np.float32(eps), np.float32(4.0))))
    counts = np.diff(lims)
    core = counts >= min_samples
    src = np.repeat(np.arange(n), counts)
    cc = core[src] & core[ids]
    graph = coo_matrix((np.ones(int(cc.sum())), (src[cc], ids[cc])), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    out = np.full(n, -1, dtype=np.int64)
    out[core] = comp[core]
    # border points: the cluster of the nearest core neighbour
    border = ~core[src] & core[ids]
    if border.any():
        bs, bi, bd = src[border], ids[border], dist[border]
        order = np.lexsort((bd, bs))
        bs, bi = bs[order], bi[order]
        first = np.r_[True, bs[1:] != bs[:-1]]
        out[bs[first]] = comp[bi[first]]
    return out


def hdbscan(xb: np.ndarray, min_cluster_size: int = 5, **kw: Any) -> np.ndarray:
    """scikit-learn's HDBSCAN on ``xb`` -> ``(N,) int64`` labels, ``-1`` for noise."""
    from sklearn.cluster import HDBSCAN

    model = HDBSCAN(min_cluster_size=min_cluster_size, metric="euclidean", copy=True, **kw)
    return np.asarray(model.fit_predict(np.asarray(xb, dtype=np.float64)), dtype=np.int64)


def knn_edges(
    graph: tuple[np.ndarray, np.ndarray], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges ``(a, b, sim)`` (``a < b``, each once) of a k-NN table ``(D, I)`` (from
    :func:`facesearch.cluster_algorithms.knn_graph`) with ``d < threshold``; ``sim = 1 - d / 2``."""
    dist, ids = graph
    n = len(ids)
    src = np.repeat(np.arange(n, dtype=np.int64), ids.shape[1])
    dst, w = ids.ravel(), dist.ravel().astype(np.float64)
    ok = (dst >= 0) & (w < threshold)
    a, b, w = np.minimum(src, dst)[ok], np.maximum(src, dst)[ok], w[ok]
    key, first = np.unique(a * n + b, return_index=True)
    return key // n, key % n, 1.0 - w[first] / 2.0


def infomap(graph: tuple[np.ndarray, np.ndarray], threshold: float, seed: int = 0) -> np.ndarray:
    """Two-level Infomap on the k-NN graph's edges below ``threshold`` -> ``(N,) int64``."""
    import infomap as im

    n = len(graph[1])
    a, b, w = knn_edges(graph, threshold)
    if not len(a):
        return np.full(n, -1, dtype=np.int64)
    m = coo_matrix((w, (a, b)), shape=(n, n)).tocsr()
    res = im.run(m, two_level=True, seed=seed + 1, silent=True)
    modules = res.modules()
    out = np.full(n, -1, dtype=np.int64)
    nodes = np.fromiter(modules.keys(), dtype=np.int64, count=len(modules))
    out[nodes] = np.fromiter(modules.values(), dtype=np.int64, count=len(modules))
    return _alone_apart(out, a, b)


def leiden(graph: tuple[np.ndarray, np.ndarray], threshold: float, seed: int = 0) -> np.ndarray:
    """Leiden (modularity) on the k-NN graph's edges below ``threshold`` -> ``(N,) int64``."""
    import igraph
    import leidenalg

    n = len(graph[1])
    a, b, w = knn_edges(graph, threshold)
    g = igraph.Graph(n=n, edges=np.stack([a, b], axis=1).tolist())
    part = leidenalg.find_partition(
        g, leidenalg.ModularityVertexPartition, weights=w.tolist(), seed=seed
    )
    return _alone_apart(np.asarray(part.membership, dtype=np.int64), a, b)


def _alone_apart(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``labels`` with every face that has no edge set to ``-1`` (alone)."""
    has = np.zeros(len(labels), dtype=bool)
    has[a] = has[b] = True
    out = labels.copy()
    out[~has] = -1
    return out


def exact_average_tree(xb: np.ndarray) -> np.ndarray:
    """scipy's exact average-linkage dendrogram on ``d`` (``(N - 1, 4)`` linkage matrix)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    return np.asarray(linkage(pdist(xb.astype(np.float64), "sqeuclidean"), "average"))


def cut(tree: np.ndarray, threshold: float) -> np.ndarray:
    """Flat clusters of a scipy dendrogram: merges at a height ``< threshold`` -> ``(N,) int64``."""
    from scipy.cluster.hierarchy import fcluster

    t = float(np.nextafter(threshold, 0.0))  # fcluster keeps merges <= t
    return np.asarray(fcluster(tree, t, "distance"), dtype=np.int64)
