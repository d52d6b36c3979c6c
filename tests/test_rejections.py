""" "Not this person" in a collection: rejections honoured by full and incremental clustering,
proposals, ``--assign``, identification's verdict and the suggestions queue; stable cluster ids
and cohesion in the report. On SQLite and PostgreSQL.

Faces are synthetic 128-d embeddings (no photos are read): Amy (8 faces, 2 labelled), a
lookalike of Amy whom clustering without constraints puts with her (3 faces), Carl (6 faces,
1 labelled). One face per photo.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dbhelpers import collection_db, pg_schema_url  # noqa: F401

from facesearch import api
from facesearch import store as st
from facesearch.collection import Collection
from facesearch.collection_clusters import Entry
from facesearch.errors import NotFoundError
from facesearch.types import Detection, Face

DIM = 128


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def people() -> dict[str, np.ndarray]:
    """Identity centres and faces: ``amy`` (8), ``look`` (3, near Amy), ``carl`` (6), and
    ``amy_new`` / ``look_new`` (2 / 1 faces added later)."""
    rng = np.random.default_rng(5)
    c_amy = _unit(rng.standard_normal(DIM))
    c_look = _unit(c_amy + 0.09 * rng.standard_normal(DIM))
    c_carl = _unit(rng.standard_normal(DIM))

    def around(c: np.ndarray, m: int) -> np.ndarray:
        return _unit(c + 0.06 * rng.standard_normal((m, DIM)))

    return {
        "amy": around(c_amy, 8),
        "look": around(c_look, 3),
        "carl": around(c_carl, 6),
        "amy_new": around(c_amy, 2),
        "look_new": around(c_look, 1),
    }


def _photo(x: np.ndarray, label: str | None = None) -> st.NewPhoto:
    det = Detection(
        box=(10.0, 10.0, 60.0, 70.0),
        landmarks=((20.0, 30.0), (40.0, 30.0), (30.0, 45.0), (22.0, 55.0), (38.0, 55.0)),
        score=0.9,
    )
    return st.NewPhoto(
        path=f"/photos/{uuid.uuid4().hex}.jpg",
        content_hash=uuid.uuid4().hex * 2,
        size=1000,
        mtime=1.5e9,
        width=100,
        height=100,
        faces=(Face(detection=det, embedding=x, model="sface"),),
        labels=(label,),
    )


def _add(col: Collection, xs: np.ndarray, labels: list[str | None] | None = None) -> list[int]:
    labels = labels or [None] * len(xs)
    added = col.add_photos([_photo(x, lab) for x, lab in zip(xs, labels, strict=True)])
    return [a.face_ids[0] for a in added]


@pytest.fixture
def col(
    tmp_path: Path,
    collection_db: str | None,  # noqa: F811
    people: dict[str, np.ndarray],
) -> Iterator[tuple[Collection, dict[str, list[int]]]]:
    with Collection.open(tmp_path, "c", db_url=collection_db, create=True) as c:
        ids = {
            "amy": _add(c, people["amy"], ["Amy", "Amy"] + [None] * 6),
            "look": _add(c, people["look"]),
            "carl": _add(c, people["carl"], ["Carl"] + [None] * 5),
        }
        yield c, ids


def _cluster_of(rep: api.ClusterReport) -> dict[int, int]:
    """``face id -> cluster id`` of a report's clusters."""
    return {r.face_id: e.id for e in rep.clusters for r in e.faces if e.id is not None}


def _entry(rep: api.ClusterReport, cluster_id: int) -> Entry:
    return next(e for e in rep.clusters if e.id == cluster_id)


