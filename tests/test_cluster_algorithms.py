"""Clustering on the sparse k-NN graph, checked against exact (dense) oracles.

Seeded synthetic embeddings: identity centres on the unit sphere, faces scattered around them.
Oracles: brute-force k-NN, scipy's dense hierarchical clustering, a dense greedy agglomeration
with cannot-link constraints written out here, and brute-force pair counting for the metrics.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from facesearch.cluster_algorithms import (
    ClusterConfig,
    Proposal,
    agglomerate,
    assign_new,
    bcubed_prf,
    build_index,
    default_threshold,
    default_thresholds,
    knn_graph,
    n_clusters,
    pairwise_prf,
    propose_people,
)
from facesearch.distance import DEFAULT_THRESHOLD, pairwise_distance
from facesearch.errors import IndexMismatchError

hierarchy = pytest.importorskip("scipy.cluster.hierarchy", reason="scipy is the exact oracle")
distance = pytest.importorskip("scipy.spatial.distance", reason="scipy is the exact oracle")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def faces(
    n_ids: int, per: int, spread: float, seed: int, dim: int = 128, fixed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, dim) float32`` unit faces of ``n_ids`` identities with 1..per faces each (``per``
    each when ``fixed``), and the ``(N,) int64`` identity of each face."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_ids, dim)))
    sizes = np.full(n_ids, per) if fixed else rng.integers(1, per + 1, n_ids)
    ident = np.repeat(np.arange(n_ids), sizes)
    x = centres[ident] + spread * rng.standard_normal((len(ident), dim))
    return unit(x), ident


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two labelings (``-1`` = alone) group the faces identically."""
    return bcubed_prf(a, b).f == 1.0


def scipy_clusters(x: np.ndarray, method: str, threshold: float) -> np.ndarray:
    """Exact agglomerative clustering on d = |a-b|^2, cut below the threshold."""
    z = hierarchy.linkage(distance.pdist(x.astype(np.float64), "sqeuclidean"), method)
    return hierarchy.fcluster(z, threshold, "distance").astype(np.int64)


def greedy_oracle(
    x: np.ndarray,
    threshold: float,
    photo: np.ndarray,
    labels: np.ndarray,
    pair_threshold: float | None = None,
) -> np.ndarray:
    """Dense average linkage with cannot-link: always merge the closest allowed pair; two
    single faces are allowed only below ``pair_threshold`` (default: ``threshold``)."""
    d = pairwise_distance(x, x).astype(np.float64)
    pair_t = threshold if pair_threshold is None else pair_threshold
    groups = [[i] for i in range(len(x))]
    while True:
        best, pair = np.inf, None
        for i, j in itertools.combinations(range(len(groups)), 2):
            gi, gj = groups[i], groups[j]
            if set(photo[gi]) & set(photo[gj]):
                continue
            li, lj = set(labels[gi]) - {-1}, set(labels[gj]) - {-1}
            if li and lj and li != lj:
                continue
            link = d[np.ix_(gi, gj)].mean()
            if link < (pair_t if len(gi) == len(gj) == 1 else threshold) and link < best:
                best, pair = link, (i, j)
        if pair is None:
            break
        i, j = pair
        groups[i] += groups.pop(j)
    out = np.empty(len(x), dtype=np.int64)
    for c, g in enumerate(groups):
        out[g] = c
    return out


# --------------------------------------------------------------------------- k-NN graph


def test_knn_graph_matches_brute_force() -> None:
    x, _ = faces(40, 12, 0.08, seed=1)
    x = np.concatenate([x, x[:5]])  # exact duplicates must not confuse self-removal
    k = 10
    dist, ids = knn_graph(x, k)
    assert dist.shape == ids.shape == (len(x), k)
    full = pairwise_distance(x, x)
    np.fill_diagonal(full, np.inf)
    ref = np.sort(full, axis=1)[:, :k]
    np.testing.assert_allclose(dist, ref, atol=1e-5)
    assert not (ids == np.arange(len(x))[:, None]).any()
    np.testing.assert_allclose(np.take_along_axis(full, ids, axis=1), dist, atol=1e-5)


def test_knn_graph_small_inputs() -> None:
    x, _ = faces(3, 1, 0.05, seed=2)
    dist, ids = knn_graph(x[:1], 8)
    assert dist.shape == (1, 0)
    dist, ids = knn_graph(x, 8)
    assert ids.shape == (3, 2)
    assert set(ids[0].tolist()) == {1, 2}


