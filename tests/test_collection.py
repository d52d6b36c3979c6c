"""Collections: SQL and FAISS agree after every change, stale indexes are rebuilt, one writer."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dbhelpers import DIM, collection_db, make_photo, pg_schema_url, unit_vectors  # noqa: F401

from facesearch import store as st
from facesearch import vectors
from facesearch.collection import INDEX_NAME, Collection
from facesearch.errors import CollectionError
from facesearch.vectors import VectorIndex


@pytest.fixture
def col(tmp_path: Path, collection_db: str | None) -> Iterator[Collection]:  # noqa: F811
    c = Collection.open(tmp_path, "c1", db_url=collection_db, create=True)
    yield c
    c.close()


def reopen(c: Collection) -> Collection:
    url = None if c.store.dialect == "sqlite" else c.store.url.render_as_string(False)
    return Collection.open(c.folder.parent, c.name, db_url=url)


def sql_ids(c: Collection) -> np.ndarray:
    with c.session() as s:
        return st.face_ids(s)


def assert_agree(c: Collection) -> None:
    """In-memory index, index file and SQL hold the same face ids (and the file is current)."""
    np.testing.assert_array_equal(np.sort(c.vectors.ids()), sql_ids(c))
    report = c.check()
    assert report["consistent"], report
    assert report["index_status"] == "current"
    with reopen(c) as other:
        np.testing.assert_array_equal(np.sort(other.vectors.ids()), sql_ids(c))
        assert other.vectors.mmapped  # loaded from the file, no rebuild


def fill(c: Collection, n_photos: int = 12, seed: int = 0) -> list[st.AddedPhoto]:
    rng = np.random.default_rng(seed)
    photos = [
        make_photo(
            rng,
            f"/photos/{'Ada' if i % 2 else 'Bob'}/{seed}_{i}.jpg",
            1 + i % 3,
            labels=("Ada" if i % 2 else "Bob",) + (None,) * (i % 3),
        )
        for i in range(n_photos)
    ]
    return c.add_photos(photos)


def test_missing_collection_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(CollectionError, match=r"no collection 'holiday'.*facesearch index PATH"):
        Collection.open(tmp_path, "holiday")
    with pytest.raises(CollectionError, match="invalid collection name"):
        Collection.open(tmp_path, "../x", create=True)
    with Collection.open(tmp_path, "holiday", create=True) as c:
        assert (c.folder / "collection.json").is_file() and (c.folder / "faces.db").is_file()
        with pytest.raises(CollectionError, match="has no faces yet.*facesearch index"):
            _ = c.vectors
    Collection.open(tmp_path, "holiday").close()
    with pytest.raises(CollectionError, match="not created with --db"):
        Collection.open(tmp_path, "holiday", db_url="sqlite:///elsewhere.db")


def test_postgres_collection_remembers_its_database(
    tmp_path: Path,
    pg_schema_url: str,  # noqa: F811
) -> None:
    Collection.open(tmp_path, "pg", db_url=pg_schema_url, create=True).close()
    with Collection.open(tmp_path, "pg") as c:  # the URL comes from collection.json
        assert c.store.dialect == "postgresql"
        fill(c, 4)
        info = c.info()
        assert info["database_bytes"] > 0 and info["consistency"]["consistent"]
    assert not (tmp_path / "pg" / "faces.db").exists()
    with pytest.raises(CollectionError, match="uses the database"):
        Collection.open(tmp_path, "pg", db_url=pg_schema_url + "x")


def test_add_and_search(col: Collection) -> None:
    added = fill(col)
    assert col.active_model is not None and col.active_model.name == "sface"
    assert_agree(col)
    with col.session() as s:
        ids, xb = st.load_all_embeddings(s)
    matches = col.search(xb[:5], k=3)
    assert [m[0].face_id for m in matches] == ids[:5].tolist()
    assert all(m[0].distance == pytest.approx(0.0, abs=1e-5) for m in matches)
    assert matches[0][0].photo == "/photos/Bob/0_0.jpg" and matches[0][0].person == "Bob"
    labelled = col.search(xb, k=4, labelled_only=True)
    with col.session() as s:
        persons = {r.face_id: r.person for r in st.faces_by_ids(s, ids).values()}
    assert all(persons[m.face_id] is not None for row in labelled for m in row)
    assert sum(len(a.face_ids) for a in added) == len(ids)


def test_agreement_after_every_kind_of_change(col: Collection) -> None:
    added = fill(col, 12, seed=1)
    rng = np.random.default_rng(2)
    # replace a changed photo
    col.add_photo(make_photo(rng, "/photos/Bob/1_0.jpg", 2), replace=True)
    assert_agree(col)
    # remove photos
    removed = col.remove_photos([added[1].photo_id, added[2].photo_id])
    assert len(removed) == len(added[1].face_ids) + len(added[2].face_ids)
    assert_agree(col)
    # remove faces
    col.remove_faces(added[5].face_ids[:1])
    assert_agree(col)
    # people changes that do not touch faces
    col.rename_person("Ada", "Ada Lovelace")
    col.assign(added[4].face_ids, "Cy")
    col.merge_people("Cy", "Bob")
    col.unassign(added[4].face_ids[:1])
    col.move_photo(added[3].photo_id, "/moved/3.jpg")
    assert_agree(col)
    # delete a person, keeping and then deleting faces
    before = len(sql_ids(col))
    assert len(col.delete_person("Bob")) == 0 and len(sql_ids(col)) == before
    assert_agree(col)
    col.assign(added[6].face_ids, "Dee")
    gone = col.delete_person("Dee", faces=True)
    np.testing.assert_array_equal(gone, sorted(added[6].face_ids))
    assert_agree(col)
    # re-embedding with a compatible model
    col.register_model("sface-v2", DIM, compatible_with="sface")
    ids = np.array(added[7].face_ids, dtype=np.int64)
    new = unit_vectors(rng, len(ids))
    col.update_embeddings(ids, new, "sface-v2")
    assert_agree(col)
    D, I = col.vectors.search(new, 1)  # noqa: E741
    np.testing.assert_array_equal(I[:, 0], ids)
    # a batch under one lock: saved once at the end
    with col.lock():
        fill(col, 3, seed=3)
        col.remove_photos([added[8].photo_id])
    assert_agree(col)
    info = col.info()
    assert info["faces"] == len(sql_ids(col)) and info["consistency"]["consistent"]


def test_crash_between_sql_and_index_is_detected_and_rebuilt(
    col: Collection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fill(col, 6)
    rng = np.random.default_rng(5)

    def crash(self: VectorIndex, path: object) -> None:
        raise KeyboardInterrupt  # the process dies after the SQL commit

    monkeypatch.setattr(VectorIndex, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        col.add_photo(make_photo(rng, "/late.jpg", 2))
    monkeypatch.undo()
    report = col.check()
    assert report["index_status"] == "stale" and report["missing_from_index"] == 2
    with caplog.at_level(logging.WARNING, logger="facesearch.collection"), reopen(col) as c:
        assert len(c.vectors) == len(sql_ids(c))
        assert not c.vectors_stale
    assert "rebuilding it from SQL" in caplog.text and "generation" in caplog.text
    assert col.check()["consistent"]  # the reader saved the rebuilt index


def test_missing_or_corrupt_index_is_rebuilt(
    col: Collection, caplog: pytest.LogCaptureFixture
) -> None:
    fill(col, 5)
    n = len(sql_ids(col))
    path = col.folder / INDEX_NAME
    path.unlink()
    with caplog.at_level(logging.INFO, logger="facesearch.collection"), reopen(col) as c:
        assert len(c.vectors) == n
    assert "it is missing" in caplog.text
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="facesearch.collection"), reopen(col) as c:
        assert len(c.vectors) == n
    assert "corrupt or unreadable" in caplog.text
    assert col.check()["consistent"]


def test_a_wrong_recorded_face_count_is_repaired(
    col: Collection, caplog: pytest.LogCaptureFixture
) -> None:
    fill(col, 5)
    n = len(sql_ids(col))
    with col.session() as s:
        st.set_meta(s, st.FACE_COUNT_KEY, str(n + 3))
    with caplog.at_level(logging.WARNING, logger="facesearch.collection"), reopen(col) as c:
        assert len(c.vectors) == n
    assert "recounted" in caplog.text
    with col.session() as s:
        assert st.recorded_face_count(s) == n
    assert col.check()["consistent"]


def test_opening_a_current_collection_does_not_read_embeddings(
    col: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(col, 5)

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("embeddings read from SQL although the index is current")

    monkeypatch.setattr(st, "load_embeddings", forbidden)
    monkeypatch.setattr(st, "load_all_embeddings", forbidden)
    with reopen(col) as c:
        assert c.vectors.mmapped and len(c.vectors) == len(sql_ids(c))
        assert len(c.search(unit_vectors(np.random.default_rng(0), 2), k=3)[0]) == 3


def test_index_type_switch_and_models(col: Collection) -> None:
    fill(col, 30)
    vi = col.set_index_type("ivf")
    assert vi is not None and vi.kind == "ivf" and col.index_type == "ivf"
    assert_agree(col)
    fill(col, 4, seed=9)  # incremental adds into IVF
    assert_agree(col)
    with reopen(col) as c:
        assert c.vectors.kind == "ivf"
    col.set_index_type("flat")
    assert col.vectors.kind == "flat"
    assert_agree(col)
    # A compatible model keeps the index; an incompatible one switches the space.
    col.register_model("sface-v2", DIM, compatible_with="sface", activate=True)
    assert col.vectors.model == "sface" and len(col.vectors) == len(sql_ids(col))
    col.register_model("other", 8, activate=True)
    assert col.vectors.model == "other" and col.vectors.dim == 8 and len(col.vectors) == 0
    col.add_photo(make_photo(np.random.default_rng(1), "/o.jpg", 2, dim=8, model="other"))
    assert len(col.vectors) == 2
    info = col.info()
    assert info["active_model"] == "other"
    assert {m["name"]: m["faces"] for m in info["models"]}["other"] == 2
    assert info["consistency"]["consistent"]
    with pytest.raises(CollectionError, match="unknown index type 'hnsw'"):
        col.set_index_type("hnsw")


def test_info(col: Collection) -> None:
    fill(col, 6)
    with col.lock():
        col.add_photos([st.NewPhoto("/broken.jpg", "h", 1, 1.0, error="not an image")])
    info = col.info()
    assert (info["photos"], info["failed_photos"], info["people"]) == (7, 1, 2)
    assert info["labelled_faces"] == 6 and info["faces"] == 12
    assert info["index"]["type"] == "flat" and info["index"]["faces"] == 12
    assert info["size_on_disk"] > info["index"]["bytes"] > 0
    assert info["consistency"] == {
        "consistent": True,
        "index_status": "current",
        "sql_faces": 12,
        "index_faces": 12,
        "missing_from_index": 0,
        "extra_in_index": 0,
        "reason": None,
    }


# -- the writer lock ---------------------------------------------------------------------------

# Another process taking the writer lock the way WriterLock does (flock + pid), kept free of
# heavy imports so that it starts fast.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from facesearch.collection import Collection
    col = Collection.open(sys.argv[1], sys.argv[2], db_url=sys.argv[3] or None)
    with col.lock():
        print("locked", flush=True)
        time.sleep(float(sys.argv[4]))
    """
)