def test_a_rejected_lookalike_leaves_the_person_in_full_runs(
    col: tuple[Collection, dict[str, list[int]]],
) -> None:
    c, ids = col
    amy_free, look = ids["amy"][2:], ids["look"]
    rep = api.cluster(c)
    where = _cluster_of(rep)
    first = where[amy_free[0]]
    assert {where.get(f) for f in amy_free + look} == {first}, "the lookalike joins Amy"
    entry = _entry(rep, first)
    assert entry.proposed == "Amy"
    for f in look:
        api.reject_face(c, f, "Amy")
    # the cluster holds faces that are not Amy: it is not proposed as Amy any more
    assert _entry(api.cluster_report(c), first).proposed is None
    rep = api.cluster(c, full=True)
    where = _cluster_of(rep)
    assert {where[f] for f in amy_free} == {first}, "Amy's cluster keeps its id"
    assert rep.stats is not None and rep.stats.ids_kept >= 1
    assert all(where.get(f) != first for f in look)
    assert _entry(rep, first).proposed == "Amy"
    # --assign labels Amy's faces, never the lookalike's
    rep = api.cluster(c, assign=True)
    assert rep.assigned == len(amy_free) + len(ids["carl"]) - 1  # Amy's and Carl's clusters
    faces = {f: api.get_face(c, f) for f in amy_free + look}
    assert {faces[f].person for f in amy_free} == {"Amy"}
    assert {faces[f].person for f in look} == {None}
    # cohesion in the report (and --json)
    for e in rep.clusters:
        assert e.cohesion is not None and set(e.cohesion) == {"mean_d", "nn_inside", "margin"}
        assert e.to_dict()["cohesion"]["margin"] == pytest.approx(e.cohesion["margin"], abs=1e-4)


def test_rejections_hold_in_incremental_runs(
    col: tuple[Collection, dict[str, list[int]]], people: dict[str, np.ndarray]
) -> None:
    c, ids = col
    rep = api.cluster(c)
    amy = _cluster_of(rep)[ids["amy"][2]]
    api.name_cluster(c, amy, "Amy")
    named = api.get_cluster(c, amy)
    assert named.person == "Amy" and named.manual
    for f in ids["look"]:  # the lookalike's faces were in it: not Amy, and out of it
        assert api.get_face(c, f).person == "Amy"
        api.reject_face(c, f, "Amy")
        face = api.get_face(c, f)
        assert face.person is None and face.cluster_id is None
    # new faces of Amy and of the lookalike: incremental run
    new_amy = _add(c, people["amy_new"])
    new_look = _add(c, people["look_new"])
    rep = api.cluster(c)
    assert rep.stats is not None and rep.stats.mode == "incremental"
    where = _cluster_of(rep)
    assert {where.get(f) for f in new_amy} == {amy}, "new faces of Amy join her cluster"
    assert all(where.get(f) != amy for f in ids["look"] + new_look)
    lookalike = {where.get(f) for f in ids["look"] + new_look}
    assert len(lookalike) == 1 and None not in lookalike, "the lookalike is a cluster of its own"
    # and a full run after it
    rep = api.cluster(c, full=True)
    where = _cluster_of(rep)
    assert all(where.get(f) != amy for f in ids["look"] + new_look)
    assert {where.get(f) for f in new_amy + ids["amy"][2:]} == {amy}
    # giving a face to Amy by hand lifts the rejection
    api.assign_face(c, ids["look"][0], "Amy")
    remaining = api.list_rejections(c, person="Amy")
    assert [r.face_id for r in remaining.items] == ids["look"][1:]


