"""``facesearch people / enroll / info / db upgrade`` through CliRunner, on SQLite and PostgreSQL.

After every change SQL and the vector index file agree (:func:`collhelpers.assert_agree`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collhelpers import (
    BACKENDS,
    assert_agree,
    collection_args,
    composite,
    index_library,
    pg_module_url,  # noqa: F401
    run_cli,
    use_shared_pipeline,
)
from dbhelpers import pg_schema_url  # noqa: F401

from facesearch import store as st
from facesearch.cli.collection import INDEX_TYPES
from facesearch.collection import Collection
from facesearch.vectors import KINDS


@pytest.fixture(scope="module", params=BACKENDS)
def library(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: Path
) -> Iterator[dict[str, Any]]:
    """The test library indexed with --labels folders (SQLite or PostgreSQL)."""
    yield index_library(request, tmp_path_factory, data)


def test_index_type_choices_are_the_vector_kinds() -> None:
    assert set(INDEX_TYPES) == set(KINDS)


def test_info(library: dict[str, Any]) -> None:
    home, db, args = library["home"], library["db"], library["args"]
    out = run_cli(["info", *args]).stdout.splitlines()
    with Collection.open(home, db_url=db) as col:
        database = col.store.url.render_as_string(hide_password=True)
        size = col.info(check=False)["size_on_disk"]
    assert out[0] == f"collection    default ({home / 'default'})"
    assert out[1] == f"database      {database} (schema {st.SCHEMA_HEAD})"
    assert out[2:6] == [
        "photos        12 (3 failed, 1 without a face)",
        "faces         8 (8 labelled)",
        "people        3",
        "model         sface (dim 128, 8 faces) [active]",
    ]
    assert out[6].startswith("index         flat (setting auto), 8 faces, generation ")
    assert out[7].startswith("size on disk  ") and size > 0
    assert out[8] == "consistency   ok: SQL and the index agree (8 faces)"
    assert len(out) == 9
    data = json.loads(run_cli(["info", "--json", *args]).stdout)
    assert (data["photos"], data["faces"], data["people"]) == (12, 8, 3)
    assert data["index"]["type"] == "flat" and data["active_model"] == "sface"
    assert data["consistency"]["consistent"] is True


def test_info_reports_a_missing_index_and_use_rebuilds_it(
    library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    home, db, args = library["home"], library["db"], library["args"]
    index_file = home / "default" / "vectors.faiss"
    index_file.unlink()
    out = run_cli(["info", *args]).stdout.splitlines()
    assert "index         none on disk (setting auto)" in out
    assert out[-1] == (
        "consistency   missing: no index file (the index is rebuilt from SQL on next use)"
    )
    (e,) = json.loads(
        run_cli(["query", data / "photos" / "BBT_Raj" / "raj5.png", "--json", *args]).stdout
    )
    assert e["person"] == "BBT_Raj"
    assert index_file.is_file()
    assert_agree(home, db)


def test_index_type_setting(library: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    use_shared_pipeline(monkeypatch)
    home, db, args, lib = library["home"], library["db"], library["args"], library["lib"]
    run_cli(["index", lib, "--index-type", "ivf", *args])
    line = next(x for x in run_cli(["info", *args]).stdout.splitlines() if x.startswith("index"))
    assert line.startswith("index         ivf nlist 1 nprobe ") and "(setting ivf), 8 faces" in line
    assert_agree(home, db)
    run_cli(["index", lib, "--index-type", "auto", *args])
    line = next(x for x in run_cli(["info", *args]).stdout.splitlines() if x.startswith("index"))
    assert line.startswith("index         flat (setting auto), 8 faces")
    assert_agree(home, db)
    bad = run_cli(["index", lib, "--index-type", "hnsw", *args], ok=False)
    assert bad.exit_code == 2 and "'hnsw' is not one of 'auto', 'flat', 'ivf'" in bad.stderr


def test_people_commands(
    library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    home, db, args = library["home"], library["db"], library["args"]
    assert run_cli(["people", *args]).stdout == (
        "person     faces  photos\n"
        "BBT_Amy        3       3\n"
        "BBT_Penny      2       2\n"
        "BBT_Raj        3       3\n"
    )
    assert json.loads(run_cli(["people", "--json", *args]).stdout) == [
        {"person": "BBT_Amy", "faces": 3, "photos": 3},
        {"person": "BBT_Penny", "faces": 2, "photos": 2},
        {"person": "BBT_Raj", "faces": 3, "photos": 3},
    ]
    r = run_cli(["people", "rename", "BBT_Amy", "Amy Farrah Fowler", *args])
    assert r.stdout == "renamed 'BBT_Amy' to 'Amy Farrah Fowler'\n"
    r = run_cli(["people", "rename", "BBT_Raj", "Amy Farrah Fowler", *args], ok=False)
    assert r.exit_code == 1
    assert r.stderr == (
        "Error: cannot rename 'BBT_Raj' to 'Amy Farrah Fowler': 'Amy Farrah Fowler' exists; "
        "merge them instead (`facesearch people merge 'BBT_Raj' 'Amy Farrah Fowler'`)\n"
    )
    # the group's options apply to its subcommands too
    r = run_cli(["people", *args, "merge", "BBT_Penny", "BBT_Raj"])
    assert r.stdout == "merged 'BBT_Penny' into 'BBT_Raj': 2 faces moved\n"
    assert_agree(home, db)
    assert run_cli(["people", *args]).stdout == (
        "person             faces  photos\n"
        "Amy Farrah Fowler      3       3\n"
        "BBT_Raj                5       5\n"
    )
    r = run_cli(["people", "delete", "BBT_Raj", *args])
    assert r.stdout == "deleted 'BBT_Raj'; 5 faces are now unlabelled\n"
    assert_agree(home, db)
    r = run_cli(["people", "delete", "Amy Farrah Fowler", "--faces", *args])
    assert r.stdout == "deleted 'Amy Farrah Fowler' and 3 faces\n"
    assert_agree(home, db)
    with Collection.open(home, db_url=db) as col, col.session() as s:
        assert st.face_count(s) == 5 and st.people(s) == []
    amy = data / "photos" / "BBT_Amy" / "amy4.png"
    (e,) = json.loads(run_cli(["query", amy, "--json", *args]).stdout)
    assert e["person"] is None and all(m["person"] is None for m in e["matches"])
    assert not any("BBT_Amy" in m["photo"] for m in e["matches"])  # her faces are gone
    r = run_cli(["people", "delete", "Nobody", *args], ok=False)
    assert (r.exit_code, r.stderr) == (
        1,
        "Error: no person named 'Nobody' (see `facesearch people`)\n",
    )
    assert run_cli(["people", *args]).stdout == (
        "no people yet (index with --labels, or `facesearch enroll NAME IMG`)\n"
    )
    # the photos stay: indexing again does not bring the deleted faces back
    run_cli(["index", library["lib"], "--labels", "folders", *args])
    with Collection.open(home, db_url=db) as col, col.session() as s:
        assert st.face_count(s) == 5
    assert_agree(home, db)


@pytest.fixture(params=BACKENDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """An empty home (the collection does not exist yet): SQLite or a fresh PostgreSQL schema."""
    db = None if request.param == "sqlite" else request.getfixturevalue("pg_schema_url")
    home = tmp_path / "home"
    return {"home": home, "db": db, "args": collection_args(home, db, name="fresh")}


def test_enroll_one_shot(
    fresh: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    args, home, db = fresh["args"], fresh["home"], fresh["db"]
    name = args[3]
    crops = data / "photos"
    r = run_cli(["enroll", "Penny", crops / "BBT_Penny" / "penny1.png", *args])
    assert r.stdout == "enrolled 'Penny' from 1 photo\n"
    (e,) = json.loads(
        run_cli(["query", crops / "BBT_Penny" / "penny2.png", "--json", *args]).stdout
    )
    assert e["person"] == "Penny"
    assert e["matches"][0]["photo"] == str(crops / "BBT_Penny" / "penny1.png")
    (e,) = json.loads(run_cli(["query", crops / "BBT_Raj" / "raj1.png", "--json", *args]).stdout)
    assert e["person"] is None
    # several photos, one without a face: the others are enrolled, exit status 1
    white = data / "negatives" / "white.png"
    r = run_cli(
        ["enroll", "Raj", crops / "BBT_Raj" / "raj1.png", white, crops / "BBT_Raj" / "raj2.png",
         *args],
        ok=False,
    )  # fmt: skip
    assert (r.exit_code, r.stdout) == (1, "enrolled 'Raj' from 2 photos\n")
    assert r.stderr == f"error: no face found in {white}\n"
    # a group photo: the largest face is enrolled; enrolling it again changes nothing
    group = composite(
        [crops / "BBT_Amy" / "amy1.png", crops / "BBT_Penny" / "penny3.png"],
        [260, 120],
        home.parent / "group.png",
    )
    run_cli(["enroll", "Amy", group, *args])
    run_cli(["enroll", "Amy", group, *args])
    with Collection.open(home, name, db_url=db) as col, col.session() as s:
        assert {p.name: (p.faces, p.photos) for p in st.people(s)} == {
            "Amy": (1, 1),
            "Penny": (1, 1),
            "Raj": (2, 2),
        }
        stat = st.photo_by_path(s, str(group))
        assert stat is not None
        faces = st.faces_of_photo(s, stat.id)
        assert len(faces) == 2  # both faces recorded once, the large one is Amy
        big = max(faces, key=lambda f: f.box[2] - f.box[0])
        assert (big.person, big.source) == ("Amy", st.LabelSource.ENROLL)
        assert len(st.photo_stats(s)) == 4
    assert_agree(home, db, name)
    r = run_cli(["enroll", "Amy", *args], ok=False)
    assert r.exit_code == 2 and "Missing argument 'IMAGES...'" in r.stderr


def test_db_upgrade(fresh: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_shared_pipeline(monkeypatch)
    args, home, db = fresh["args"], fresh["home"], fresh["db"]
    name = args[3]
    r = run_cli(["db", "upgrade", *args], ok=False)
    assert r.exit_code == 1
    assert r.stderr == (
        f"Error: no collection {name!r} in {home}: nothing to upgrade "
        f"(`facesearch index PATH --collection {name}` creates one)\n"
    )
    run_cli(["enroll", "Amy", data / "photos" / "BBT_Amy" / "amy1.png", *args])
    r = run_cli(["db", "upgrade", *args])
    assert r.stdout == f"collection {name!r}: database schema {st.SCHEMA_HEAD} is the newest\n"
    # an emptied database (migrations undone) is brought back to the newest schema
    with Collection.open(home, name, db_url=db) as col:
        url = col.store.url
    st.downgrade_database(url, "base")
    r = run_cli(["people", *args], ok=False)
    assert r.exit_code == 1 and "has no facesearch tables" in r.stderr
    r = run_cli(["db", "upgrade", *args])
    assert r.stdout == (
        f"collection {name!r}: database schema upgraded (none) -> {st.SCHEMA_HEAD}\n"
    )
    assert run_cli(["people", *args]).stdout.startswith("no people yet")


@pytest.mark.parametrize(
    "command",
    [["people"], ["people", "rename", "A", "B"], ["info"], ["query", "x.jpg"]],
    ids=["people", "rename", "info", "query"],
)
def test_missing_collection_says_how_to_create_it(tmp_path: Path, command: list[str]) -> None:
    r = run_cli([*command, "--home", tmp_path, "--collection", "holiday"], ok=False)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (
        f"Error: no collection 'holiday' in {tmp_path}: create it by indexing photos into it "
        "(`facesearch index PATH --collection holiday`)\n"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["people", "rename", "OnlyOne"],
        ["people", "merge"],
        ["people", "delete"],
        ["index"],
        ["info", "--bogus"],
        ["people", "frobnicate"],
        ["db"],
    ],
)
def test_wrong_arguments_are_usage_errors(tmp_path: Path, command: list[str]) -> None:
    r = run_cli([*command, "--home", tmp_path] if command != ["db"] else command, ok=False)
    assert r.exit_code == 2, r.stderr
    assert "Usage: facesearch" in r.stderr or "Usage: facesearch" in r.stdout