def hold_lock(col: Collection, seconds: float) -> subprocess.Popen[str]:
    """Another process holding ``col``'s writer lock (a file, or PostgreSQL's advisory lock)."""
    db = (
        col.store.url.render_as_string(hide_password=False) if col.store.dialect != "sqlite" else ""
    )
    args = [str(col.folder.parent), col.name, db, str(seconds)]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_refuses_with_the_holders_pid(col: Collection) -> None:
    fill(col, 3)
    proc = hold_lock(col, 30)
    try:
        holder = rf"(facesearch writer )?pid {proc.pid}"
        if col.store.engine.dialect.name == "postgresql":
            # pg_stat_activity, where the holder is looked up, is a snapshot that can miss it
            holder = rf"({holder}|another process)"
        t0 = time.monotonic()
        with (
            pytest.raises(CollectionError, match=rf"collection 'c1' is being written by {holder}"),
            col.lock(timeout=0.3),
        ):
            pass
        assert time.monotonic() - t0 >= 0.3
        col.lock_timeout = 0.0
        with pytest.raises(CollectionError, match="being written"):
            col.rename_person("Ada", "Ada L")
        # readers never block: open, load, search while the writer holds the lock
        with reopen(col) as reader:
            assert len(reader.search(unit_vectors(np.random.default_rng(0), 1), k=2)[0]) == 2
    finally:
        proc.kill()
        proc.wait()
    # The kernel (SQLite) or the server (PostgreSQL, once it sees the connection drop)
    # releases the killed holder's lock: a writer that waits a little gets it.
    col.lock_timeout = 10.0
    col.rename_person("Ada", "Ada L")