def test_a_face_taken_out_of_a_cluster_never_goes_back(
    col: tuple[Collection, dict[str, list[int]]], people: dict[str, np.ndarray]
) -> None:
    c, ids = col
    rep = api.cluster(c)
    where = _cluster_of(rep)
    carl = where[ids["carl"][1]]
    out = ids["carl"][2]
    assert api.split_cluster(c, carl, face_ids=[out]) == [carl]
    rejections = api.list_rejections(c, face_id=out).items
    assert [(r.cluster_id, r.person) for r in rejections] == [(carl, None)]
    # a new photo of the very same face tempts it back, incrementally and then in a full run
    twin = _add(c, people["carl"][2:3])[0]
    for full in (False, True):
        rep = api.cluster(c, full=full)
        assert rep.stats is not None and rep.stats.mode == ("full" if full else "incremental")
        assert _cluster_of(rep).get(out) != carl
        assert api.get_cluster(c, carl).size >= len(ids["carl"]) - 2
    # here it forms a cluster with its twin and Carl's labelled face, proposed as Carl
    other = _cluster_of(rep)[out]
    assert other != carl and twin in {r.face_id for r in _entry(rep, other).faces}
    # merging that cluster into the one it left: it stays out, alone
    size = api.merge_clusters(c, [carl, other])
    assert size == api.get_cluster(c, carl).size and api.get_face(c, out).cluster_id is None
    # naming the cluster: the face is not its person either
    api.name_cluster(c, carl, "Carl")
    assert "Carl" in {r.person for r in api.list_rejections(c, face_id=out).items}
    with pytest.raises(NotFoundError, match="was not rejected"):
        api.unreject_face(c, ids["carl"][3], "Carl")
    api.unreject_face(c, out, cluster_id=carl)
    api.unreject_face(c, out, "Carl")
    assert api.list_rejections(c, face_id=out).total == 0


def test_identification_and_suggestions_skip_a_rejected_person(
    col: tuple[Collection, dict[str, list[int]]],
) -> None:
    c, ids = col
    face = ids["amy"][3]
    res = api.identify_face(c, face, k=3)
    assert res.person == "Amy" and all(m.face_id != face for m in res.matches)
    queue = api.suggestions(c, limit=100)  # nothing clustered: every unlabelled face is alone
    by_face = {s.face_ids[0]: s for s in queue.items if s.kind == "face"}
    assert by_face[face].person == "Amy" and by_face[face].distance < by_face[face].threshold
    ratios = [s.distance / s.threshold for s in queue.items]
    assert ratios == sorted(ratios), "most confident first"
    api.reject_face(c, face, "Amy")
    res = api.identify_face(c, face, k=3)
    assert res.person != "Amy"
    assert res.matches[0].person == "Amy", "the matches stay what they are"
    queue = api.suggestions(c, limit=100)
    assert all(
        not (s.kind == "face" and s.face_ids == (face,)) or s.person != "Amy" for s in queue.items
    )
    assert {s.face_ids[0] for s in queue.items if s.person == "Amy"} >= set(ids["amy"][4:])
    # clusters: the lookalike's faces rejected, the cluster of Amy's faces is suggested as Amy
    for f in ids["look"]:
        api.reject_face(c, f, "Amy")
    api.cluster(c)
    queue = api.suggestions(c, limit=100)
    clusters = [s for s in queue.items if s.kind == "cluster"]
    assert any(s.person == "Amy" and ids["amy"][2] in s.face_ids for s in clusters)
    assert not any(s.person == "Amy" and set(s.face_ids) & set(ids["look"]) for s in clusters)
    page = api.suggestions(c, limit=1, offset=1)
    assert page.total == queue.total and page.items == queue.items[1:2]
    d = queue.items[0].to_dict()
    assert set(d) == {"kind", "cluster", "face_ids", "size", "person", "distance", "threshold"}


def test_reject_errors(col: tuple[Collection, dict[str, list[int]]]) -> None:
    c, ids = col
    with pytest.raises(NotFoundError, match="no person named 'Zed'"):
        api.reject_face(c, ids["amy"][0], "Zed")
    with pytest.raises(NotFoundError):
        api.reject_face(c, 10**9, "Amy")
    with pytest.raises(api.ArgumentError, match="exactly one"):
        api.unreject_face(c, ids["amy"][0])
    assert api.list_rejections(c).total == 0  # nothing half-done
    f = api.reject_face(c, ids["amy"][0], "Amy")
    assert f.person is None  # the label it had is gone
    api.reject_face(c, ids["amy"][0], "Amy")  # twice: recorded once
    assert api.list_rejections(c).total == 1
