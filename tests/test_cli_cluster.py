"""``facesearch cluster`` (name / split / merge) and ``facesearch evaluate cluster`` through
CliRunner, on a small real collection: 4 Amy, 4 Raj, 3 Penny portraits and a Big Bang Theory
group photo (4 faces, one of them Raj), indexed without labels.

The collection is indexed once per module; every test works on its own copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collhelpers import (
    collection_args,
    pg_module_url,  # noqa: F401
    run_cli,
    use_shared_pipeline,
)
from PIL import Image

from facesearch import store as st
from facesearch.collection import Collection

BATCH1 = {
    "BBT_Amy": ("amy1.png", "amy2.png", "amy3.png", "amy4.png"),
    "BBT_Raj": ("raj1.png", "raj2.png", "raj3.png", "raj4.png"),
    "BBT_Penny": ("penny1.png", "penny2.png", "penny3.png"),
}
BATCH2 = {"BBT_Amy": ("amy5.png",), "BBT_Raj": ("raj5.png",)}
GROUP = "bbt1.jpg"


def _copy(data: Path, files: dict[str, tuple[str, ...]], out: Path) -> Path:
    for person, names in files.items():
        (out / person).mkdir(parents=True, exist_ok=True)
        for n in names:
            shutil.copy(data / "photos" / person / n, out / person / n)
            (out / person / n).chmod(0o644)
    return out


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, data: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cluster")
    lib = _copy(data, BATCH1, root / "lib")
    (lib / "group").mkdir()
    shutil.copy(data / "groups" / GROUP, lib / "group" / GROUP)
    (lib / "group" / GROUP).chmod(0o644)
    lib2 = _copy(data, BATCH2, root / "lib2")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        use_shared_pipeline(mp)
        run_cli(["index", lib, *collection_args(home, None)])
    return {"lib": lib, "lib2": lib2, "home": home}


@pytest.fixture
def col(indexed: dict[str, Path], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A private copy of the indexed collection."""
    home = tmp_path / "home"
    shutil.copytree(indexed["home"], home)
    yield {"home": home, "args": collection_args(home, None), "lib2": indexed["lib2"]}


def _clusters(args: list[str], *extra: str) -> list[dict[str, Any]]:
    return json.loads(run_cli(["cluster", "--json", *extra, *args]).stdout)


def _person_of(entry: dict[str, Any]) -> set[str]:
    """The folder names (true people) of an entry's faces; the group photo counts as 'group'."""
    return {Path(f["photo"]).parent.name for f in entry["faces"]}


def _by_person(entries: list[dict[str, Any]], folder: str) -> dict[str, Any]:
    [e] = [e for e in entries if e["kind"] == "cluster" and folder in _person_of(e)]
    return e


def _all_face_ids(home: Path) -> list[int]:
    with Collection.open(home) as c, c.session() as s:
        return st.face_ids(s).tolist()


def test_clusters_people_and_every_face_once(col: dict[str, Any]) -> None:
    entries = _clusters(col["args"])
    ids = sorted(f["face_id"] for e in entries for f in e["faces"])
    assert ids == _all_face_ids(col["home"])  # every face exactly once
    clusters = [e for e in entries if e["kind"] == "cluster"]
    assert len(clusters) == 3
    # each portrait folder is one cluster, never mixed with another person
    for folder, files in BATCH1.items():
        e = _by_person(entries, folder)
        assert _person_of(e) <= {folder, "group"}
        assert sum(Path(f["photo"]).parent.name == folder for f in e["faces"]) == len(files)
    for e in entries:
        assert e["size"] == len(e["faces"])
        assert e["kind"] in ("cluster", "single") and e["proposed"] is None
        for f in e["faces"]:
            assert len(f["box"]) == 4 and f["box"][0] < f["box"][2] and f["box"][1] < f["box"][3]
    # stored in SQL
    with Collection.open(col["home"]) as c:
        assert c.info(check=False)["clusters"] == 3
    out = run_cli(["cluster", *col["args"]]).stdout
    assert "run:       none, 0 faces placed" in out
    assert "faces:     15 (" in out and "proposals: 0 clusters" in out