def test_second_writer_waits_for_the_first(col: Collection) -> None:
    fill(col, 3)
    proc = hold_lock(col, 0.5)
    try:
        with col.lock(timeout=20):
            fill(col, 2, seed=4)
    finally:
        proc.wait()
    assert_agree(col)


def test_reader_uses_the_stale_index_while_a_writer_works(col: Collection) -> None:
    added = fill(col, 4)
    n_before = len(sql_ids(col))
    proc = hold_lock(col, 30)
    try:
        # what a writer has committed but not yet saved to the index file
        with col.session() as s:
            st.add_photo(s, make_photo(np.random.default_rng(8), "/new.jpg", 2))
            st.delete_photos(s, [added[0].photo_id])
        with reopen(col) as reader:
            assert len(reader.vectors) == n_before and reader.vectors_stale
            with reader.session() as s:
                ids, xb = st.load_all_embeddings(s)
            gone = set(added[0].face_ids)
            hits = [m.face_id for row in reader.search(xb, k=5) for m in row]
            assert hits and not gone & set(hits)  # deleted faces are dropped from results
    finally:
        proc.kill()
        proc.wait()
    with reopen(col) as reader:  # no writer any more: rebuilt and saved
        assert not reader.vectors_stale and len(reader.vectors) == len(sql_ids(col))
    assert col.check()["consistent"]


