"""The library API (facesearch.api) on a small labelled library, SQLite and PostgreSQL.

One collection per backend is indexed once for the module (through the API, with the shared
pipeline); tests that change it work on a copy of their own (:func:`fresh`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collhelpers import (  # noqa: F401 - pg_module_url is a fixture
    PEOPLE,
    STRANGERS,
    make_library,
    pg_module_url,
    shared_pipeline,
)
from dbhelpers import pg_schema_url  # noqa: F401 - a fixture

from facesearch import api
from facesearch.image import load_image
from facesearch.indexer import Progress
from facesearch.pipeline import PipelineConfig

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
N_FACES = sum(len(v) for v in PEOPLE.values())  # one face per library photo


def shared_models() -> api.Models:
    """Models whose pipelines are the suite's shared torch pipeline (loaded once)."""
    return api.Models(PipelineConfig(engine="torch"), factory=lambda _config: shared_pipeline())


@pytest.fixture(scope="module", params=BACKENDS)
def indexed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: Path
) -> dict[str, Any]:
    db_url = None if request.param == "sqlite" else request.getfixturevalue("pg_module_url")
    root = tmp_path_factory.mktemp("api")
    lib = make_library(data, root)
    home = root / "home"
    events: list[Progress] = []
    with api.open_collection(home, db_url=db_url, create=True) as col:
        report = api.index_paths(
            col, [lib], models=shared_models(), labels="folders", progress=events.append
        )
    return {"home": home, "db": db_url, "lib": lib, "report": report, "events": events}


@pytest.fixture()
def col(indexed: dict[str, Any]) -> Iterator[Any]:
    """The module's collection, read-only use."""
    with api.open_collection(indexed["home"], db_url=indexed["db"]) as c:
        yield c