def test_knn_graph_refuses_an_index_of_other_vectors() -> None:
    x, _ = faces(30, 5, 0.08, seed=3)
    y, _ = faces(30, 5, 0.08, seed=4)
    with pytest.raises(IndexMismatchError, match="not their own nearest"):
        knn_graph(x[: len(y)], 5, index=build_index(y[: len(x)]))
    with pytest.raises(IndexMismatchError, match="holds"):
        knn_graph(x, 5, index=build_index(x[:-1]))


def test_approximate_graph_finds_nearly_all_neighbours() -> None:
    x, _ = faces(150, 10, 0.08, seed=5)
    _, exact = knn_graph(x, 16)
    _, approx = knn_graph(x, 16, exact_max=0)  # HNSW
    hits = np.mean([len(set(a) & set(b)) / 16 for a, b in zip(exact, approx, strict=True)])
    assert hits > 0.95


def test_inputs_are_checked() -> None:
    x, _ = faces(5, 3, 0.05, seed=6)
    with pytest.raises(ValueError, match="unit-norm"):
        agglomerate(x * 2)
    with pytest.raises(ValueError, match="photo_ids must have shape"):
        agglomerate(x, photo_ids=np.zeros(len(x) + 1, dtype=np.int64))
    with pytest.raises(ValueError, match="linkage"):
        ClusterConfig(linkage="ward")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        ClusterConfig(threshold=0.0)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("method", ["average", "single", "complete"])
@pytest.mark.parametrize("threshold", [0.8, DEFAULT_THRESHOLD, 1.6])
@pytest.mark.parametrize("seed", [0, 1])
def test_full_graph_equals_scipy(method: str, threshold: float, seed: int) -> None:
    x, _ = faces(15, 16, 0.09, seed=seed)
    config = ClusterConfig(threshold=threshold, linkage=method, k=len(x), min_size=1)  # type: ignore[arg-type]
    assert same_partition(agglomerate(x, config), scipy_clusters(x, method, threshold))


@pytest.mark.parametrize("method", ["average", "single", "complete"])
def test_sparse_graph_equals_scipy_when_it_holds_every_close_pair(method: str) -> None:
    x, _ = faces(40, 8, 0.09, seed=7)
    k = 12
    dist, _ = knn_graph(x, k)
    # the premise of the guarantee: each face's k-th neighbour is already beyond the threshold
    assert (dist[:, -1] >= DEFAULT_THRESHOLD).all()
    config = ClusterConfig(DEFAULT_THRESHOLD, linkage=method, k=k, min_size=1)  # type: ignore[arg-type]
    assert same_partition(agglomerate(x, config), scipy_clusters(x, method, DEFAULT_THRESHOLD))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_average_equals_scipy_with_identities_larger_than_k(seed: int) -> None:
    # Identities of up to 60 faces with k = 8: most same-person pairs are not edges, yet the
    # average linkage is exact (cluster sums) and clusters of one person stay graph-adjacent.
    x, _ = faces(12, 60, 0.07, seed=seed)
    config = ClusterConfig(DEFAULT_THRESHOLD, k=8, min_size=1)
    assert same_partition(agglomerate(x, config), scipy_clusters(x, "average", DEFAULT_THRESHOLD))


def test_identical_faces_end_in_one_cluster() -> None:
    x, _ = faces(2, 1, 0.0, seed=8)
    xb = np.repeat(x, 25, axis=0)  # ties everywhere: the chain must not cycle
    out = agglomerate(xb, ClusterConfig(k=8))
    assert out[:25].tolist() == [0] * 25 and out[25:].tolist() == [1] * 25


def test_empty_and_single() -> None:
    assert agglomerate(np.zeros((0, 128), np.float32)).shape == (0,)
    x, _ = faces(1, 1, 0.0, seed=9)
    assert agglomerate(x).tolist() == [-1]


