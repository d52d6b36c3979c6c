"""The JSON API of ``facesearch serve`` through an in-process client, SQLite and PostgreSQL:
every endpoint and its error paths.

One collection per backend is built for the module (labelled people, unlabelled people in
clusters); read-only tests share it, tests that change it get a copy of their own
(:func:`fresh`).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")

from collhelpers import PEOPLE, STRANGERS, pg_module_url  # noqa: E402, F401 - a fixture
from dbhelpers import pg_schema_url  # noqa: E402, F401 - a fixture
from fastapi.testclient import TestClient  # noqa: E402
from serverhelpers import (  # noqa: E402
    UNLABELLED,
    build_collection,
    make_server_library,
    server_models,
)

from facesearch import api  # noqa: E402
from facesearch.server import ServerSettings, create_app  # noqa: E402

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
N_FACES = sum(len(v) for v in PEOPLE.values()) + sum(len(v) for v in UNLABELLED.values())
V1 = "/api/v1"
TOKEN = "server-test-token-0123456789"


@pytest.fixture(scope="module", params=BACKENDS)
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: Path
) -> dict[str, Any]:
    db_url = None if request.param == "sqlite" else request.getfixturevalue("pg_module_url")
    root = tmp_path_factory.mktemp("server")
    labelled, unlabelled = make_server_library(data, root)
    home = root / "home"
    build_collection(home, db_url, labelled, unlabelled)
    return {"home": home, "db": db_url, "labelled": labelled, "unlabelled": unlabelled}


def _client(home: Path, db: str | None, **settings: Any) -> TestClient:
    s = ServerSettings(home=home, db_url=db, allowed_hosts=frozenset({"testserver"}), **settings)
    return TestClient(create_app(s, models=server_models(), warm_up=False))


@pytest.fixture()
def client(built: dict[str, Any]) -> Iterator[TestClient]:
    """A server on the module's collection (read-only use)."""
    with _client(built["home"], built["db"]) as c:
        yield c


