"""The SQL store on SQLite and PostgreSQL: transactions, cascades, people, embeddings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import sqlalchemy as sa
from dbhelpers import DIM, db_url, make_photo, pg_schema_url, unit_vectors  # noqa: F401

from facesearch import store as st
from facesearch.errors import CollectionError, IncompatibleModelError, ModelError
from facesearch.store import LabelSource, PhotoStatus


@pytest.fixture
def store(db_url: str) -> Iterator[st.Store]:  # noqa: F811
    s = st.Store.open(db_url, create=True)
    with s.session() as session:
        st.register_model(session, "sface", DIM)
    yield s
    s.close()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_open_refuses_an_empty_database_unless_creating(db_url: str) -> None:  # noqa: F811
    with pytest.raises(CollectionError, match="no facesearch tables"):
        st.Store.open(db_url)
    s = st.Store.open(db_url, create=True)
    assert st.schema_revision(s.engine) == st.SCHEMA_HEAD
    s.close()
    st.Store.open(db_url).close()  # now it opens without create


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path) -> None:
    s = st.Store.open(f"sqlite:///{tmp_path / 'x.db'}", create=True)
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    s.close()


def test_add_photo_with_faces_in_one_transaction(store: st.Store, rng) -> None:
    photo = make_photo(rng, "/p/ada/1.jpg", 2, labels=("Ada", None))
    with store.session() as s:
        g0 = st.get_generation(s)
        added = st.add_photo(s, photo)
    assert len(added.face_ids) == 2 and added.replaced_face_ids == ()
    with store.session() as s:
        assert st.get_generation(s) == g0 + 1
        recs = st.faces_by_ids(s, [*added.face_ids, 999_999, -1])
        stat = st.photo_by_path(s, "/p/ada/1.jpg")
    assert set(recs) == set(added.face_ids)
    first, second = (recs[i] for i in added.face_ids)
    det = photo.faces[0].detection
    assert first.photo == "/p/ada/1.jpg" and first.box == pytest.approx(det.box)
    assert first.landmarks == pytest.approx([c for pt in det.landmarks for c in pt])
    assert first.score == pytest.approx(det.score) and first.model == "sface"
    assert (first.person, first.source) == ("Ada", LabelSource.FOLDER)
    assert (second.person, second.source) == (None, None)
    assert stat is not None and stat.status is PhotoStatus.OK
    assert (stat.size, stat.mtime, stat.content_hash) == (
        photo.size,
        photo.mtime,
        photo.content_hash,
    )


def test_a_failing_photo_leaves_nothing_behind(store: st.Store, rng) -> None:
    good = make_photo(rng, "/p/a.jpg", 1)
    bad = make_photo(rng, "/p/b.jpg", 2, dim=DIM + 1)  # second photo has the wrong dim
    with pytest.raises(ModelError, match="17 values, the model has dim 16"), store.session() as s:
        st.add_photo(s, good)
        st.add_photo(s, bad)
    with store.session() as s:
        assert st.counts(s).photos == 0 and st.face_count(s) == 0
        assert st.get_generation(s) == 0


def test_statuses_and_refusals(store: st.Store, rng) -> None:
    with store.session() as s:
        st.add_photo(s, st.NewPhoto("/p/none.jpg", "h1", 10, 1.0))
        st.add_photo(s, st.NewPhoto("/p/bad.jpg", "h2", 10, 1.0, error="truncated JPEG"))
        assert st.get_generation(s) == 0  # no faces changed
        with pytest.raises(CollectionError, match="already in the collection"):
            st.add_photo(s, st.NewPhoto("/p/none.jpg", "h1", 10, 1.0))
    with store.session() as s:
        assert st.photo_by_path(s, "/p/none.jpg").status is PhotoStatus.NO_FACE  # type: ignore[union-attr]
        failed = st.failed_photos(s)
        assert [(p.path, p.error) for p in failed] == [("/p/bad.jpg", "truncated JPEG")]
        c = st.counts(s)
        assert (c.photos, c.failed_photos, c.no_face_photos) == (2, 1, 1)
    not_unit = make_photo(rng, "/p/x.jpg", 1)
    face = replace(not_unit.faces[0], embedding=not_unit.faces[0].embedding * 3)
    with pytest.raises(ValueError, match="unit vector, its norm is 3.0"), store.session() as s:
        st.add_photo(s, replace(not_unit, faces=(face,)))
    with pytest.raises(ModelError, match="'other' is not registered"), store.session() as s:
        st.add_photo(s, make_photo(rng, "/p/y.jpg", 1, model="other"))


def test_find_by_hash_move_and_touch(store: st.Store, rng) -> None:
    with store.session() as s:
        a = st.add_photo(s, make_photo(rng, "/old/a.jpg", 1, labels=("Ada",), content_hash="aa"))
        st.add_photo(s, make_photo(rng, "/old/b.jpg", 1, content_hash="bb"))
        g = st.get_generation(s)
    with store.session() as s:
        (found,) = st.photos_by_hash(s, "aa")
        st.move_photo(s, found.id, "/new/a.jpg", mtime=5.0)
        st.touch_photo(s, found.id, size=123, mtime=6.0)
        with pytest.raises(CollectionError, match="already stored"):
            st.move_photo(s, found.id, "/old/b.jpg")
    with store.session() as s:
        assert st.photo_by_path(s, "/old/a.jpg") is None
        moved = st.photo_by_path(s, "/new/a.jpg")
        assert moved is not None and (moved.id, moved.size, moved.mtime) == (found.id, 123, 6.0)
        rec = st.faces_by_ids(s, a.face_ids)[a.face_ids[0]]
        assert (rec.photo, rec.person) == ("/new/a.jpg", "Ada")  # faces and labels kept
        assert st.get_generation(s) == g  # no face changed
        assert set(st.photo_stats(s)) == {"/new/a.jpg", "/old/b.jpg"}
        assert set(st.photo_stats(s, ["/old/b.jpg", "/nope"])) == {"/old/b.jpg"}


def test_delete_photos_cascades_to_faces_and_assignments(store: st.Store, rng) -> None:
    with store.session() as s:
        a = st.add_photo(s, make_photo(rng, "/a.jpg", 3, labels=("Ada", "Bob", None)))
        b = st.add_photo(s, make_photo(rng, "/b.jpg", 1, labels=("Ada",)))
        g = st.get_generation(s)
    with store.session() as s:
        removed = st.delete_photos(s, [a.photo_id])
    np.testing.assert_array_equal(removed, sorted(a.face_ids))
    with store.session() as s:
        assert st.get_generation(s) == g + 1
        assert st.face_ids(s).tolist() == list(b.face_ids)
        assert st.faces_by_ids(s, a.face_ids) == {}
        assert st.counts(s).labelled_faces == 1
        assert {p.name: p.faces for p in st.people(s)} == {"Ada": 1, "Bob": 0}
        assert len(st.delete_photos(s, [a.photo_id])) == 0  # gone already: nothing, no bump
        assert st.get_generation(s) == g + 1


def test_replace_a_changed_photo(store: st.Store, rng) -> None:
    with store.session() as s:
        first = st.add_photo(s, make_photo(rng, "/a.jpg", 2))
        second = st.add_photo(s, make_photo(rng, "/a.jpg", 1), replace=True)
    assert sorted(second.replaced_face_ids) == sorted(first.face_ids)
    with store.session() as s:
        assert st.face_ids(s).tolist() == list(second.face_ids)
        assert st.counts(s).photos == 1


def test_assign_unassign_and_replace_rules(store: st.Store, rng) -> None:
    with store.session() as s:
        ids = st.add_photo(s, make_photo(rng, "/a.jpg", 3)).face_ids
        assert st.assign(s, ids[:2], "Ada", LabelSource.MANUAL) == 2
        assert st.assign(s, ids, "Bob", LabelSource.PROPAGATED, replace=False) == 1
        with pytest.raises(CollectionError, match=r"no faces with ids \[424242\]"):
            st.assign(s, [424242], "Ada", LabelSource.MANUAL)
        with pytest.raises(CollectionError, match="must not start or end with spaces"):
            st.assign(s, ids[:1], " Ada", LabelSource.MANUAL)
    with store.session() as s:
        recs = st.faces_by_ids(s, ids)
        assert [recs[i].person for i in ids] == ["Ada", "Ada", "Bob"]
        assert recs[ids[2]].source is LabelSource.PROPAGATED
        assert st.assign(s, ids[1:2], "Bob", LabelSource.CLUSTER) == 1  # replace=True moves it
        assert st.unassign(s, ids[:1]) == 1 and st.unassign(s, ids[:1]) == 0
        np.testing.assert_array_equal(st.labelled_face_ids(s), sorted(ids[1:]))
        assert [(p.name, p.faces, p.photos) for p in st.people(s)] == [
            ("Ada", 0, 0),
            ("Bob", 2, 1),
        ]


def test_rename_merge_delete_people(store: st.Store, rng) -> None:
    with store.session() as s:
        a = st.add_photo(s, make_photo(rng, "/a.jpg", 2, labels=("Ada", "Bob"))).face_ids
        b = st.add_photo(s, make_photo(rng, "/b.jpg", 1, labels=("Cy",))).face_ids
        cluster = st.create_cluster(s, person_id=st.get_person(s, "Bob").id, manual=True)  # type: ignore[union-attr]
        st.set_cluster(s, a[1:], cluster)
    with store.session() as s:
        with pytest.raises(CollectionError, match="'Bob' exists; merge them instead"):
            st.rename_person(s, "Ada", "Bob")
        st.rename_person(s, "Ada", "Ada Lovelace")
        assert st.merge_people(s, "Bob", "Ada Lovelace") == 1
        with pytest.raises(CollectionError, match="no person named 'Bob'"):
            st.merge_people(s, "Bob", "Cy")
    with store.session() as s:
        assert [p.name for p in st.people(s)] == ["Ada Lovelace", "Cy"]
        np.testing.assert_array_equal(st.person_face_ids(s, "Ada Lovelace"), sorted(a))
        assert st.faces_by_ids(s, a[1:])[a[1]].cluster_id == cluster
        g = st.get_generation(s)
        assert len(st.delete_person(s, "Ada Lovelace")) == 0  # faces stay, unlabelled
        assert st.get_generation(s) == g and st.face_count(s) == 3
        removed = st.delete_person(s, "Cy", faces=True)
        np.testing.assert_array_equal(removed, b)
        assert st.get_generation(s) == g + 1 and st.face_count(s) == 2
        assert st.counts(s).people == 0 and st.counts(s).photos == 2  # photos stay


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_load_embeddings_in_chunks_equals_all(store: st.Store, chunk_size: int) -> None:
    rng = np.random.default_rng(chunk_size)
    with store.session() as s:
        st.register_model(s, "v2", DIM, compatible_with="sface")
        photos = [
            make_photo(
                rng, f"/{i}.jpg", int(rng.integers(0, 4)), model="v2" if i % 4 == 0 else "sface"
            )
            for i in range(40)
        ]
        added = [st.add_photo(s, p) for p in photos]
        st.assign(s, added[1].face_ids + added[2].face_ids, "Ada", LabelSource.MANUAL)
    expected = {
        fid: f.embedding
        for p, a in zip(photos, added, strict=True)
        for f, fid in zip(p.faces, a.face_ids, strict=True)
    }
    with store.session() as s:
        chunks = list(st.load_embeddings(s, chunk_size=chunk_size))
        ids, xb = st.load_all_embeddings(s)
        only_v2 = st.load_all_embeddings(s, models=["v2"])[0]
        labelled = st.load_all_embeddings(s, labelled=True)[0]
        unlabelled = st.load_all_embeddings(s, labelled=False)[0]
        none = st.load_all_embeddings(s, models=["nothing"], dim=DIM)
    assert all(len(c[0]) <= chunk_size for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), ids)
    assert ids.dtype == np.int64 and xb.dtype == np.float32 and xb.shape == (len(expected), DIM)
    assert ids.tolist() == sorted(expected)
    np.testing.assert_array_equal(xb, np.stack([expected[i] for i in ids]))  # bit-exact
    v2_ids = sorted(
        fid
        for p, a in zip(photos, added, strict=True)
        if p.faces[:1] and p.faces[0].model == "v2"
        for fid in a.face_ids
    )
    assert only_v2.tolist() == v2_ids
    assert labelled.tolist() == sorted(added[1].face_ids + added[2].face_ids)
    assert sorted(labelled.tolist() + unlabelled.tolist()) == ids.tolist()
    assert none[0].shape == (0,) and none[1].shape == (0, DIM)
    with store.session() as s:
        arrays = st.face_arrays(s)
    np.testing.assert_array_equal(arrays.face_ids, ids)
    assert (arrays.person_ids >= 0).sum() == len(labelled) and (arrays.cluster_ids == -1).all()


def test_update_embeddings(store: st.Store, rng) -> None:
    with store.session() as s:
        st.register_model(s, "v2", DIM, compatible_with="sface")
        ids = st.add_photo(s, make_photo(rng, "/a.jpg", 3)).face_ids
        g = st.get_generation(s)
        new = unit_vectors(rng, 2)
        assert st.update_embeddings(s, ids[:2], new, "v2") == 2
        with pytest.raises(ValueError, match=r"shape \(1, 16\)"):
            st.update_embeddings(s, ids[:1], new, "v2")
    with store.session() as s:
        got_ids, xb = st.load_all_embeddings(s, models=["v2"])
        assert got_ids.tolist() == list(ids[:2]) and st.get_generation(s) == g + 1
        np.testing.assert_array_equal(xb, new)


def test_models_register_and_spaces(store: st.Store) -> None:
    with store.session() as s:
        assert st.register_model(s, "sface", DIM, file_hash="ab" * 32).file_hash == "ab" * 32
        with pytest.raises(ModelError, match="registered with dim 16, not 32"):
            st.register_model(s, "sface", 32)
        with pytest.raises(ModelError, match="a different model file"):
            st.register_model(s, "sface", DIM, file_hash="cd" * 32)
        with pytest.raises(IncompatibleModelError, match="dim 32.*dim 16"):
            st.register_model(s, "big", 32, compatible_with="sface")
        with pytest.raises(ModelError, match="'ghost', which is not registered"):
            st.register_model(s, "x", DIM, compatible_with="ghost")
        st.register_model(s, "v2", DIM, compatible_with="sface")
        st.register_model(s, "v3", DIM, compatible_with="v2")
        st.register_model(s, "other", 8)
        assert st.model_root(s, "v3") == "sface"
        assert st.model_space(s, "v2") == ("sface", ["sface", "v2", "v3"])
        assert st.model_space(s, "other") == ("other", ["other"])
        assert [m.name for m in st.list_models(s)] == ["other", "sface", "v2", "v3"]


def test_generation_is_bumped_once_per_face_change(store: st.Store, rng) -> None:
    with store.session() as s:
        ids = st.add_photo(s, make_photo(rng, "/a.jpg", 2)).face_ids
        assert st.get_generation(s) == 1
        st.assign(s, ids, "Ada", LabelSource.MANUAL)
        st.set_meta(s, "note", "x")
        assert st.get_generation(s) == 1  # labels are not faces
        st.delete_faces(s, ids[:1])
        assert st.get_generation(s) == 2
        assert st.bump_generation(s) == 3
        assert st.get_meta(s, "note") == "x" and st.get_meta(s, "nope", "d") == "d"


def test_postgres_url_without_driver_means_psycopg() -> None:
    url = st.normalize_url("postgresql://u:p@localhost:5432/db")
    assert url.drivername == "postgresql+psycopg"
    assert st.normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_concurrent_reader_sees_a_snapshot(store: st.Store, rng) -> None:
    with store.session() as s:
        st.add_photo(s, make_photo(rng, "/a.jpg", 2))
    with store.session(snapshot=True) as reader:
        before = st.face_count(reader)
        with store.session() as writer:
            st.add_photo(writer, make_photo(rng, "/b.jpg", 3))
        assert st.face_count(reader) == before  # same snapshot for the whole read
        assert len(st.load_all_embeddings(reader)[0]) == before
    with store.session() as s:
        assert st.face_count(s) == before + 3


def test_tables_are_the_documented_ones(store: st.Store) -> None:
    names = set(sa.inspect(store.engine).get_table_names())
    assert names == {
        "photos",
        "faces",
        "people",
        "assignments",
        "clusters",
        "rejections",
        "models",
        "meta",
        "alembic_version",
    }


def test_add_photos_in_bulk(store: st.Store, rng) -> None:
    photos = [
        make_photo(rng, f"/bulk/{i}.jpg", i % 3, labels=(("Ada", "Bob") * 2)[: i % 3])
        for i in range(50)
    ]
    with store.session() as s:
        added = st.add_photos(s, photos)
        assert st.get_generation(s) == 1  # one bump for the batch
        with pytest.raises(CollectionError, match="given twice"):
            st.add_photos(s, [photos[0], photos[0]])
    assert [len(a.face_ids) for a in added] == [len(p.faces) for p in photos]
    all_ids = [i for a in added for i in a.face_ids]
    assert len(set(all_ids)) == len(all_ids)
    with store.session() as s:
        recs = st.faces_by_ids(s, all_ids)
        for photo, a in zip(photos, added, strict=True):
            for face, label, fid in zip(photo.faces, photo.labels, a.face_ids, strict=True):
                assert recs[fid].photo == photo.path and recs[fid].person == label
                assert recs[fid].box == pytest.approx(face.detection.box)
        assert st.recorded_face_count(s) == st.face_count(s) == len(all_ids)
        again = st.add_photos(s, [make_photo(rng, "/bulk/1.jpg", 1), photos[2]], replace=True)
        assert again[0].replaced_face_ids == added[1].face_ids
        assert again[1].replaced_face_ids == added[2].face_ids
        assert st.recorded_face_count(s) == st.face_count(s)


def test_recorded_face_count_follows_every_change(store: st.Store, rng) -> None:
    with store.session() as s:
        a = st.add_photo(s, make_photo(rng, "/a.jpg", 3, labels=("Ada", None, None)))
        st.add_photo(s, make_photo(rng, "/b.jpg", 2))
        st.delete_faces(s, a.face_ids[1:2])
        st.delete_person(s, "Ada", faces=True)
        st.add_photo(s, make_photo(rng, "/b.jpg", 4), replace=True)
        st.delete_photos(s, [a.photo_id])
        assert st.recorded_face_count(s) == st.face_count(s) == 4
        st.set_meta(s, st.FACE_COUNT_KEY, "99")  # changed behind our back
        assert st.recount_faces(s) == 4 and st.recorded_face_count(s) == 4


def test_rejections(store: st.Store, rng) -> None:
    with store.session() as s:
        f = list(st.add_photo(s, make_photo(rng, "/r/a.jpg", 4)).face_ids)
        amy, bob = st.ensure_person(s, "Amy").id, st.ensure_person(s, "Bob").id
        c = st.new_clusters(s, 1)[0]
        st.set_cluster(s, f[:3], c)
        assert st.add_rejections(s, f[:2], person_id=amy) == 2
        assert st.add_rejections(s, f[:2], person_id=amy) == 0  # recorded once
        assert st.add_rejections(s, [f[3]], cluster_id=c) == 1
        with pytest.raises(ValueError, match="exactly one"):
            st.add_rejections(s, [f[0]], person_id=amy, cluster_id=c)
        arrays = st.rejection_arrays(s)
        assert arrays.face_ids.tolist() == [f[0], f[1], f[3]]
        assert arrays.person_ids.tolist() == [amy, amy, -1]
        assert arrays.cluster_ids.tolist() == [-1, -1, c]
        assert st.rejected_people(s, f) == {f[0]: {"Amy"}, f[1]: {"Amy"}}
        assert st.rejection_count(s) == 3 and st.rejection_count(s, person_id=amy) == 2
        recs = st.rejection_records(s, face_id=f[0])
        assert [(r.face_id, r.person, r.cluster_id) for r in recs] == [(f[0], "Amy", None)]
        # derived labels skip a rejected face; an explicit label lifts the rejection
        assert st.assign(s, f[:3], "Amy", st.LabelSource.PROPAGATED) == 1
        assert st.faces_by_ids(s, [f[0]])[f[0]].person is None
        assert st.assign(s, [f[0]], "Amy", st.LabelSource.MANUAL) == 1
        assert st.rejected_people(s, [f[0]]) == {}
        # the cluster's person makes the faces rejected for it leave: f[1]
        st.update_cluster(s, c, person_id=amy)
        assert st.rejected_members(s, [c]) == [(f[1], c)]
        st.set_cluster(s, [f[3]], c)
        assert st.rejected_members(s, [c]) == [(f[1], c), (f[3], c)]
        # a rejection for Amy becomes one for Bob when Amy is merged into Bob
        assert st.delete_rejections(s, [f[3]], cluster_id=c) == 1
        st.merge_people(s, "Amy", "Bob")
        assert st.rejected_people(s, f) == {f[1]: {"Bob"}}
        assert st.rejection_arrays(s).person_ids.tolist() == [bob]
        # rows go with their face and with their person
        st.delete_faces(s, [f[1]])
        assert st.rejection_count(s) == 0
        st.add_rejections(s, [f[2]], person_id=bob)
        st.delete_person(s, "Bob")
        assert st.rejection_count(s) == 0