# --------------------------------------------------------------------------- constraints


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_constraints_equal_dense_greedy_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, ident = faces(8, 8, 0.09, seed=seed, dim=32)
    n = len(x)
    photo = rng.integers(0, n // 2, n)  # many photos with two or three faces
    labels = np.full(n, -1, dtype=np.int64)
    some = rng.choice(n, n // 6, replace=False)
    labels[some] = ident[some]
    config = ClusterConfig(DEFAULT_THRESHOLD, k=n, min_size=1, premerge_labels=False)
    got = agglomerate(x, config, photo_ids=photo, labels=labels)
    ref = greedy_oracle(x, DEFAULT_THRESHOLD, photo, labels)
    assert same_partition(got, ref)


@pytest.mark.parametrize("method", ["average", "single", "complete"])
def test_cannot_link_is_never_broken(method: str) -> None:
    rng = np.random.default_rng(11)
    x, ident = faces(20, 15, 0.08, seed=11)
    n = len(x)
    photo = rng.integers(0, n // 2, n)
    labels = np.where(rng.random(n) < 0.2, ident, -1)
    config = ClusterConfig(linkage=method, k=16, premerge_labels=False)  # type: ignore[arg-type]
    out = agglomerate(x, config, photo_ids=photo, labels=labels)
    for c in np.unique(out[out >= 0]):
        members = out == c
        assert len(np.unique(photo[members])) == members.sum(), "two faces of one photo"
        assert len(set(labels[members].tolist()) - {-1}) <= 1, "two people in one cluster"


def test_two_faces_of_one_photo_split_even_when_identical() -> None:
    x, _ = faces(1, 1, 0.0, seed=12)
    xb = np.repeat(x, 4, axis=0)
    out = agglomerate(xb, photo_ids=np.array([7, 7, 8, 9]))
    assert out[0] != out[1]
    assert n_clusters(out) == 2


def test_labels_premerge_and_propagate() -> None:
    x, ident = faces(6, 10, 0.08, seed=13)
    labels = np.full(len(x), -1, dtype=np.int64)
    first = np.unique(ident, return_index=True)[1]
    labels[first] = ident[first]
    out = agglomerate(x, labels=labels)
    for person in range(6):
        faces_of = out[ident == person]
        assert (faces_of == out[first[person]]).all()
    # a person labelled on two faces that are far apart still ends in one cluster
    y, _ = faces(2, 1, 0.0, seed=14)
    out = agglomerate(y, labels=np.array([3, 3]))
    assert out.tolist() == [0, 0]
    assert agglomerate(
        y, ClusterConfig(premerge_labels=False), labels=np.array([3, 3])
    ).tolist() == [
        -1,
        -1,
    ]


def test_min_size_and_numbering() -> None:
    x, ident = faces(10, 9, 0.07, seed=15)
    out = agglomerate(x, ClusterConfig(min_size=3))
    sizes = np.bincount(ident)
    assert (out[np.isin(ident, np.flatnonzero(sizes < 3))] == -1).all()
    counts = np.bincount(out[out >= 0])
    assert (np.diff(counts) <= 0).all(), "ids are numbered by decreasing size"
    assert n_clusters(out) == len(counts) + int((out < 0).sum())


# --------------------------------------------------------------------------- incremental


def test_assign_new_extends_existing_clusters() -> None:
    x, ident = faces(20, 14, 0.08, seed=16)
    rng = np.random.default_rng(16)
    new = rng.random(len(x)) < 0.3
    new[ident == 19] = True  # one person appears only in the new photos
    old_ids = agglomerate(x[~new])
    out = assign_new(old_ids, x[~new], x[new])
    assert out.shape == (len(x),)
    np.testing.assert_array_equal(out[: (~new).sum()][old_ids >= 0], old_ids[old_ids >= 0])
    truth = np.concatenate([ident[~new], ident[new]])
    full = agglomerate(np.concatenate([x[~new], x[new]]))
    assert bcubed_prf(out, truth).f >= bcubed_prf(full, truth).f - 0.01
    newcomer = out[len(old_ids) :][ident[new] == 19]
    assert len(set(newcomer.tolist())) == 1 and newcomer[0] > old_ids.max()


def test_assign_new_never_merges_existing_clusters() -> None:
    x, _ = faces(1, 1, 0.0, seed=17)
    rng = np.random.default_rng(17)
    xb = unit(np.repeat(x, 6, axis=0) + 0.03 * rng.standard_normal((6, 128)))
    old = np.array([0, 0, 0, 1, 1, 1])  # one person split by hand into two clusters
    xq = unit(np.repeat(x, 3, axis=0) + 0.03 * rng.standard_normal((3, 128)))
    out = assign_new(old, xb, xq, photo_ids=np.array([0, 1, 2, 3, 4, 5, 6, 7, 2]))
    assert out[:6].tolist() == old.tolist()
    assert set(out[6:8].tolist()) <= {0, 1}
    assert out[8] == 1, "the face shares photo 2 with cluster 0, so it may only join cluster 1"


def test_assign_new_keeps_old_ids_without_new_faces() -> None:
    x, _ = faces(4, 4, 0.07, seed=18)
    old = agglomerate(x)
    assert assign_new(old, x, np.zeros((0, 128), np.float32)).tolist() == old.tolist()


# --------------------------------------------------------------------------- proposals


def test_propose_people() -> None:
    x, ident = faces(4, 8, 0.07, seed=19, fixed=True)
    labels = np.full(len(x), -1, dtype=np.int64)
    for person in (0, 1, 2):  # person 3 is nobody we know
        labels[np.flatnonzero(ident == person)[:2]] = 100 + person
    clusters = agglomerate(x, ClusterConfig(premerge_labels=False), labels=None)
    clusters[labels >= 0] = -1  # the labelled faces were already filed under their person
    props = propose_people(clusters, x, labels)
    by_cluster = {p.cluster: p for p in props}
    for person in (0, 1, 2):
        c = np.bincount(clusters[(ident == person) & (clusters >= 0)]).argmax()
        assert by_cluster[int(c)].label == 100 + person
        assert by_cluster[int(c)].distance < DEFAULT_THRESHOLD
    c3 = int(np.bincount(clusters[(ident == 3) & (clusters >= 0)]).argmax())
    assert c3 not in by_cluster
    # a person seen in the same photo as a face of the cluster is not proposed for it
    photo = np.arange(len(x))
    c0 = by_cluster[int(np.bincount(clusters[(ident == 0) & (clusters >= 0)]).argmax())].cluster
    photo[np.flatnonzero(clusters == c0)[0]] = photo[np.flatnonzero(labels == 100)[0]]
    props = propose_people(clusters, x, labels, photo_ids=photo)
    assert all(p.cluster != c0 or p.label != 100 for p in props)
    assert all(isinstance(p, Proposal) for p in props)


def test_no_proposal_for_clusters_with_a_person() -> None:
    x, ident = faces(2, 6, 0.07, seed=20)
    labels = np.where(np.arange(len(x)) == 0, ident, -1)
    clusters = agglomerate(x, labels=labels)
    assert all(p.cluster != clusters[0] for p in propose_people(clusters, x, labels))


# --------------------------------------------------------------------------- metrics


def brute_pairwise(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    n = len(pred)
    pred = np.where(pred < 0, -1 - np.arange(n), pred)
    true = np.where(true < 0, -1 - np.arange(n), true)
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(n), 2):
        sp, st = pred[i] == pred[j], true[i] == true[j]
        tp += sp and st
        fp += sp and not st
        fn += st and not sp
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / (tp + fn) if tp + fn else 1.0)


def brute_bcubed(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    n = len(pred)
    pred = np.where(pred < 0, -1 - np.arange(n), pred)
    true = np.where(true < 0, -1 - np.arange(n), true)
    p = np.mean([((pred == pred[i]) & (true == true[i])).sum() / (pred == pred[i]).sum()
                 for i in range(n)])  # fmt: skip
    r = np.mean([((pred == pred[i]) & (true == true[i])).sum() / (true == true[i]).sum()
                 for i in range(n)])  # fmt: skip
    return float(p), float(r)


@pytest.mark.parametrize("seed", range(8))
def test_metrics_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    pred = rng.integers(-1, int(rng.integers(1, 10)), n)
    true = rng.integers(-1, int(rng.integers(1, 10)), n)
    pw, bc = pairwise_prf(pred, true), bcubed_prf(pred, true)
    assert (pw.precision, pw.recall) == pytest.approx(brute_pairwise(pred, true))
    assert (bc.precision, bc.recall) == pytest.approx(brute_bcubed(pred, true))
    for m in (pw, bc):
        p, r = m.precision, m.recall
        assert m.f == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)


def test_metrics_on_known_cases() -> None:
    true = np.array([0, 0, 0, 1, 1])
    assert bcubed_prf(true, true).f == 1.0
    assert pairwise_prf(true, true).f == 1.0
    alone = np.full(5, -1)
    assert bcubed_prf(alone, true).precision == 1.0
    assert bcubed_prf(alone, true).recall == pytest.approx((3 * (1 / 3) + 2 * (1 / 2)) / 5)
    assert pairwise_prf(alone, true).recall == 0.0
    assert n_clusters(np.array([0, 0, -1, -1, 3])) == 4


# --------------------------------------------------------------------------- default threshold


def test_default_threshold_moves_below_tau_as_same_person_pairs_get_rare() -> None:
    few, _ = faces(10, 60, 0.08, seed=21, fixed=True)  # 10 people: 1 pair in 10 is the same
    many, _ = faces(600, 1, 0.08, seed=21, fixed=True)  # 600 people seen once
    t_few, t_many = default_threshold(few), default_threshold(many)
    assert t_many < t_few < DEFAULT_THRESHOLD
    assert default_threshold(few) == t_few, "seeded: the same faces give the same threshold"
    assert default_threshold(few, tau=1.4) > t_few, "it follows tau"


def test_default_threshold_is_tau_without_a_crowd() -> None:
    x, _ = faces(1, 1, 0.0, seed=22)
    assert default_threshold(x) == DEFAULT_THRESHOLD
    assert default_threshold(np.repeat(x, 5, axis=0)) == DEFAULT_THRESHOLD  # one person only


def test_single_faces_get_the_stricter_prior_of_a_person_seen_once() -> None:
    many, _ = faces(600, 3, 0.08, seed=24)
    t, t_pair = default_thresholds(many)
    assert t == default_threshold(many)
    assert t_pair < t < DEFAULT_THRESHOLD
    # T(p) = tau - c ln((1 - p) / p): the gap between p = pi and p = 1 / N
    few, _ = faces(10, 60, 0.08, seed=21, fixed=True)
    t_few, t_few_pair = default_thresholds(few)
    assert t_few_pair < t_few
    x, _ = faces(1, 1, 0.0, seed=22)
    assert default_thresholds(x) == (DEFAULT_THRESHOLD, DEFAULT_THRESHOLD)


def test_default_config_uses_the_default_thresholds() -> None:
    x, _ = faces(60, 4, 0.09, seed=23)
    t, t_pair = default_thresholds(x)
    assert ClusterConfig().thresholds(x) == (t, t_pair)
    auto = agglomerate(x)
    explicit = agglomerate(x, ClusterConfig(threshold=t, pair_threshold=t_pair))
    np.testing.assert_array_equal(auto, explicit)
    # an explicit threshold alone is a plain cut (pair threshold = threshold), capped below it
    assert ClusterConfig(threshold=1.0).thresholds(x) == (1.0, 1.0)
    assert ClusterConfig(threshold=1.0, pair_threshold=1.2).thresholds(x) == (1.0, 1.0)
    assert ClusterConfig(pair_threshold=0.5).thresholds(x) == (t, 0.5)
    with pytest.raises(ValueError, match="pair_threshold"):
        ClusterConfig(pair_threshold=0.0)


@pytest.mark.parametrize("seed", [1, 2, 3, 6, 7])  # seeds where the pair threshold matters
def test_pair_threshold_equals_dense_greedy_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, _ = faces(20, 3, 0.13, seed=seed, dim=32)  # same-person d around 1.0
    n = len(x)
    photo = rng.integers(0, n, n)
    t, t_pair = 1.1, 0.95
    config = ClusterConfig(t, k=n, min_size=1, pair_threshold=t_pair)
    got = agglomerate(x, config, photo_ids=photo)
    ref = greedy_oracle(x, t, photo, np.full(n, -1), pair_threshold=t_pair)
    assert same_partition(got, ref)
    assert not same_partition(got, agglomerate(x, ClusterConfig(t, k=n, min_size=1), photo))


@pytest.mark.parametrize("method", ["average", "single", "complete"])
def test_two_single_faces_need_the_pair_threshold_but_join_a_group_at_the_threshold(
    method: str,
) -> None:
    # a, b: d(a, b) = 0.9; c next to b (d 0.2): {b, c} forms, then a joins it at the threshold
    rng = np.random.default_rng(25)
    base = unit(rng.standard_normal((1, 64)))[0].astype(np.float64)
    other = unit(rng.standard_normal((1, 64)))[0].astype(np.float64)
    other -= (other @ base) * base
    other /= np.linalg.norm(other)

    def at(d: float) -> np.ndarray:  # the unit vector at distance d from base
        c = 1.0 - d / 2.0
        return c * base + np.sqrt(1.0 - c * c) * other

    x = unit(np.stack([at(0.0), at(0.9)]))
    alone = ClusterConfig(1.2, linkage=method, min_size=1, pair_threshold=0.8)  # type: ignore[arg-type]
    assert n_clusters(agglomerate(x, alone)) == 2
    assert n_clusters(agglomerate(x, ClusterConfig(1.2, linkage=method))) == 1  # type: ignore[arg-type]
    x3 = unit(np.stack([at(0.0), at(0.9), at(0.9) + 0.05 * other]))
    assert n_clusters(agglomerate(x3, alone)) == 1
