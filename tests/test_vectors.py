"""The FAISS vector index against a numpy brute-force oracle on seeded synthetic unit vectors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from facesearch import vectors
from facesearch.errors import IndexMismatchError
from facesearch.vectors import VectorIndex, recall_at_k, resolve_kind


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_set(nb: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``ids (nb,) int64`` (sparse, shuffled) and ``xb (nb, d) float32`` unit vectors."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10 * nb, nb, replace=False).astype(np.int64)
    return ids, unit(rng.standard_normal((nb, d)))


def clustered_set(nb: int, d: int, seed: int, per: int = 10) -> np.ndarray:
    """Face-like vectors: groups (look-alikes) > people > photos, ``(nb, d) float32``."""
    rng = np.random.default_rng(seed)
    n_people = nb // per
    groups = unit(rng.standard_normal((max(nb // 400, 8), d)))
    people = unit(
        groups[rng.integers(0, len(groups), n_people)]
        + rng.standard_normal((n_people, d)) / np.sqrt(d)
    )
    photos = people[np.repeat(np.arange(n_people), per)]
    return unit(photos + 0.7 * rng.standard_normal((nb, d)) / np.sqrt(d))


def brute_force(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int):
    """The oracle: ``(D, I)`` by exhaustive inner product, ``d = 2 - 2 ip``."""
    ip = xq @ xb.T
    order = np.argsort(-ip, axis=1, kind="stable")[:, :k]
    D = np.clip(2 - 2 * np.take_along_axis(ip, order, 1), 0, 4)
    return D.astype(np.float32), ids[order]


def test_flat_search_equals_brute_force() -> None:
    d, nb, nq, k = 32, 3000, 64, 10
    ids, xb = random_set(nb, d, seed=1)
    xq = unit(np.random.default_rng(2).standard_normal((nq, d)))
    index = VectorIndex.build(ids, xb, "flat")
    D, I = index.search(xq, k)  # noqa: E741
    D_ref, I_ref = brute_force(xb, ids, xq, k)
    assert index.kind == "flat" and len(index) == nb
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (nq, k)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(D, D_ref, atol=1e-5)
    assert np.all(np.diff(D, axis=1) >= 0)


def test_search_pads_with_minus_one_and_inf() -> None:
    ids, xb = random_set(3, 8, seed=3)
    index = VectorIndex.build(ids, xb, "flat")
    D, I = index.search(xb[:2], 5)  # noqa: E741
    assert (I[:, 3:] == -1).all() and np.isinf(D[:, 3:]).all()
    assert set(I[0, :3]) == set(ids)
    assert I[0, 0] == ids[0] and D[0, 0] == pytest.approx(0.0, abs=1e-5)
    empty = VectorIndex.create(8, "flat")
    D, I = empty.search(xb, 2)  # noqa: E741
    assert (I == -1).all() and np.isinf(D).all()


def test_bad_input_is_refused_with_the_values_seen() -> None:
    ids, xb = random_set(10, 8, seed=4)
    index = VectorIndex.create(8, "flat")
    with pytest.raises(ValueError, match="unit vectors: row 3 has norm 2.0"):
        bad = xb.copy()
        bad[3] *= 2
        index.add(ids, bad)
    with pytest.raises(ValueError, match=r"shape \(n, 8\), got \(10, 7\)"):
        index.add(ids, xb[:, :7])
    with pytest.raises(ValueError, match="unique"):
        index.add(np.zeros(10, dtype=np.int64), xb)
    with pytest.raises(ValueError, match="unknown index kind 'hnsw'"):
        VectorIndex.create(8, "hnsw")
    assert len(index) == 0


def test_auto_kind_switches_at_the_documented_size() -> None:
    assert resolve_kind("auto", vectors.AUTO_APPROX_ABOVE) == "flat"
    assert resolve_kind("auto", vectors.AUTO_APPROX_ABOVE + 1) == "ivf"
    assert resolve_kind("ivf", 10) == "ivf" and resolve_kind("flat", 10**7) == "flat"


def test_ivf_recall_at_10_on_clustered_set() -> None:
    d, nb, nq, k = 64, 20_000, 300, 10
    xb = clustered_set(nb, d, seed=5)
    ids = np.arange(nb, dtype=np.int64) * 3 + 7
    index = VectorIndex.build(ids, xb, "ivf")
    rng = np.random.default_rng(6)  # held out: new "photos" of stored faces
    xq = vectors._perturb(xb[rng.choice(nb, nq, replace=False)], 0.7, rng)
    _, I = index.search(xq, k)  # noqa: E741
    _, I_ref = brute_force(xb, ids, xq, k)
    recall = recall_at_k(I, I_ref)
    assert recall >= 0.95, f"recall@10 {recall:.3f} with nprobe {index.nprobe}/{index.nlist}"
    assert index.nlist == vectors.nlist_for(nb) and index.nprobe < index.nlist // 4


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_removed_ids_never_come_back(kind: str) -> None:
    d, nb, k = 32, 4000, 50
    xb = clustered_set(nb, d, seed=7)
    ids = np.random.default_rng(8).permutation(nb).astype(np.int64) + 100
    index = VectorIndex.build(ids, xb, kind)
    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0  # already gone: ignored
    keep = np.setdiff1d(ids, gone)
    np.testing.assert_array_equal(np.sort(index.ids()), keep)
    _, I = index.search(xb[::7], k)  # noqa: E741 - queries include removed vectors
    assert not np.isin(I, gone).any()
    if kind == "flat":
        mask = np.isin(ids, keep)
        _, I_ref = brute_force(xb[mask], ids[mask], xb[::7], k)
        np.testing.assert_array_equal(I, I_ref)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_restrict_to_searches_only_those_ids(kind: str) -> None:
    d, nb, k = 32, 3000, 10
    xb = clustered_set(nb, d, seed=9)
    ids = np.arange(nb, dtype=np.int64)
    index = VectorIndex.build(ids, xb, kind)
    allowed = ids[ids % 5 == 0]
    xq = xb[1::97]
    _, I = index.search(xq, k, restrict_to=allowed)  # noqa: E741
    assert np.isin(I[I >= 0], allowed).all()
    if kind == "flat":
        _, I_ref = brute_force(xb[allowed], allowed, xq, k)
        np.testing.assert_array_equal(I, I_ref)
    _, I = index.search(xq, k, restrict_to=np.empty(0, np.int64))  # noqa: E741
    assert (I == -1).all()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path: Path, kind: str, mmap: bool) -> None:
    d, nb, k = 32, 3000, 10
    xb = clustered_set(nb, d, seed=10)
    ids = np.arange(nb, dtype=np.int64) * 2
    index = VectorIndex.build(ids, xb, kind, model="sface", generation=17)
    path = tmp_path / "vectors.faiss"
    written = index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.faiss"]  # no temp file left
    loaded = VectorIndex.load(path, mmap=mmap)
    assert loaded.mmapped == mmap
    meta = loaded.metadata
    assert (meta.kind, meta.dim, meta.count, meta.model, meta.generation) == (
        kind,
        d,
        nb,
        "sface",
        17,
    )
    assert meta.nprobe == index.nprobe and meta.nlist == index.nlist
    assert VectorIndex.read_metadata(path) == written
    np.testing.assert_array_equal(np.sort(loaded.ids()), ids)
    for a, b in zip(index.search(xb[:50], k), loaded.search(xb[:50], k), strict=True):
        np.testing.assert_array_equal(a, b)
    # A memory-mapped index is read-only in FAISS: changing it reloads it in memory first.
    loaded.remove(ids[:10])
    loaded.add(ids[:10] + 1, xb[:10])
    assert len(loaded) == nb and not loaded.mmapped


def test_empty_ivf_round_trip(tmp_path: Path) -> None:
    index = VectorIndex.create(8, "ivf", model="m")
    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss")
    assert loaded.kind == "ivf" and len(loaded) == 0 and loaded.dim == 8
    ids, xb = random_set(500, 8, seed=11)
    loaded.add(ids, xb)  # trains on this first batch
    assert len(loaded) == 500 and loaded.nprobe >= 1


@pytest.mark.parametrize("keep", [0, 7, 100, "half", "minus1", "minus17"])
def test_truncated_file_gives_a_clear_error(tmp_path: Path, keep: object) -> None:
    ids, xb = random_set(1000, 16, seed=12)
    path = tmp_path / "v.faiss"
    VectorIndex.build(ids, xb, "flat").save(path)
    size = path.stat().st_size
    n = {"half": size // 2, "minus1": size - 1, "minus17": size - 17}.get(keep, keep)  # type: ignore[call-overload]
    with open(path, "r+b") as f:
        f.truncate(int(n))
    with pytest.raises(IndexMismatchError, match="corrupt or unreadable.*delete it"):
        VectorIndex.load(path)


def test_corrupt_bytes_are_caught(tmp_path: Path) -> None:
    ids, xb = random_set(1000, 16, seed=13)
    path = tmp_path / "v.faiss"
    VectorIndex.build(ids, xb, "flat").save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the vectors: only the checksum can tell
    path.write_bytes(bytes(data))
    with pytest.raises(IndexMismatchError, match="checksum"):
        VectorIndex.load(path, mmap=False)
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(IndexMismatchError, match="no facesearch trailer"):
        VectorIndex.load(path)
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path / "missing.faiss")


def test_failed_save_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids, xb = random_set(100, 8, seed=14)
    path = tmp_path / "v.faiss"
    VectorIndex.build(ids, xb, "flat", generation=1).save(path)
    before = path.read_bytes()
    import faiss

    def boom(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        VectorIndex.build(ids[:5], xb[:5], "flat", generation=2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["v.faiss"]


@settings(max_examples=30, deadline=None)
@given(
    hst.lists(hst.tuples(hst.booleans(), hst.lists(hst.integers(0, 60), max_size=12)), max_size=12)
)
def test_add_remove_sequence_matches_a_set(ops: list[tuple[bool, list[int]]]) -> None:
    rng = np.random.default_rng(15)
    index = VectorIndex.create(8, "flat")
    held: set[int] = set()
    for is_add, batch in ops:
        batch_ids = sorted(set(batch))
        if is_add:
            new = [i for i in batch_ids if i not in held]
            index.add(np.array(new, dtype=np.int64), unit(rng.standard_normal((len(new), 8))))
            held |= set(new)
        else:
            assert index.remove(np.array(batch_ids, dtype=np.int64)) == len(held & set(batch_ids))
            held -= set(batch_ids)
    assert sorted(index.ids().tolist()) == sorted(held)