def test_pq_collection_survives_adds_removals_and_reopening(
    col: Collection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(vectors, "PQ_MIN_TRAIN", 40)  # an accelerator from 40 faces
    added = fill(col, 30)
    vi = col.set_index_type("pq")
    assert vi is not None and vi.kind == "pq" and vi.accelerated and col.index_type == "pq"
    sidecar = vectors.sidecar_path(col.folder / INDEX_NAME)
    assert sidecar.is_file()
    assert_agree(col)
    fill(col, 6, seed=4)  # adds into the accelerator
    col.remove_photos([added[1].photo_id, added[4].photo_id])
    col.remove_faces(added[7].face_ids[:1])
    assert_agree(col)
    with col.session() as s:
        ids, xb = st.load_all_embeddings(s)
    with reopen(col) as c:
        assert c.vectors.kind == "pq" and c.vectors.accelerated and c.vectors.mmapped
        matches = c.search(xb, k=1)
        assert [m[0].face_id for m in matches] == ids.tolist()
        assert c.info(check=False)["index"]["bytes"] == (
            (col.folder / INDEX_NAME).stat().st_size + sidecar.stat().st_size
        )
    # a lost accelerator: readers search exactly, the next writer rebuilds it
    sidecar.unlink()
    with caplog.at_level(logging.WARNING, logger="facesearch.vectors"), reopen(col) as c:
        assert not c.vectors.accelerated and len(c.vectors) == len(ids)
        assert [m[0].face_id for m in c.search(xb[:5], k=1)] == ids[:5].tolist()
    assert "it is missing" in caplog.text
    with col.lock():  # a writer that only opens the index rebuilds it
        assert not col.vectors.accelerated
    assert sidecar.is_file()
    col.remove_faces(added[9].face_ids[:1])
    assert sidecar.is_file()
    with reopen(col) as c:
        assert c.vectors.accelerated
    assert_agree(col)


def test_auto_switches_between_flat_and_pq_in_place(
    col: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    import facesearch.collection as collection_module

    monkeypatch.setattr(vectors, "PQ_MIN_TRAIN", 40)
    monkeypatch.setattr(vectors, "AUTO_APPROX_ABOVE", 50)
    monkeypatch.setattr(collection_module, "AUTO_APPROX_ABOVE", 50)
    added = fill(col, 20)  # 39 faces: flat
    assert col.vectors.kind == "flat"

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("embeddings read from SQL for a flat <-> pq switch")

    monkeypatch.setattr(st, "load_embeddings", forbidden)
    monkeypatch.setattr(st, "load_all_embeddings", forbidden)
    fill(col, 10, seed=5)  # 58 faces: pq, trained on the vectors held
    assert col.vectors.kind == "pq" and col.vectors.accelerated
    col.remove_photos([a.photo_id for a in added[:6]])  # 46 faces: hysteresis keeps pq
    assert col.vectors.kind == "pq"
    col.remove_photos([a.photo_id for a in added[6:18]])  # 22 faces, below 25: flat again
    assert col.vectors.kind == "flat"
    assert not vectors.sidecar_path(col.folder / INDEX_NAME).exists()
    monkeypatch.undo()
    assert_agree(col)