def test_same_photo_never_together(col: dict[str, Any]) -> None:
    # single linkage at the largest threshold would put everything in one cluster
    entries = _clusters(col["args"], "--full", "--linkage", "single", "--threshold", "4")
    group_faces = 0
    for e in entries:
        photos = [f["photo"] for f in e["faces"]]
        assert len(photos) == len(set(photos)), e
        group_faces += sum(Path(p).name == GROUP for p in photos)
    assert group_faces == 4
    # greedy merges leave the 4 group faces in 4 different groups (some of them alone)
    assert sum(e["size"] for e in entries if e["kind"] == "cluster") >= 11


def test_persists_and_adds_new_faces(col: dict[str, Any]) -> None:
    before = _clusters(col["args"])
    ids_before = {folder: _by_person(before, folder)["id"] for folder in BATCH1}
    with pytest.MonkeyPatch.context() as mp:
        use_shared_pipeline(mp)
        run_cli(["index", col["lib2"], *col["args"]])
    out = run_cli(["cluster", *col["args"]]).stdout
    assert out.startswith("run:       incremental, 2 faces placed, 0 clusters created, 2 faces")
    after = _clusters(col["args"])
    for folder in BATCH1:
        e = _by_person(after, folder)
        assert e["id"] == ids_before[folder]  # same cluster ids
        names = {Path(f["photo"]).name for f in e["faces"]}
        assert names >= set(BATCH1[folder]) | set(BATCH2.get(folder, ()))
    ids = sorted(f["face_id"] for e in after for f in e["faces"])
    assert ids == _all_face_ids(col["home"])


def test_incremental_run_places_a_face_added_after_the_largest_was_deleted(
    col: dict[str, Any],
) -> None:
    """Face ids are never reused (migration 0002): SQLite without AUTOINCREMENT gave the next
    face the id of the deleted largest one, and the incremental run took it for a face it had
    already placed (``cluster.last_face``) and left it alone."""
    _clusters(col["args"])
    with Collection.open(col["home"]) as c:
        with c.session() as s:
            last = int(st.get_meta(s, "cluster.last_face") or 0)
            photo = s.get(st.FaceRow, last).photo_id  # type: ignore[union-attr]
            gone = st.face_ids(s).tolist()
        with c.lock():
            c.remove_photos([photo])
    with pytest.MonkeyPatch.context() as mp:
        use_shared_pipeline(mp)
        run_cli(["index", col["lib2"], *col["args"]])
    new = sorted(set(_all_face_ids(col["home"])) - set(gone))
    assert len(new) == 2 and min(new) > last, (new, last)
    out = run_cli(["cluster", *col["args"]]).stdout
    assert out.startswith("run:       incremental, 2 faces placed, 0 clusters created, 2 faces")
    after = _clusters(col["args"])
    for folder in BATCH2:
        e = _by_person(after, folder)
        assert {Path(f["photo"]).name for f in e["faces"]} >= set(BATCH2[folder])


