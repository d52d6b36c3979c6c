"""The Milvus vector store against FAISS flat, through milvus-lite (a local folder) and through a
milvus-lite gRPC server on 127.0.0.1 (the ``milvus://host:port/collection`` path of a cluster)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pip install 'facesearch[milvus]'")
pytest.importorskip("milvus_lite", reason="pip install 'facesearch[milvus]'")

from facesearch.errors import CollectionError  # noqa: E402
from facesearch.milvus_vectors import MilvusTarget, MilvusVectors  # noqa: E402
from facesearch.vectors import VectorIndex  # noqa: E402

D = 32


def unit_set(nb: int, seed: int, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    """``ids (nb,) int64`` (sparse, shuffled) and ``xb (nb, d) float32`` unit vectors."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(10 * nb, nb, replace=False).astype(np.int64)
    xb = rng.standard_normal((nb, d)).astype(np.float32)
    return ids, xb / np.linalg.norm(xb, axis=1, keepdims=True)


def assert_same_results(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]):
    """Equal ids and distances (float rounding of the inner products aside)."""
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=2e-6)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MilvusVectors]:
    with MilvusVectors.open(str(tmp_path / "vectors.milvus.db"), dim=D, model="sface") as mv:
        yield mv


def test_search_equals_faiss_flat_also_restricted(store: MilvusVectors) -> None:
    ids, xb = unit_set(1500, seed=1)
    _, xq = unit_set(40, seed=2)
    store.add(ids, xb)
    flat = VectorIndex.build(ids, xb, "flat")
    assert store.count == 1500
    assert_same_results(store.search(xq, 10), flat.search(xq, 10))
    allowed = ids[::7]
    assert_same_results(
        store.search(xq, 5, restrict_to=allowed), flat.search(xq, 5, restrict_to=allowed)
    )
    D_, I_ = store.search(xq[:2], 2000)  # more than held: padded like FAISS
    assert (I_[:, 1500:] == -1).all() and np.isinf(D_[:, 1500:]).all()
    np.testing.assert_array_equal(store.ids(), np.sort(ids))


def test_restricted_search_over_several_expressions(
    store: MilvusVectors, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facesearch import milvus_vectors

    monkeypatch.setattr(milvus_vectors, "IDS_PER_EXPRESSION", 50)  # 300 ids: 6 expressions
    ids, xb = unit_set(600, seed=3)
    _, xq = unit_set(8, seed=4)
    store.add(ids, xb)
    allowed = ids[:300]
    want = VectorIndex.build(ids, xb, "flat").search(xq, 7, restrict_to=allowed)
    assert_same_results(store.search(xq, 7, restrict_to=allowed), want)
    assert store.remove(allowed[:120]) == 120  # deletes over several expressions too
    assert store.count == 480


def test_a_deleted_face_stays_deleted_after_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "v.db")
    ids, xb = unit_set(200, seed=5)
    with MilvusVectors.open(path, dim=D) as mv:
        mv.add(ids, xb)
        gone = ids[:10]
        assert mv.remove(np.concatenate([gone, [10**9]])) == 10  # unknown ids are not counted
        mv.generation = 7
    with MilvusVectors.open(path, dim=D) as mv:
        assert mv.count == 190 and mv.generation == 7
        _, I_ = mv.search(xb[:10], 5)
        assert not np.isin(I_, gone).any()
        assert not np.isin(mv.ids(), gone).any()
        with pytest.raises(KeyError, match=str(gone[0])):
            mv.vectors(gone[:1])
        np.testing.assert_array_equal(mv.vectors(ids[10:13]), xb[10:13])


def test_adding_again_never_stores_twice(store: MilvusVectors) -> None:
    ids, xb = unit_set(50, seed=6)
    store.add(ids, xb)
    store.add(ids[:20], xb[:20])  # a retried batch
    assert store.count == 50
    _, I_ = store.search(xb[:1], 3)
    assert I_[0, 0] == ids[0] and I_[0, 1] != ids[0]


def test_staleness_is_seen_and_a_dropped_copy_is_rebuilt(tmp_path: Path) -> None:
    path = str(tmp_path / "v.db")
    ids, xb = unit_set(300, seed=7)
    with MilvusVectors.open(path, dim=D, model="sface") as mv:
        assert mv.generation == -1  # never filled
        assert "generation -1" in (mv.mismatch(model="sface", dim=D, generation=0, count=0) or "")
        chunks = [(ids[:100], xb[:100]), (ids[100:], xb[100:])]
        assert mv.rebuild(chunks, generation=4) == 300
        assert mv.mismatch(model="sface", dim=D, generation=4, count=300) is None
        mv.add(ids[:0], xb[:0])
        mv.remove(ids[:1])  # a change whose generation was not written (a writer died)
        assert "with 299 faces" in (
            mv.mismatch(model="sface", dim=D, generation=4, count=300) or ""
        )
        assert "model 'sface'" in (mv.mismatch(model="other", dim=D, generation=4, count=300) or "")
        mv.drop()
    with MilvusVectors.open(path, dim=D, model="sface") as mv:  # created again, empty
        assert (mv.generation, mv.count) == (-1, 0)
        mv.rebuild([(ids, xb)], generation=5)
        assert mv.mismatch(model="sface", dim=D, generation=5, count=300) is None
        flat = VectorIndex.build(ids, xb, "flat")
        assert_same_results(mv.search(xb[:5], 4), flat.search(xb[:5], 4))
    with MilvusVectors.open(path, dim=D) as mv:
        assert mv.generation == 5  # one physical collection left behind the alias
        assert len(mv._client.list_collections()) == 1