@pytest.fixture()
def fresh(
    built: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[TestClient]:
    """A server on a collection of the test's own: a copy (SQLite), or built again in a
    private schema (PostgreSQL)."""
    home = tmp_path / "home"
    db = None
    if built["db"] is None:
        shutil.copytree(built["home"], home)
    else:
        db = request.getfixturevalue("pg_schema_url")
        build_collection(home, db, built["labelled"], built["unlabelled"])
    with _client(home, db, lock_timeout=0.2) as c:
        c.home = home  # type: ignore[attr-defined]
        c.db = db  # type: ignore[attr-defined]
        yield c


def _error(r: Any, status: int, code: str, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    for w in words:
        assert w in message, (w, message)
    assert "Traceback" not in message
    return message


def _photo(data: Path, rel: str) -> bytes:
    return (data / "photos" / rel).read_bytes()


def _person_id(c: TestClient, name: str) -> int:
    people = c.get(f"{V1}/people", params={"limit": 1000}).json()["items"]
    return next(p["id"] for p in people if p["name"] == name)


def _clusters(c: TestClient) -> list[dict[str, Any]]:
    return c.get(f"{V1}/clusters", params={"samples": 100}).json()["items"]


# -- collection, OpenAPI, errors ----------------------------------------------------------------


def test_collection(client: TestClient) -> None:
    r = client.get(f"{V1}/collection")
    assert r.status_code == 200
    info = r.json()
    assert info["faces"] == N_FACES
    assert info["people"] == len(PEOPLE)
    assert info["active_model"] == "sface"
    assert info["index_type"] == "flat"
    assert info["consistency"]["consistent"] is True
    assert info["writer"] is None
    assert client.get(f"{V1}/collection", params={"check": False}).json()["consistency"] is None


def test_openapi_lists_every_endpoint(client: TestClient) -> None:
    doc = client.get(f"{V1}/openapi.json").json()
    paths = set(doc["paths"])
    for p in (
        "/collection", "/identify", "/verify", "/faces/{face_id}", "/faces/search",
        "/people", "/people/{person_id}", "/people/{person_id}/merge", "/clusters",
        "/clusters/{cluster_id}", "/clusters/{cluster_id}/name", "/clusters/merge",
        "/clusters/{cluster_id}/split", "/cluster", "/faces/{face_id}/assign",
        "/faces/{face_id}/thumbnail", "/photos/{photo_id}/image", "/jobs/index",
        "/jobs/reindex", "/jobs/{job_id}",
    ):  # fmt: skip
        assert V1 + p in paths, p
    assert "ErrorBody" in doc["components"]["schemas"]


def test_unknown_route_and_method(client: TestClient) -> None:
    _error(client.get(f"{V1}/nothing"), 404, "not_found", "/api/v1/nothing")
    _error(client.put(f"{V1}/collection"), 405, "method_not_allowed", "PUT")


def test_unexpected_error_is_500_without_a_trace(
    built: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("secret detail /etc/passwd")

    monkeypatch.setattr(api, "get_face", boom)
    c = _client(built["home"], built["db"])
    with TestClient(c.app, raise_server_exceptions=False) as c:
        msg = _error(c.get(f"{V1}/faces/1"), 500, "internal")
    assert "secret" not in msg and "passwd" not in msg


# -- identify, verify, search -------------------------------------------------------------------


def test_identify_names_a_known_face(client: TestClient, data: Path) -> None:
    r = client.post(f"{V1}/identify", files={"image": ("q.png", _photo(data, "BBT_Amy/amy4.png"))})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "sface" and out["threshold"] > 0
    (face,) = out["faces"]
    assert face["person"] == "BBT_Amy"
    assert 0 <= face["d"] < out["threshold"]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and face["score"] > 0.5
    assert face["matches"][0]["person"] == "BBT_Amy"
    assert face["matches"][0]["d"] == face["d"]


def test_identify_stranger_is_unknown_and_options_apply(client: TestClient, data: Path) -> None:
    img = _photo(data, STRANGERS[0])
    (face,) = client.post(f"{V1}/identify", files={"image": ("s.png", img)}).json()["faces"]
    assert face["person"] is None
    loose = client.post(
        f"{V1}/identify", files={"image": ("s.png", img)}, data={"threshold": "4", "k": "2"}
    ).json()
    assert loose["threshold"] == 4.0 and loose["faces"][0]["person"] is not None


@pytest.mark.parametrize(
    ("odd", "code", "word"),
    [
        ("truncated.jpg", "bad_image", "truncated"),
        ("not_an_image.jpg", "bad_image", "not an image"),
        ("empty.jpg", "bad_image", "empty"),
    ],
)
def test_identify_bad_image_is_422_with_the_reason(
    client: TestClient, data: Path, odd: str, code: str, word: str
) -> None:
    body = (data / "odd" / odd).read_bytes()
    _error(client.post(f"{V1}/identify", files={"image": (odd, body)}), 422, code, word)


def test_identify_request_errors(client: TestClient, data: Path) -> None:
    _error(client.post(f"{V1}/identify"), 422, "invalid_request", "image")
    white = (data / "negatives" / "white.png").read_bytes()
    _error(client.post(f"{V1}/identify", files={"image": ("w.png", white)}), 422, "no_face")
    img = _photo(data, "BBT_Amy/amy4.png")
    r = client.post(f"{V1}/identify", files={"image": ("q.png", img)}, data={"k": "0"})
    _error(r, 422, "invalid_request", "k")


def test_upload_over_the_limit_is_413(built: dict[str, Any], data: Path) -> None:
    big = (data / "photos" / "Angelina_Jolie").iterdir()
    img = max((p.read_bytes() for p in big), key=len)
    with _client(built["home"], built["db"], max_upload_bytes=len(img) // 2) as c:
        r = c.post(f"{V1}/identify", files={"image": ("big.jpg", img)})
    _error(r, 413, "too_large", "limit")


def test_verify(client: TestClient, data: Path) -> None:
    a, b = _photo(data, "BBT_Amy/amy4.png"), _photo(data, "BBT_Amy/amy5.png")
    r = client.post(f"{V1}/verify", files={"image_a": ("a.png", a), "image_b": ("b.png", b)})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["same"] is True and out["d"] < out["threshold"]
    assert len(out["box_a"]) == len(out["box_b"]) == 4
    other = _photo(data, STRANGERS[0])
    r = client.post(f"{V1}/verify", files={"image_a": ("a", a), "image_b": ("b", other)})
    assert r.json()["same"] is False
    bad = (data / "odd" / "truncated.jpg").read_bytes()
    r = client.post(f"{V1}/verify", files={"image_a": ("a", a), "image_b": ("b", bad)})
    _error(r, 422, "bad_image", "truncated")
    _error(client.post(f"{V1}/verify", files={"image_a": ("a", a)}), 422, "invalid_request")


def test_search_by_face_and_by_photo(client: TestClient, data: Path) -> None:
    amy = _person_id(client, "BBT_Amy")
    face_id = client.get(f"{V1}/people/{amy}").json()["faces"]["items"][0]["id"]
    r = client.post(f"{V1}/faces/search", json={"face_id": face_id, "k": 3})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["face_id"] == face_id and len(res["matches"]) == 3
    assert face_id not in [m["face_id"] for m in res["matches"]]
    assert res["matches"][0]["person"] == "BBT_Amy"
    img = _photo(data, "BBT_Amy/amy4.png")
    r = client.post(f"{V1}/faces/search", files={"image": ("q.png", img)}, data={"k": "2"})
    (res,) = r.json()["results"]
    assert res["face_id"] is None and len(res["box"]) == 4 and len(res["matches"]) == 2


def test_search_errors(client: TestClient) -> None:
    _error(client.post(f"{V1}/faces/search", json={"face_id": 10**9}), 404, "not_found")
    _error(client.post(f"{V1}/faces/search", json={"face_id": 1, "k": 0}), 422, "invalid_request")
    _error(client.post(f"{V1}/faces/search", json={"id": 1}), 422, "invalid_request", "face_id")
    r = client.post(
        f"{V1}/faces/search", content=b"{", headers={"Content-Type": "application/json"}
    )
    _error(r, 422, "invalid_request", "JSON")
    r = client.post(f"{V1}/faces/search", content=b"x", headers={"Content-Type": "text/plain"})
    _error(r, 415, "unsupported_media_type")
    r = client.post(f"{V1}/faces/search", files={"other": ("x", b"1")})
    _error(r, 422, "invalid_request", "image")


# -- faces, thumbnails, photos ------------------------------------------------------------------


def test_get_face(client: TestClient) -> None:
    amy = _person_id(client, "BBT_Amy")
    fid = client.get(f"{V1}/people/{amy}").json()["faces"]["items"][0]["id"]
    f = client.get(f"{V1}/faces/{fid}").json()
    assert f["id"] == fid and f["person"] == {"id": amy, "name": "BBT_Amy"}
    assert set(f) >= {"box", "landmarks", "score", "model", "photo", "cluster", "thumbnail"}
    assert f["photo"]["path"].endswith(".png")
    _error(client.get(f"{V1}/faces/999999"), 404, "not_found", "999999")
    _error(client.get(f"{V1}/faces/abc"), 422, "invalid_request", "face_id")


def test_thumbnail_is_a_cached_jpeg(client: TestClient, built: dict[str, Any]) -> None:
    fid = _clusters(client)[0]["sample_face_ids"][0]
    r = client.get(f"{V1}/faces/{fid}/thumbnail", params={"size": 72})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content[:2] == b"\xff\xd8"
    cached = list((built["home"] / "default" / "thumbnails").rglob(f"{fid}_72_*.jpg"))
    assert len(cached) == 1
    assert client.get(f"{V1}/faces/{fid}/thumbnail", params={"size": 72}).content == r.content
    _error(client.get(f"{V1}/faces/{fid}/thumbnail", params={"size": 9}), 422, "invalid_request")
    _error(client.get(f"{V1}/faces/999999/thumbnail"), 404, "not_found")


def _search_all(c: TestClient) -> list[dict[str, Any]]:
    any_face = _clusters(c)[0]["sample_face_ids"][0]
    hits = c.post(f"{V1}/faces/search", json={"face_id": any_face, "k": 1000}).json()
    return hits["results"][0]["matches"]


def test_photo_and_its_image(client: TestClient) -> None:
    fid = _clusters(client)[0]["sample_face_ids"][0]
    photo = client.get(f"{V1}/faces/{fid}").json()["photo"]
    p = client.get(f"{V1}/photos/{photo['id']}").json()
    assert p["path"] == photo["path"] and p["faces"] == 1 and p["width"] == 150
    r = client.get(p["image"], params={"max_side": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    from io import BytesIO

    from PIL import Image

    assert max(Image.open(BytesIO(r.content)).size) == 64
    _error(client.get(f"{V1}/photos/999999"), 404, "not_found")
    _error(client.get(f"{V1}/photos/999999/image"), 404, "not_found")
    _error(
        client.get(f"{V1}/photos/{photo['id']}/image", params={"max_side": 1}),
        422,
        "invalid_request",
    )


def test_assign_unassign_delete_face(fresh: TestClient) -> None:
    fid = _clusters(fresh)[0]["sample_face_ids"][0]
    r = fresh.post(f"{V1}/faces/{fid}/assign", json={"person": "Ada"})
    assert r.status_code == 200 and r.json()["person"]["name"] == "Ada"
    ada = r.json()["person"]["id"]
    assert (
        fresh.post(f"{V1}/faces/{fid}/assign", json={"person": ada}).json()["person"]["id"] == ada
    )
    _error(fresh.post(f"{V1}/faces/{fid}/assign", json={"person": 999999}), 404, "not_found")
    _error(fresh.post(f"{V1}/faces/{fid}/assign", json={}), 422, "invalid_request", "person")
    _error(fresh.post(f"{V1}/faces/999999/assign", json={"person": "Ada"}), 404, "not_found")
    assert fresh.post(f"{V1}/faces/{fid}/unassign").json()["person"] is None
    fresh.get(f"{V1}/faces/{fid}/thumbnail")
    assert fresh.delete(f"{V1}/faces/{fid}").status_code == 204
    _error(fresh.get(f"{V1}/faces/{fid}"), 404, "not_found")
    _error(fresh.delete(f"{V1}/faces/{fid}"), 404, "not_found")
    assert not list((fresh.home / "default" / "thumbnails").rglob(f"{fid}_*.jpg"))  # type: ignore[attr-defined]
    info = fresh.get(f"{V1}/collection").json()
    assert info["faces"] == N_FACES - 1 and info["consistency"]["consistent"]
    assert fid not in [m["face_id"] for m in _search_all(fresh)]  # the vector is gone too


# -- people -------------------------------------------------------------------------------------


def test_people_listing_is_paginated(client: TestClient) -> None:
    first = client.get(f"{V1}/people", params={"limit": 1}).json()
    assert first["total"] == len(PEOPLE) and first["limit"] == 1 and first["next_offset"] == 1
    names = [first["items"][0]["name"]]
    offset = first["next_offset"]
    while offset is not None:
        page = client.get(f"{V1}/people", params={"limit": 1, "offset": offset}).json()
        names += [p["name"] for p in page["items"]]
        offset = page["next_offset"]
    assert names == sorted(PEOPLE)
    p = client.get(f"{V1}/people").json()["items"][0]
    assert p["faces"] == len(PEOPLE[p["name"]])
    r = client.get(p["thumbnail"], params={"size": 48})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    _error(client.get(f"{V1}/people/999999/thumbnail"), 404, "not_found")
    _error(client.get(f"{V1}/people", params={"limit": 0}), 422, "invalid_request", "limit")
    _error(client.get(f"{V1}/people", params={"limit": 1001}), 422, "invalid_request")
    _error(client.get(f"{V1}/people", params={"offset": -1}), 422, "invalid_request")


def test_person_and_their_faces(client: TestClient) -> None:
    amy = _person_id(client, "BBT_Amy")
    r = client.get(f"{V1}/people/{amy}", params={"limit": 2}).json()
    assert r["person"]["name"] == "BBT_Amy"
    assert r["faces"]["total"] == 3 and len(r["faces"]["items"]) == 2
    assert r["faces"]["next_offset"] == 2
    assert all(f["person"]["id"] == amy for f in r["faces"]["items"])
    _error(client.get(f"{V1}/people/999999"), 404, "not_found")


def test_people_lifecycle(fresh: TestClient) -> None:
    faces = _clusters(fresh)[0]["sample_face_ids"]
    r = fresh.post(f"{V1}/people", json={"name": "Ada", "face_ids": faces[:2]})
    assert r.status_code == 201, r.text
    ada = r.json()
    assert ada["name"] == "Ada" and ada["faces"] == 2
    _error(fresh.post(f"{V1}/people", json={"name": "Ada"}), 422, "invalid_argument", "Ada")
    _error(fresh.post(f"{V1}/people", json={"name": ""}), 422, "invalid_request", "name")
    _error(fresh.post(f"{V1}/people", json={"name": "X", "extra": 1}), 422, "invalid_request")
    r = fresh.patch(f"{V1}/people/{ada['id']}", json={"name": "Ada Lovelace"})
    assert r.json()["name"] == "Ada Lovelace" and r.json()["id"] == ada["id"]
    _error(
        fresh.patch(f"{V1}/people/{ada['id']}", json={"name": "BBT_Amy"}),
        409,
        "collection_state",
        "merge",
    )
    _error(fresh.patch(f"{V1}/people/999999", json={"name": "Q"}), 404, "not_found")
    amy = _person_id(fresh, "BBT_Amy")
    r = fresh.post(f"{V1}/people/{ada['id']}/merge", json={"into": amy})
    assert r.status_code == 200, r.text
    assert r.json() == {"into": r.json()["into"], "faces_moved": 2}
    assert r.json()["into"]["faces"] == 3 + 2
    _error(fresh.get(f"{V1}/people/{ada['id']}"), 404, "not_found")
    _error(fresh.post(f"{V1}/people/{amy}/merge", json={"into": 999999}), 404, "not_found")
    raj = _person_id(fresh, "BBT_Raj")
    r = fresh.delete(f"{V1}/people/{raj}")
    assert r.json() == {"id": raj, "name": "BBT_Raj", "faces_unlabelled": 3, "faces_deleted": 0}
    assert fresh.get(f"{V1}/collection").json()["faces"] == N_FACES
    penny = _person_id(fresh, "BBT_Penny")
    _error(fresh.delete(f"{V1}/people/{penny}", params={"faces": "maybe"}), 422, "invalid_request")
    r = fresh.delete(f"{V1}/people/{penny}", params={"faces": "delete"})
    assert r.json()["faces_deleted"] == 2
    info = fresh.get(f"{V1}/collection").json()
    assert info["faces"] == N_FACES - 2 and info["consistency"]["consistent"]


# -- clusters -----------------------------------------------------------------------------------


def test_clusters_largest_first(client: TestClient) -> None:
    page = client.get(f"{V1}/clusters").json()
    sizes = [c["size"] for c in page["items"]]
    assert sizes == sorted(sizes, reverse=True) and page["total"] == len(UNLABELLED)
    assert all(c["person"] is None and c["sample_face_ids"] for c in page["items"])
    first = page["items"][0]
    r = client.get(f"{V1}/clusters/{first['id']}").json()
    assert r["cluster"]["id"] == first["id"] and r["faces"]["total"] == first["size"]
    assert {f["cluster"] for f in r["faces"]["items"]} == {first["id"]}
    _error(client.get(f"{V1}/clusters/999999"), 404, "not_found")
    samples = client.get(f"{V1}/clusters", params={"samples": 1}).json()["items"]
    assert all(len(c["sample_face_ids"]) == 1 for c in samples)


def test_name_a_cluster_and_cluster_again(fresh: TestClient) -> None:
    c = _clusters(fresh)[0]
    r = fresh.post(f"{V1}/clusters/{c['id']}/name", json={"name": "Leonard"})
    assert r.status_code == 200, r.text
    assert r.json()["person"]["name"] == "Leonard" and r.json()["faces_labelled"] == c["size"]
    assert c["id"] not in [x["id"] for x in _clusters(fresh)]
    leonard = r.json()["person"]["id"]
    faces = fresh.get(f"{V1}/people/{leonard}").json()["faces"]["items"]
    assert sorted(f["id"] for f in faces) == sorted(c["sample_face_ids"])
    _error(fresh.post(f"{V1}/clusters/999999/name", json={"name": "X"}), 404, "not_found")
    _error(fresh.post(f"{V1}/clusters/{c['id']}/name", json={}), 422, "invalid_request", "name")
    # clustering again: nothing new; from scratch, the named group stays named
    r = fresh.post(f"{V1}/cluster", json={})
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "none" and r.json()["unnamed_clusters"] == len(UNLABELLED) - 1
    full = fresh.post(f"{V1}/cluster", json={"full": True}).json()
    assert full["mode"] == "full" and full["faces"] == N_FACES
    assert full["unnamed_clusters"] == len(UNLABELLED) - 1
    assert fresh.post(f"{V1}/cluster").json()["mode"] == "none"  # no body: incremental
    _error(fresh.post(f"{V1}/cluster", json={"full": "often"}), 422, "invalid_request")


def test_merge_and_split_clusters(fresh: TestClient) -> None:
    a, b = _clusters(fresh)[:2]
    r = fresh.post(f"{V1}/clusters/merge", json={"ids": [a["id"], b["id"]]})
    assert r.status_code == 200, r.text
    merged = r.json()["cluster"]
    assert merged["id"] == a["id"] and merged["size"] == a["size"] + b["size"]
    _error(fresh.get(f"{V1}/clusters/{b['id']}"), 404, "not_found")
    _error(fresh.post(f"{V1}/clusters/merge", json={"ids": [a["id"]]}), 422, "invalid_request")
    _error(fresh.post(f"{V1}/clusters/merge", json={"ids": [a["id"], 999999]}), 404, "not_found")
    out = fresh.post(f"{V1}/clusters/{a['id']}/split", json={"face_ids": b["sample_face_ids"]})
    assert out.status_code == 200, out.text
    assert out.json()["cluster"]["size"] == a["size"]
    assert out.json()["removed"] == sorted(b["sample_face_ids"])
    for fid in b["sample_face_ids"]:
        assert fresh.get(f"{V1}/faces/{fid}").json()["cluster"] is None
    r = fresh.post(f"{V1}/clusters/{a['id']}/split", json={"face_ids": b["sample_face_ids"][:1]})
    _error(r, 404, "not_found", "not in cluster")
    r = fresh.post(f"{V1}/clusters/{a['id']}/split", json={"face_ids": a["sample_face_ids"]})
    assert r.json()["cluster"] is None  # emptied: gone
    _error(fresh.get(f"{V1}/clusters/{a['id']}"), 404, "not_found")


# -- jobs ---------------------------------------------------------------------------------------


def _wait(c: TestClient, job_id: int, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"{V1}/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_index_then_reindex_jobs(fresh: TestClient, data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    for f in ("sheldon2.png", "sheldon3.png"):
        shutil.copy(data / "photos" / "BBT_Sheldon" / f, folder / f)
    shutil.copy(data / "odd" / "truncated.jpg", folder / "broken.jpg")
    r = fresh.post(f"{V1}/jobs/index", json={"paths": [str(folder)]})
    assert r.status_code == 202, r.text
    job = _wait(fresh, r.json()["id"])
    assert job["state"] == "done", job
    assert job["progress"] == {"unit": "photos", "done": 3, "total": 3, "faces": 2, "failures": 1}
    assert job["result"]["new"] == 2 and job["result"]["failed"] == 1
    assert fresh.get(f"{V1}/collection").json()["faces"] == N_FACES + 2
    assert fresh.get(f"{V1}/jobs").json()[0]["id"] == job["id"]
    _error(fresh.get(f"{V1}/jobs/999"), 404, "not_found")
    _error(fresh.post(f"{V1}/jobs/index", json={"paths": []}), 422, "invalid_request", "paths")
    # a photo that changes after indexing: its crop is refused, never cut from the new picture
    fid = max(m["face_id"] for m in _search_all(fresh))
    assert fresh.get(f"{V1}/faces/{fid}/thumbnail").status_code == 200
    photo = Path(fresh.get(f"{V1}/faces/{fid}").json()["photo"]["path"])
    shutil.copy(data / "photos" / "BBT_Sheldon" / "sheldon4.png", photo)
    _error(fresh.get(f"{V1}/faces/{fid}/thumbnail"), 409, "photo_changed", "since it was indexed")
    photo.unlink()  # gone: the crop made while it was there is still served
    assert fresh.get(f"{V1}/faces/{fid}/thumbnail").status_code == 200
    _error(fresh.get(f"{V1}/faces/{fid}/thumbnail", params={"size": 64}), 409, "photo_changed")
    # re-embedding every face (the photo gone is skipped and reported)
    r = fresh.post(f"{V1}/jobs/reindex", json={"model": "sface"})
    assert r.status_code == 202, r.text
    job = _wait(fresh, r.json()["id"])
    assert job["state"] == "done", job
    assert job["progress"]["unit"] == "faces"
    assert fresh.get(f"{V1}/collection").json()["consistency"]["consistent"]


def test_second_writer_is_refused_and_cancel_stops_at_a_commit(
    fresh: TestClient, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job holds the writer lock: a second job gets 409, so does a change (the lock is
    held), reads go on; a cancelled job stops at its next commit and keeps what it stored."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):
        shutil.copy(data / "photos" / "BBT_Sheldon" / "sheldon4.png", folder / f"s{i}.png")
    started = threading.Event()
    release = threading.Event()
    real = api.index_paths

    def slow(*args: Any, **kwargs: Any) -> Any:
        progress = kwargs["progress"]

        def gated(p: Any) -> None:
            progress(p)
            started.set()
            release.wait(30)

        kwargs.update(progress=gated, batch_size=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "index_paths", slow)
    first = fresh.post(f"{V1}/jobs/index", json={"paths": [str(folder)]}).json()
    assert started.wait(60)
    assert fresh.get(f"{V1}/collection").json()["writer"]["id"] == first["id"]
    _error(fresh.post(f"{V1}/jobs/index", json={"paths": [str(folder)]}), 409, "writer_busy")
    _error(fresh.post(f"{V1}/jobs/reindex", json={}), 409, "writer_busy")
    t0 = time.monotonic()
    _error(fresh.post(f"{V1}/people", json={"name": "Ada"}), 409, "writer_busy", "being written")
    assert time.monotonic() - t0 < 5
    assert fresh.get(f"{V1}/clusters").status_code == 200  # reads never wait
    assert fresh.delete(f"{V1}/jobs/{first['id']}").json()["cancel_requested"] is True
    release.set()
    job = _wait(fresh, first["id"])
    assert job["state"] == "cancelled", job
    assert job["result"]["interrupted"] is True
    stored = fresh.get(f"{V1}/collection").json()
    assert N_FACES < stored["faces"] < N_FACES + 6 and stored["consistency"]["consistent"]


def test_change_while_the_cli_writes_is_409(built: dict[str, Any]) -> None:
    """Another writer (the CLI) holds the lock: changes are refused, reads work."""
    with (
        _client(built["home"], built["db"], lock_timeout=0.2) as c,
        api.open_collection(built["home"], db_url=built["db"]) as cli,
        cli.lock(),
    ):
        msg = _error(c.post(f"{V1}/people", json={"name": "Ada"}), 409, "writer_busy")
        assert "being written" in msg
        assert c.get(f"{V1}/people").status_code == 200
        assert "Ada" not in [p["name"] for p in c.get(f"{V1}/people").json()["items"]]


# -- security -----------------------------------------------------------------------------------


def test_non_local_bind_needs_a_token(built: dict[str, Any]) -> None:
    with pytest.raises(api.ArgumentError, match="needs a token"):
        ServerSettings(home=built["home"], host="0.0.0.0")
    with pytest.raises(api.ArgumentError, match="at least 16"):
        ServerSettings(home=built["home"], host="0.0.0.0", token="short")
    with _client(built["home"], built["db"], host="0.0.0.0", token=TOKEN) as c:
        _error(c.get(f"{V1}/collection"), 401, "unauthorized", "Bearer")
        _error(c.get(f"{V1}/faces/1/thumbnail"), 401, "unauthorized")
        ok = c.get(f"{V1}/collection", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        page = c.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        bad = c.post("/login", data={"token": "wrong", "next": "/"})
        assert bad.status_code == 401
        r = c.post(
            "/login", data={"token": TOKEN, "next": "https://evil.example/"}, follow_redirects=False
        )
        assert r.status_code == 303 and r.headers["location"] == "/"  # never off-site
        assert c.get(f"{V1}/collection").status_code == 200  # the cookie
        _error(c.post(f"{V1}/people", json={"name": "Ada"}), 403, "csrf")
        r = c.post(f"{V1}/people", json={"name": ""}, headers={"X-Facesearch-CSRF": "1"})
        _error(r, 422, "invalid_request", "name")  # past the guard, refused by validation


def test_cross_site_change_is_refused(client: TestClient) -> None:
    r = client.post(
        f"{V1}/people", json={"name": "Mallory"}, headers={"Origin": "http://evil.example"}
    )
    _error(r, 403, "csrf", "cross-origin")
    assert "Mallory" not in [p["name"] for p in client.get(f"{V1}/people").json()["items"]]