def test_name_split_merge(col: dict[str, Any]) -> None:
    args = col["args"]
    entries = _clusters(args)
    amy, raj, penny = (_by_person(entries, f)["id"] for f in BATCH1)
    out = run_cli(["cluster", "name", amy, "Amy", *args]).stdout
    assert out == f"cluster {amy} is now 'Amy': 4 faces labelled\n"
    assert json.loads(run_cli(["people", "--json", *args]).stdout) == [
        {"person": "Amy", "faces": 4, "photos": 4}
    ]
    # merge by hand; a full re-run keeps the named and the merged clusters
    out = run_cli(["cluster", "merge", raj, penny, *args]).stdout
    assert out == f"merged clusters {penny} into {raj} (8 faces)\n"
    entries = _clusters(args, "--full")
    named = [e for e in entries if e["id"] == amy]
    assert named and named[0]["person"] == "Amy" and named[0]["manual"] and named[0]["size"] == 4
    merged = [e for e in entries if e["id"] == raj]
    assert merged and merged[0]["size"] == 8 and merged[0]["manual"]
    assert not [e for e in entries if e["id"] == penny]
    # split back to singletons
    out = run_cli(["cluster", "split", raj, *args]).stdout
    assert out == f"split cluster {raj}: its faces are alone\n"
    entries = json.loads(run_cli(["cluster", "--json", *args]).stdout)
    assert not [e for e in entries if e["id"] == raj]
    assert len([e for e in entries if e["kind"] == "single"]) == 3 + 8
    # split at a stricter threshold: manual sub-clusters, every face once
    assert run_cli(["cluster", "merge", amy, *args], ok=False).exit_code == 2  # one id
    entries = _clusters(args, "--full")
    raj2 = _by_person(entries, "BBT_Raj")["id"]
    out = run_cli(["cluster", "split", raj2, "--threshold", "0.9", *args]).stdout
    assert out.startswith(f"split cluster {raj2}")
    entries = _clusters(args)
    ids = sorted(f["face_id"] for e in entries for f in e["faces"])
    assert ids == _all_face_ids(col["home"])


def test_name_adds_to_an_existing_person(col: dict[str, Any]) -> None:
    args = col["args"]
    entries = _clusters(args)
    amy, penny = (_by_person(entries, f)["id"] for f in ("BBT_Amy", "BBT_Penny"))
    run_cli(["cluster", "name", amy, "Friends", *args])
    run_cli(["cluster", "name", penny, "Friends", *args])
    assert json.loads(run_cli(["people", "--json", *args]).stdout) == [
        {"person": "Friends", "faces": 7, "photos": 7}
    ]
    # renaming a named cluster moves the faces it labelled
    out = run_cli(["cluster", "name", penny, "Penny", *args]).stdout
    assert out == f"cluster {penny} is now 'Penny': 3 faces labelled\n"
    people = json.loads(run_cli(["people", "--json", *args]).stdout)
    assert [(p["person"], p["faces"]) for p in people] == [("Friends", 4), ("Penny", 3)]


def test_merge_refuses_faces_of_one_photo(col: dict[str, Any]) -> None:
    entries = _clusters(col["args"], "--full", "--min-size", "1")
    group = [e["id"] for e in entries if any(Path(f["photo"]).name == GROUP for f in e["faces"])]
    assert len(group) == 4
    r = run_cli(["cluster", "merge", group[0], group[1], *col["args"]], ok=False)
    assert r.exit_code == 1 and "both have a face in photo" in r.stderr


def test_bad_id(col: dict[str, Any]) -> None:
    _clusters(col["args"])
    for cmd in (["name", "999", "X"], ["split", "999"], ["merge", "999", "1"]):
        r = run_cli(["cluster", *cmd, *col["args"]], ok=False)
        assert r.exit_code == 1
        assert "no cluster with id 999 (`facesearch cluster` lists the cluster ids)" in r.stderr


def test_proposal_and_assign(col: dict[str, Any]) -> None:
    args = col["args"]
    entries = _clusters(args)
    raj = _by_person(entries, "BBT_Raj")
    labelled = [
        f["face_id"] for f in raj["faces"] if Path(f["photo"]).name in ("raj1.png", "raj2.png")
    ]
    with Collection.open(col["home"]) as c:
        c.assign(labelled, "Raj")
    entries = _clusters(args, "--full")
    [prop] = [e for e in entries if e["proposed"] is not None]
    assert prop["proposed"] == "Raj" and prop["proposed_distance"] < 1.274
    assert {Path(f["photo"]).name for f in prop["faces"]} >= {"raj3.png", "raj4.png"}
    [person] = [e for e in entries if e["kind"] == "person"]
    assert person["person"] == "Raj" and sorted(f["face_id"] for f in person["faces"]) == labelled
    out = run_cli(["cluster", "--assign", *args]).stdout
    assert f"assigned:  {prop['size']} faces labelled from proposals" in out
    with Collection.open(col["home"]) as c, c.session() as s:
        recs = st.faces_by_ids(s, [f["face_id"] for f in prop["faces"]])
    assert {(r.person, r.source) for r in recs.values()} == {("Raj", st.LabelSource.PROPAGATED)}
    entries = _clusters(args)
    assert not [e for e in entries if e["proposed"] is not None]
    ids = sorted(f["face_id"] for e in entries for f in e["faces"])
    assert ids == _all_face_ids(col["home"])