def test_a_failed_rebuild_keeps_the_old_copy(store: MilvusVectors) -> None:
    ids, xb = unit_set(100, seed=8)
    store.rebuild([(ids, xb)], generation=1)

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield ids[:50], xb[:50]
        raise RuntimeError("SQL went away")

    with pytest.raises(RuntimeError, match="SQL went away"):
        store.rebuild(chunks(), generation=2)
    assert (store.generation, store.count) == (1, 100)
    assert len(store._client.list_collections()) == 1


def test_bad_input_is_refused(store: MilvusVectors, tmp_path: Path) -> None:
    ids, xb = unit_set(5, seed=9)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        store.add(ids, xb[:, :16])
    with pytest.raises(ValueError, match="unit vectors"):
        store.add(ids, xb * 2)
    with pytest.raises(ValueError, match="unique"):
        store.add(np.zeros(5, np.int64), xb)
    with pytest.raises(ValueError, match="k must be >= 1"):
        store.search(xb, 0)
    store.add(ids, xb)
    store.close()
    with pytest.raises(CollectionError, match="dim 32, not 64"):
        MilvusVectors.open(store.target, dim=64)
    with pytest.raises(CollectionError, match="no Milvus collection 'other'"):
        MilvusVectors.open(
            MilvusTarget.parse(store.target.uri, collection="other"), dim=D, create=False
        )


@pytest.mark.parametrize(
    ("spec", "uri", "collection"),
    [
        ("milvus://10.1.2.3:19530/people", "http://10.1.2.3:19530", "people"),
        ("milvus://db.example:19530", "http://db.example:19530", "faces"),
        ("milvus+https://db.example:443/x_1/", "https://db.example:443", "x_1"),
        ("milvus://[::1]:19530/faces", "http://[::1]:19530", "faces"),
    ],
)
def test_cluster_targets(spec: str, uri: str, collection: str) -> None:
    t = MilvusTarget.parse(spec)
    assert (t.uri, t.collection, t.lite) == (uri, collection, False)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("http://h:1/c", "scheme 'http' is not milvus://"),
        ("milvus://h/c", "needs a host and a port"),
        ("milvus://h:port/c", "Port could not be cast"),
        ("milvus://u:secret@h:1/c", r"\*\*\*@h:1/c: give credentials in MILVUS_TOKEN"),
        ("milvus://h:1/9faces", "collection name '9faces'"),
        ("milvus://h:1/a__b", "no '__'"),
        ("", "empty Milvus target"),
    ],
)
def test_bad_targets_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(CollectionError, match=message) as err:
        MilvusTarget.parse(spec)
    assert "secret" not in str(err.value)


def test_a_lite_target_must_not_be_a_file(tmp_path: Path) -> None:
    (tmp_path / "f.db").write_text("x")
    with pytest.raises(CollectionError, match="is a file"):
        MilvusTarget.parse(str(tmp_path / "f.db"))
    assert MilvusTarget.parse(str(tmp_path / "new.db")).lite


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A milvus-lite gRPC server on 127.0.0.1: the same protocol as a Milvus cluster."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data_dir = tmp_path_factory.mktemp("milvus-server")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "milvus_lite",
            "server",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"milvus-lite server did not start (exit {proc.poll()})")
                time.sleep(0.2)
        yield f"milvus://127.0.0.1:{port}/faces"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_server_target_behaves_like_the_lite_folder(milvus_server: str) -> None:
    ids, xb = unit_set(400, seed=10)
    with MilvusVectors.open(milvus_server, dim=D, model="sface") as mv:
        mv.rebuild([(ids, xb)], generation=3)
        assert mv.remove(ids[:5]) == 5
        mv.generation = 4
        flat = VectorIndex.build(ids[5:], xb[5:], "flat")
        assert_same_results(mv.search(xb[:20], 6), flat.search(xb[:20], 6))
    with MilvusVectors.open(milvus_server, dim=D) as mv:
        assert mv.mismatch(model="sface", dim=D, generation=4, count=395) is None


def test_a_copy_of_another_owner_or_of_no_facesearch_is_refused(tmp_path: Path) -> None:
    import pymilvus

    path = tmp_path / "v.db"
    MilvusVectors.open(path, dim=D, owner="collection-a").close()
    with pytest.raises(CollectionError, match="another facesearch collection"):
        MilvusVectors.open(path, owner="collection-b")
    MilvusVectors.open(path, owner="collection-a").close()
    client = pymilvus.MilvusClient(uri=str(path))  # someone's own collection, named "theirs"
    client.create_collection("theirs", dimension=D)
    client.close()
    theirs = MilvusTarget.parse(str(path), collection="theirs")
    for _ in range(2):  # neither opening nor creating touches it
        with pytest.raises(CollectionError, match="'theirs' is not a facesearch copy"):
            MilvusVectors.open(theirs, dim=D, create=True)
    with MilvusVectors.open(path) as mv:
        assert "theirs" in mv._client.list_collections()