@pytest.fixture()
def fresh(indexed: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A collection of the test's own: a copy (SQLite), or indexed again into a private
    schema (PostgreSQL)."""
    if indexed["db"] is None:
        shutil.copytree(indexed["home"], tmp_path / "home")
        with api.open_collection(tmp_path / "home") as c:
            yield c
        return
    url = request.getfixturevalue("pg_schema_url")
    with api.open_collection(tmp_path / "home", db_url=url, create=True) as c:
        api.index_paths(c, [indexed["lib"]], models=shared_models(), labels="folders")
        yield c


def test_index_report_and_progress(indexed: dict[str, Any]) -> None:
    r = indexed["report"]
    assert (r.new, r.failed, r.faces_added, r.labels_given) == (N_FACES + 1, 3, N_FACES, N_FACES)
    ev = indexed["events"]
    assert ev[0].done == 0 and ev[-1].done == ev[-1].total == N_FACES + 4
    assert r.to_dict()["faces_added"] == N_FACES


def test_should_stop_ends_the_run_at_a_commit(data: Path, tmp_path: Path) -> None:
    lib = make_library(data, tmp_path)
    stop = threading.Event()
    stop.set()
    with api.open_collection(tmp_path / "home", create=True) as c:
        r = api.index_paths(c, [lib], models=shared_models(), batch_size=2, should_stop=stop)
        assert r.interrupted and 0 < r.processed < N_FACES + 4
        again = api.index_paths(c, [lib], models=shared_models(), batch_size=2)
        assert not again.interrupted and again.unchanged == r.processed
        assert api.collection_info(c).faces == N_FACES


def test_info_and_models(col: Any) -> None:
    info = api.collection_info(col)
    assert (info.photos, info.faces, info.people) == (N_FACES + 4, N_FACES, len(PEOPLE))
    assert info.active_model == "sface" and info.consistent is True
    assert info.to_dict()["consistency"]["consistent"]
    listing = api.list_models(col)
    assert listing.active == "sface"
    (m,) = listing.models
    assert (m.name, m.dim, m.faces, m.active, m.searchable) == ("sface", 128, N_FACES, True, True)
    assert listing.to_dict()["models"][0]["name"] == "sface"


@pytest.mark.parametrize("form", ["path", "bytes", "array"])
def test_identify_a_photo_in_any_form(col: Any, data: Path, form: str) -> None:
    path = data / "photos" / "BBT_Raj" / "raj5.png"
    image: api.ImageInput = {
        "path": path,
        "bytes": path.read_bytes(),
        "array": load_image(path),
    }[form]
    res = api.identify(col, image, models=shared_models(), k=3)
    (face,) = res.faces
    assert face.person == "BBT_Raj" and face.distance is not None and face.distance < res.threshold
    assert len(face.matches) == 3 and face.matches[0].person == "BBT_Raj"
    d = res.to_dict()
    assert d["faces"][0]["person"] == "BBT_Raj" and len(d["faces"][0]["landmarks"]) == 5
    assert d["model"] == "sface"


def test_identify_opens_a_collection_ref_and_says_unknown(
    indexed: dict[str, Any], data: Path
) -> None:
    ref = api.CollectionRef(indexed["home"], db_url=indexed["db"])
    res = api.identify(ref, data / "photos" / STRANGERS[0], models=api.Models(), k=2)
    assert [f.person for f in res.faces] == [None]


def test_identify_errors(col: Any, data: Path, tmp_path: Path) -> None:
    with pytest.raises(api.NoFaceError):
        api.identify(col, data / "negatives" / "white.png", models=shared_models())
    with pytest.raises(api.ImageError, match="not an image"):
        api.identify(col, data / "odd" / "not_an_image.jpg", models=shared_models())
    with pytest.raises(api.ImageError, match="uint8"):
        api.identify(col, np.zeros((4, 4), np.float32), models=shared_models())
    with pytest.raises(api.ArgumentError, match="k must be"):
        api.identify(col, data / "photos" / "BBT_Raj" / "raj5.png", k=0)
    with pytest.raises(api.NotFoundError) as e:
        api.open_collection(tmp_path, "missing")
    assert e.value.kind == "collection"


def test_verify_and_detect(data: Path) -> None:
    m = shared_models()
    a, b = data / "photos" / "BBT_Raj" / "raj1.png", data / "photos" / "BBT_Raj" / "raj2.png"
    v = api.verify(a, b, models=m)
    assert v.same and v.distance < v.threshold and len(v.pairs) == 1
    assert set(v.to_dict()) == {"distance", "threshold", "same", "box_a", "box_b", "model"}
    other = api.verify(a, data / "photos" / "BBT_Amy" / "amy1.png", models=m, all_pairs=True)
    assert not other.same and "pairs" in other.to_dict()
    assert api.verify(a, b, models=m, threshold=0.01).same is False
    found = api.detect_photos([a, data / "odd" / "empty.jpg"], models=m)
    assert len(found[0].detections) == 1 and found[1].error is not None
    assert api.detect(a, models=m) == found[0].detections


def test_search_faces_by_id_and_by_photo(col: Any, data: Path) -> None:
    raj = api.get_person(col, "BBT_Raj")
    first = api.person_faces(col, raj.id, limit=1).items[0]
    (hit,) = api.search_faces(col, face_id=first.id, k=2)
    assert first.id not in [m.face_id for m in hit.matches]
    assert hit.matches[0].person == "BBT_Raj"
    (by_photo,) = api.search_faces(
        col, image=data / "photos" / "BBT_Raj" / "raj5.png", k=2, models=shared_models()
    )
    assert by_photo.face is not None and by_photo.matches[0].person == "BBT_Raj"
    with pytest.raises(api.ArgumentError):
        api.search_faces(col, k=2)
    with pytest.raises(api.NotFoundError):
        api.search_faces(col, face_id=10**9)


def test_faces_photos_and_people_read(col: Any) -> None:
    people = api.list_people(col, limit=2)
    assert people.total == len(PEOPLE) and len(people.items) == 2
    assert [p.name for p in api.iterate(api.list_people, col)] == sorted(PEOPLE)
    amy = api.get_person(col, "BBT_Amy")
    assert api.get_person(col, amy.id) == amy and amy.faces == amy.photos == 3
    page = api.person_faces(col, "BBT_Amy", limit=2, offset=1)
    assert (page.total, len(page.items), page.offset) == (3, 2, 1)
    face = page.items[0]
    assert api.get_face(col, face.id) == face
    assert face.person == "BBT_Amy" and face.model == "sface" and len(face.landmarks) == 5
    photo = api.get_photo(col, face.photo_id)
    assert photo.path == face.photo_path and photo.width and photo.faces == 1
    assert api.photo_of_face(col, face.id) == photo
    assert page.to_dict()["items"][0]["photo"]["id"] == face.photo_id
    for bad in (
        lambda: api.get_face(col, 10**9),
        lambda: api.get_photo(col, 10**9),
        lambda: api.get_person(col, "Nobody"),
        lambda: api.get_person(col, 10**9),
    ):
        with pytest.raises(api.NotFoundError):
            bad()
    with pytest.raises(api.ArgumentError, match="limit"):
        api.list_people(col, limit=0)


def test_people_changes(fresh: Any) -> None:
    amy = api.get_person(fresh, "BBT_Amy")
    renamed = api.rename_person(fresh, amy.id, "Amy")
    assert (renamed.id, renamed.name) == (amy.id, "Amy")
    assert api.merge_people(fresh, "Amy", "BBT_Raj") == 3
    assert api.get_person(fresh, "BBT_Raj").faces == 6
    gone = api.delete_person(fresh, "BBT_Raj")
    assert (gone.faces_unlabelled, gone.faces_deleted) == (6, 0)
    penny = api.person_faces(fresh, "BBT_Penny").items
    created = api.create_person(fresh, "Penny Two", face_ids=[penny[0].id])
    assert created.faces == 1 and api.get_face(fresh, penny[0].id).person == "Penny Two"
    with pytest.raises(api.ArgumentError, match="exists"):
        api.create_person(fresh, "Penny Two")
    done = api.delete_person(fresh, "BBT_Penny", delete_faces=True)
    assert done.faces_deleted == 1
    assert api.collection_info(fresh).faces == N_FACES - 1
    assert api.collection_info(fresh).consistent


def test_assign_unassign_and_delete_a_face(fresh: Any) -> None:
    face = api.person_faces(fresh, "BBT_Amy").items[0]
    assert api.assign_face(fresh, face.id, "BBT_Raj").person == "BBT_Raj"
    raj = api.get_person(fresh, "BBT_Raj")
    assert api.assign_face(fresh, face.id, raj.id).person_id == raj.id
    assert api.unassign_face(fresh, face.id).person is None
    api.delete_face(fresh, face.id)
    with pytest.raises(api.NotFoundError):
        api.get_face(fresh, face.id)
    assert api.collection_info(fresh).consistent
    with pytest.raises(api.NotFoundError):
        api.delete_face(fresh, face.id)


def test_clusters(fresh: Any) -> None:
    for p in list(api.iterate(api.list_people, fresh)):
        api.delete_person(fresh, p.id)  # every face unlabelled: clustering has work
    rep = api.cluster(fresh)
    assert rep.stats is not None and rep.stats.mode == "full"
    page = api.list_clusters(fresh, samples=2)
    assert page.total == len(PEOPLE) == len(rep.clusters)
    sizes = [c.size for c in page.items]
    assert sizes == sorted(sizes, reverse=True) and all(
        len(c.sample_face_ids) <= 2 for c in page.items
    )
    big = page.items[0]
    assert api.get_cluster(fresh, big.id, samples=2) == big
    faces = api.cluster_faces(fresh, big.id, limit=2)
    assert faces.total == big.size and [f.cluster_id for f in faces.items] == [big.id] * 2
    assert api.split_cluster(fresh, big.id, face_ids=[faces.items[0].id]) == [big.id]
    assert api.get_cluster(fresh, big.id).size == big.size - 1
    assert api.get_face(fresh, faces.items[0].id).cluster_id is None
    small = page.items[-1]
    assert api.name_cluster(fresh, small.id, "Someone") == small.size
    assert api.list_clusters(fresh).total == len(PEOPLE) - 1  # unnamed only
    assert api.list_clusters(fresh, unnamed=None).total == len(PEOPLE)
    assert api.get_person(fresh, "Someone").faces == small.size
    with pytest.raises(api.NotFoundError):
        api.get_cluster(fresh, 10**9)
    with pytest.raises(api.NotFoundError):
        api.split_cluster(fresh, big.id, face_ids=[faces.items[0].id])  # no longer in it
    assert len(api.cluster_report(fresh).entries) >= len(PEOPLE)


def test_a_second_writer_gets_locked_error(indexed: dict[str, Any], tmp_path: Path) -> None:
    if indexed["db"] is not None:
        pytest.skip("the lock is the same on both backends")
    home = tmp_path / "home"
    shutil.copytree(indexed["home"], home)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from facesearch import api\n"
         f"c = api.open_collection({str(home)!r})\n"
         "with c.lock():\n    print('locked', flush=True); time.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with api.open_collection(home, lock_timeout=0.1) as c:
            with pytest.raises(api.LockedError, match="being written"):
                api.rename_person(c, "BBT_Amy", "Amy")
            assert api.get_person(c, "BBT_Amy").faces == 3  # reads never wait
    finally:
        holder.kill()
        holder.wait()


def test_import_loads_neither_torch_nor_sqlalchemy() -> None:
    code = "import sys, facesearch.api; print('torch' in sys.modules, 'sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