def test_people_reject_and_unreject(col: dict[str, Any]) -> None:
    args = col["args"]
    entries = _clusters(args)
    raj = _by_person(entries, "BBT_Raj")
    run_cli(["cluster", "name", raj["id"], "Raj", *args])
    # the group photo's face of Raj is in the cluster; say it is not Raj
    portraits = [f for f in raj["faces"] if Path(f["photo"]).name != GROUP]
    face = portraits[0]["face_id"]
    out = run_cli(["people", "reject", face, "Raj", *args]).stdout
    assert out.strip() == f"face {face} is not 'Raj'"
    rows = json.loads(run_cli(["people", "rejections", "--json", *args]).stdout)
    assert [(r["face_id"], r["person"]["name"]) for r in rows] == [(face, "Raj")]
    assert run_cli(["people", "rejections", "Raj", *args]).stdout.split() == [
        "face", str(face), "not", "'Raj'",
    ]  # fmt: skip
    for extra in ((), ("--full",)):
        entries = _clusters(args, *extra)
        named = [e for e in entries if e["id"] == raj["id"]][0]
        assert named["person"] == "Raj" and face not in {f["face_id"] for f in named["faces"]}
        assert not any(
            e["proposed"] == "Raj" and face in {f["face_id"] for f in e["faces"]} for e in entries
        )
        for e in entries:
            if e["kind"] == "cluster":
                assert set(e["cohesion"]) == {"mean_d", "nn_inside", "margin"}
    r = run_cli(["people", "unreject", face, "Raj", *args])
    assert r.stdout.strip() == f"face {face} may be 'Raj' again"
    assert run_cli(["people", "rejections", *args]).stdout.strip() == "no rejections"
    r = run_cli(["people", "unreject", face, "Raj", *args], ok=False)
    assert r.exit_code == 1 and f"face {face} was not rejected for person 'Raj'" in r.stderr
    r = run_cli(["people", "reject", face, "Nobody", *args], ok=False)
    assert r.exit_code == 1 and "no person named 'Nobody'" in r.stderr


def test_split_faces_out_and_unreject(col: dict[str, Any]) -> None:
    args = col["args"]
    penny = _by_person(_clusters(args), "BBT_Penny")
    out_face = penny["faces"][0]["face_id"]
    r = run_cli(["cluster", "split", penny["id"], out_face, *args])
    assert (
        r.stdout
        == f"took 1 faces out of cluster {penny['id']}; cluster {penny['id']} keeps the others\n"
    )
    rows = json.loads(run_cli(["people", "rejections", "--json", *args]).stdout)
    assert [(r["face_id"], r["cluster"]) for r in rows] == [(out_face, penny["id"])]
    for extra in ((), ("--full",)):
        [kept] = [e for e in _clusters(args, *extra) if e["id"] == penny["id"]]
        assert out_face not in {f["face_id"] for f in kept["faces"]}
    r = run_cli(["people", "unreject", out_face, "--cluster", penny["id"], *args])
    assert r.stdout.strip() == f"face {out_face} may be in cluster {penny['id']} again"
    assert run_cli(["people", "rejections", *args]).stdout.strip() == "no rejections"
    for bad in ([], ["Raj", "--cluster", penny["id"]]):
        r = run_cli(["people", "unreject", out_face, *bad, *args], ok=False)
        assert r.exit_code == 2 and "give PERSON or --cluster ID" in r.stderr
    r = run_cli(["cluster", "split", penny["id"], 10**9, *args], ok=False)
    assert r.exit_code == 1 and "not in cluster" in r.stderr
    r = run_cli(["cluster", "split", penny["id"], out_face, "--threshold", "0.9", *args], ok=False)
    assert r.exit_code == 2 and "not both" in r.stderr


def test_export(col: dict[str, Any], tmp_path: Path) -> None:
    out_dir = tmp_path / "export"
    r = run_cli(["cluster", "--json", "--export", out_dir, *col["args"]])
    entries = json.loads(r.stdout)
    folders = sorted(p.name for p in out_dir.iterdir())
    clusters = [e for e in entries if e["kind"] == "cluster"]
    assert folders == sorted([f"cluster_{e['id']:05d}" for e in clusters] + ["singletons"])
    for e in clusters:
        files = sorted((out_dir / f"cluster_{e['id']:05d}").iterdir())
        assert [p.name for p in files] == sorted(f"face{f['face_id']}.jpg" for f in e["faces"])
        for p in files:
            assert not p.is_symlink()
            with Image.open(p) as im:
                assert im.format == "JPEG" and min(im.size) >= 20
    assert len(list((out_dir / "singletons").iterdir())) == 3
    r = run_cli(["cluster", "--export", out_dir, *col["args"]], ok=False)
    assert r.exit_code == 1 and "is not empty" in r.stderr


def test_evaluate_cluster_folder(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    folder = _copy(data, {k: v[:3] for k, v in BATCH1.items()}, tmp_path / "people")
    res = json.loads(run_cli(["evaluate", "cluster", folder, "--json"]).stdout)
    assert (res["faces"], res["people"]) == (9, 3)
    assert res["clusters"] == 3 and res["bcubed"]["f"] == 1.0 and res["pairwise"]["f"] == 1.0
    out = run_cli(["evaluate", "cluster", folder]).stdout.splitlines()
    assert out[0] == "faces      9 (3 people)"
    assert out[3] == "bcubed     precision 1.0000  recall 1.0000  F 1.0000"


def test_evaluate_cluster_embeddings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 64))
    labels = np.repeat(np.arange(5), 6)
    xb = centers[labels] + 0.05 * rng.normal(size=(30, 64))
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    path = tmp_path / "emb.npz"
    np.savez(path, xb=xb.astype(np.float32), labels=labels)
    res = json.loads(run_cli(["evaluate", "cluster", "--embeddings", path, "--json"]).stdout)
    assert (res["faces"], res["people"], res["clusters"]) == (30, 5, 5)
    assert res["bcubed"]["f"] == 1.0


@pytest.mark.postgres
def test_postgres(indexed: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The SQL of runs, incremental runs and corrections on PostgreSQL."""
    pg_url = request.getfixturevalue("pg_module_url")
    args = collection_args(tmp_path / "home", pg_url)
    with pytest.MonkeyPatch.context() as mp:
        use_shared_pipeline(mp)
        run_cli(["index", indexed["lib"], *args])
        entries = _clusters(args)
        assert len([e for e in entries if e["kind"] == "cluster"]) == 3
        amy = _by_person(entries, "BBT_Amy")["id"]
        run_cli(["cluster", "name", amy, "Amy", *args])
        run_cli(["index", indexed["lib2"], *args])
    out = run_cli(["cluster", *args]).stdout
    assert out.startswith("run:       incremental, 2 faces placed, 0 clusters created, 2 faces")
    entries = _clusters(args)
    named = [e for e in entries if e["id"] == amy][0]
    assert named["person"] == "Amy" and named["size"] == 5
    with Collection.open(tmp_path / "home", db_url=pg_url) as c, c.session() as s:
        assert sorted(f["face_id"] for e in entries for f in e["faces"]) == st.face_ids(s).tolist()
