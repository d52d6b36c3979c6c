"""Indexing: walk, labels, incremental runs, bad files, interruptions, one writer at a time."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collhelpers import (
    BACKENDS,
    PEOPLE,
    assert_agree,
    collection_args,
    composite,
    index_library,
    make_library,
    pg_module_url,  # noqa: F401
    run_cli,
    shared_pipeline,
    use_shared_pipeline,
)

from facesearch import store as st
from facesearch.collection import Collection
from facesearch.errors import FacesearchError
from facesearch.image import SUPPORTED_SUFFIXES
from facesearch.indexer import (
    DOMINANCE_RATIO,
    IndexSettings,
    Progress,
    dominant_face,
    folder_label,
    index_paths,
    read_labels_csv,
    walk,
)

# -- walking and labels (no networks) -----------------------------------------------------------


def test_walk_skips_hidden_files_and_non_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    for rel in ("a/1.JPG", "a/b/2.png", "a/b/3.heic", "z.webp", ".git/4.jpg", "a/.5.jpg"):
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / "clip.mp4").write_bytes(b"x")
    found = walk([tmp_path, tmp_path / "a"])  # overlapping roots: no duplicates
    rel = [os.path.relpath(f, tmp_path) for f in found.files]
    assert rel == ["z.webp", "a/1.JPG", "a/b/2.png", "a/b/3.heic"]  # top-down, sorted
    assert all(os.path.isabs(f) for f in found.files)
    assert found.skipped_hidden == 2  # the .git folder and a/.5.jpg
    assert found.skipped_other == 2  # notes.txt and clip.mp4
    # a file named explicitly is taken even if hidden; a non-image suffix is not
    explicit = walk([tmp_path / "a" / ".5.jpg", tmp_path / "a" / "notes.txt"])
    assert [Path(f).name for f in explicit.files] == [".5.jpg"]
    assert explicit.skipped_other == 1
    assert {".jpg", ".jpeg", ".png", ".webp", ".heic", ".tif", ".bmp", ".gif"} <= SUPPORTED_SUFFIXES


def test_dominant_face_rule() -> None:
    assert dominant_face([]) is None
    assert dominant_face([10.0]) == 0
    assert DOMINANCE_RATIO == 2.0
    assert dominant_face([100.0, 400.0, 50.0]) == 1  # 400 >= 2 x 100
    assert dominant_face([200.0, 399.0]) is None  # 399 < 2 x 200
    assert dominant_face([200.0, 400.0]) == 1  # exactly 2x is enough
    assert dominant_face([300.0, 300.0]) is None


def test_folder_label_is_the_parent_folder_name() -> None:
    assert folder_label("/photos/Ada_Lovelace/1.jpg") == "Ada_Lovelace"
    assert folder_label("/photos/Ada Lovelace/2019/1.jpg") == "2019"


def test_read_labels_csv(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    csv_path = tmp_path / "sub" / "labels.csv"
    csv_path.write_text(
        "path,person\n"
        "a/1.jpg, Ada Lovelace\n"
        "\n"
        f"{tmp_path / 'b.jpg'},Bob\n"
        '"c, with comma.jpg",Ada Lovelace\n'
    )
    assert read_labels_csv(csv_path) == {
        str(tmp_path / "sub" / "a" / "1.jpg"): "Ada Lovelace",
        str(tmp_path / "b.jpg"): "Bob",
        str(tmp_path / "sub" / "c, with comma.jpg"): "Ada Lovelace",
    }
    csv_path.write_text("a.jpg,Ada\nb.jpg\n")
    with pytest.raises(FacesearchError, match=r"labels.csv line 2: expected 'path,person'"):
        read_labels_csv(csv_path)
    csv_path.write_text("a.jpg,Ada\na.jpg,Bob\n")
    with pytest.raises(FacesearchError, match=r"line 2: a.jpg is given to 'Ada' and to 'Bob'"):
        read_labels_csv(csv_path)
    with pytest.raises(FacesearchError, match="cannot read the labels file"):
        read_labels_csv(tmp_path / "missing.csv")


# -- indexing a library through the CLI ----------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def indexed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: Path
) -> Iterator[dict[str, Any]]:
    """The test library indexed once with ``--labels folders`` (SQLite, or PostgreSQL)."""
    yield index_library(request, tmp_path_factory, data)


def test_index_reports_and_stores_everything(indexed: dict[str, Any]) -> None:
    lib, home, db = indexed["lib"], indexed["home"], indexed["db"]
    out = indexed["result"].stdout.splitlines()
    assert out[:3] == [
        "photos: 12 found: 9 new, 0 updated, 0 unchanged, 0 moved, 3 failed",
        "faces:  8 added; 1 photos without a face",
        "labels: 8 given, 0 skipped (several faces, none clearly the largest)",
    ]
    assert out[3].startswith("time:   ") and "photos/s" in out[3] and "faces/s" in out[3]
    assert len(out) == 4
    err = indexed["result"].stderr
    assert f"  {lib / 'misc' / 'empty.jpg'}: empty file (0 bytes)" in err
    assert f"  {lib / 'misc' / 'not_an_image.jpg'}: not an image" in err
    assert f"  {lib / 'misc' / 'truncated.jpg'}: truncated" in err
    with Collection.open(home, db_url=db) as col, col.session() as s:
        photos = st.photo_stats(s)
        people = {p.name: (p.faces, p.photos) for p in st.people(s)}
    assert sorted(os.path.relpath(p, lib) for p in photos) == sorted(
        [f"{person}/{f}" for person, files in PEOPLE.items() for f in files]
        + ["misc/empty.jpg", "misc/not_an_image.jpg", "misc/truncated.jpg", "misc/white.png"]
    )  # hidden files and notes.txt are not indexed
    status = {os.path.relpath(p, lib): (s.status, s.error) for p, s in photos.items()}
    assert status["misc/white.png"] == (st.PhotoStatus.NO_FACE, None)
    assert status["misc/empty.jpg"] == (st.PhotoStatus.FAILED, "empty file (0 bytes)")
    assert status["misc/truncated.jpg"][0] is st.PhotoStatus.FAILED
    assert status["misc/truncated.jpg"][1].startswith("truncated")
    assert people == {person: (len(files), len(files)) for person, files in PEOPLE.items()}
    assert all(len(p.content_hash) == 64 for p in photos.values() if p.size)
    assert_agree(home, db)


def test_index_again_changes_nothing(
    indexed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    lib, home, db = indexed["lib"], indexed["home"], indexed["db"]
    again = run_cli(["index", lib, "--json", *collection_args(home, db)])
    import json

    report = json.loads(again.stdout)
    assert {k: report[k] for k in ("files", "new", "unchanged", "failed", "faces_added")} == {
        "files": 12,
        "new": 0,
        "unchanged": 12,
        "failed": 0,
        "faces_added": 0,
    }
    assert_agree(home, db)


# -- incremental behaviour, through the library ---------------------------------------------------


class CountingPipeline:
    """The shared pipeline, counting the photos it decodes faces from."""

    def __init__(self) -> None:
        self.inner = shared_pipeline()
        self.photos = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def faces_batch(self, images: Sequence[np.ndarray], detections: Any = None) -> Any:
        self.photos += len(images)
        return self.inner.faces_batch(images, detections)


def _faces_by_path(col: Collection) -> dict[str, list[tuple[int, str | None]]]:
    with col.session() as s:
        out: dict[str, list[tuple[int, str | None]]] = {}
        for path, stat in st.photo_stats(s).items():
            out[path] = [(f.face_id, f.person) for f in st.faces_of_photo(s, stat.id)]
    return out


def test_incremental_runs(tmp_path: Path, data: Path) -> None:
    lib = tmp_path / "lib"
    for person, files in (("Amy", ("amy1.png", "amy2.png")), ("Raj", ("raj1.png",))):
        (lib / person).mkdir(parents=True)
        for f in files:
            shutil.copy(data / "photos" / f"BBT_{person}" / f, lib / person / f)
            (lib / person / f).chmod(0o644)
    pipe = CountingPipeline()
    settings = IndexSettings(labels="folders", batch_size=2, workers=2)
    events: list[Progress] = []
    with Collection.open(tmp_path, "c", create=True) as col:
        r = index_paths(col, pipe, [lib], settings, progress=events.append)  # type: ignore[arg-type]
        assert (r.new, r.faces_added, r.labels_given, pipe.photos) == (3, 3, 3, 3)
        assert events[0] == Progress(3, 0, 0) and events[-1] == Progress(3, 3, 3)
        before = _faces_by_path(col)

        # unchanged: not even read
        r = index_paths(col, pipe, [lib], settings)  # type: ignore[arg-type]
        assert (r.unchanged, r.new, pipe.photos) == (3, 0, 3)

        # touched (new mtime, same bytes): unchanged, not decoded
        os.utime(lib / "Amy" / "amy1.png", (1e9, 1e9))
        r = index_paths(col, pipe, [lib], settings)  # type: ignore[arg-type]
        assert (r.unchanged, r.updated, pipe.photos) == (3, 0, 3)

        # moved and renamed: same faces (ids) and labels, nothing decoded
        (lib / "Amy" / "2020").mkdir()
        os.rename(lib / "Amy" / "amy2.png", lib / "Amy" / "2020" / "renamed.png")
        r = index_paths(col, pipe, [lib], settings)  # type: ignore[arg-type]
        assert (r.moved, r.new, r.missing, pipe.photos) == (1, 0, 0, 3)
        after = _faces_by_path(col)
        assert (
            after[str(lib / "Amy" / "2020" / "renamed.png")]
            == before[str(lib / "Amy" / "amy2.png")]
        )
        assert str(lib / "Amy" / "amy2.png") not in after

        # updated content at the same path: decoded again, old faces replaced
        shutil.copy(data / "photos" / "BBT_Raj" / "raj2.png", lib / "Raj" / "raj1.png")
        r = index_paths(col, pipe, [lib], settings)  # type: ignore[arg-type]
        assert (r.updated, r.new, r.faces_added, pipe.photos) == (1, 0, 1, 4)
        new_raj = _faces_by_path(col)[str(lib / "Raj" / "raj1.png")]
        assert len(new_raj) == 1 and new_raj[0][1] == "Raj"
        with col.session() as s:
            assert st.face_count(s) == 3  # the old face is gone

        # a copy of a photo that still exists is a new photo
        shutil.copy(lib / "Amy" / "amy1.png", lib / "Raj" / "copy.png")
        r = index_paths(col, pipe, [lib], settings)  # type: ignore[arg-type]
        assert (r.new, r.moved, pipe.photos) == (1, 0, 5)

        # deleted files: counted as missing, removed with --prune (faces and vectors too)
        os.remove(lib / "Raj" / "copy.png")
        os.remove(lib / "Amy" / "amy1.png")
        r = index_paths(col, pipe, [lib], settings)  # type: ignore[arg-type]
        assert (r.missing, r.pruned) == (2, 0)
        r = index_paths(col, pipe, [lib], IndexSettings(prune=True))  # type: ignore[arg-type]
        assert (r.missing, r.pruned, r.unchanged) == (0, 2, 2)
        with col.session() as s:
            assert len(st.photo_stats(s)) == 2
            assert st.face_count(s) == 2
    assert_agree(tmp_path, None, "c")


def test_labels_go_to_the_clearly_dominant_face(tmp_path: Path, data: Path) -> None:
    crops = data / "photos"
    lib = tmp_path / "lib" / "Penny"
    lib.mkdir(parents=True)
    penny, amy = crops / "BBT_Penny" / "penny1.png", crops / "BBT_Amy" / "amy1.png"
    composite([penny, amy], [300, 150], lib / "big_and_small.png")  # 4x the area: labelled
    composite([penny, amy], [220, 200], lib / "two_alike.png")  # 1.2x: skipped
    pipe = shared_pipeline()
    with Collection.open(tmp_path, "c", create=True) as col:
        r = index_paths(col, pipe, [lib], IndexSettings(labels="folders"))
        assert (r.new, r.faces_added, r.labels_given, r.labels_skipped) == (2, 4, 1, 1)
        with col.session() as s:
            labelled = [
                f for p in st.photo_stats(s).values() for f in st.faces_of_photo(s, p.id)
                if f.person is not None
            ]  # fmt: skip
        assert len(labelled) == 1
        (face,) = labelled
        assert face.photo.endswith("big_and_small.png") and face.person == "Penny"
        assert face.source is st.LabelSource.FOLDER
        assert face.box[2] - face.box[0] > 200  # the large face


def test_labels_from_csv_and_for_photos_indexed_earlier(tmp_path: Path, data: Path) -> None:
    lib = make_library(data, tmp_path)
    pipe = shared_pipeline()
    with Collection.open(tmp_path, "c", create=True) as col:
        r = index_paths(col, pipe, [lib / "BBT_Amy", lib / "BBT_Raj"])  # unlabelled
        assert (r.new, r.labels_given) == (6, 0)
        labels = tmp_path / "labels.csv"
        labels.write_text(
            "path,person\nphotos/BBT_Amy/amy1.png,Amy F\nphotos/BBT_Raj/raj1.png,Raj K\n"
            "photos/BBT_Raj/gone.png,Raj K\n"
        )
        r = index_paths(
            col, pipe, [lib / "BBT_Amy", lib / "BBT_Raj"], IndexSettings(labels=str(labels))
        )
        assert (r.unchanged, r.labels_given, r.labels_not_found) == (6, 2, 1)
        col.assign(_face_ids(col, lib / "BBT_Amy" / "amy2.png"), "Someone", st.LabelSource.MANUAL)
        r = index_paths(col, pipe, [lib / "BBT_Amy"], IndexSettings(labels="folders"))
        assert r.labels_given == 1  # amy3 only: amy1 (CSV) and amy2 (by hand) keep their person
        with col.session() as s:
            names = {p.name: p.faces for p in st.people(s)}
            sources = {
                Path(f.photo).name: (f.person, f.source)
                for p in st.photo_stats(s).values()
                for f in st.faces_of_photo(s, p.id)
            }
    assert names == {"Amy F": 1, "Raj K": 1, "Someone": 1, "BBT_Amy": 1}
    assert sources["amy1.png"] == ("Amy F", st.LabelSource.CSV)
    assert sources["amy2.png"] == ("Someone", st.LabelSource.MANUAL)
    assert sources["amy3.png"] == ("BBT_Amy", st.LabelSource.FOLDER)
    assert sources["raj2.png"] == (None, None)


def _face_ids(col: Collection, path: Path) -> list[int]:
    with col.session() as s:
        stat = st.photo_by_path(s, str(path))
        assert stat is not None
        return [f.face_id for f in st.faces_of_photo(s, stat.id)]


def test_bad_label_option_is_a_usage_error(tmp_path: Path) -> None:
    r = run_cli(["index", tmp_path, "--labels", "nonsense", "--home", tmp_path], ok=False)
    assert r.exit_code == 2
    assert "'nonsense' is neither 'folders' nor an existing CSV file" in r.stderr
    r = run_cli(["index", tmp_path / "nowhere", "--home", tmp_path], ok=False)
    assert r.exit_code == 2 and "does not exist" in r.stderr


# -- one writer, interruptions ---------------------------------------------------------------------


def test_second_writer_is_refused_clearly(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    monkeypatch.setenv("FACESEARCH_LOCK_TIMEOUT", "0.3")
    lib = data / "photos" / "BBT_Amy"
    with Collection.open(tmp_path, "default", create=True) as col, col.lock():
        t0 = time.monotonic()
        r = run_cli(["index", lib, "--home", tmp_path], ok=False)
        waited = time.monotonic() - t0
    assert r.exit_code == 1
    assert r.stderr == (
        f"Error: collection 'default' is being written by pid {os.getpid()} "
        f"(lock {tmp_path / 'default' / 'write.lock'}); wait for it to finish and try again\n"
    )
    assert 0.3 <= waited < 5
    with Collection.open(tmp_path) as col, col.session() as s:
        assert st.photo_stats(s) == {}  # the refused writer changed nothing


class InterruptedPipeline(CountingPipeline):
    """Ctrl-C while the third detector batch runs."""

    def faces_batch(self, images: Sequence[np.ndarray], detections: Any = None) -> Any:
        if self.photos >= 4:
            raise KeyboardInterrupt
        return super().faces_batch(images, detections)


def test_ctrl_c_keeps_what_was_committed(tmp_path: Path, data: Path) -> None:
    lib = data / "photos" / "BBT_Howard"  # 5 photos
    settings = IndexSettings(batch_size=2)  # detector batches of 2 photos, one commit each
    with Collection.open(tmp_path, "c", create=True) as col:
        r = index_paths(col, InterruptedPipeline(), [lib], settings)  # type: ignore[arg-type]
        assert r.interrupted and (r.new, r.faces_added) == (4, 4)
    assert_agree(tmp_path, None, "c")  # the index file was saved on the way out
    with Collection.open(tmp_path, "c") as col:
        r = index_paths(col, CountingPipeline(), [lib], settings)  # type: ignore[arg-type]
        assert not r.interrupted and (r.unchanged, r.new) == (4, 1)


def _cli_command() -> list[str]:
    return [sys.executable, "-c", "from facesearch.cli import main; main()"]


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_killed_indexing_resumes_without_duplicates(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    people = ("BBT_Amy", "BBT_Raj", "BBT_Penny", "BBT_Leonard")
    for person in people:
        shutil.copytree(data / "photos" / person, lib / person)
    n_photos = sum(len(os.listdir(lib / p)) for p in people)
    home = tmp_path / "home"
    db = home / "default" / "faces.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACESEARCH_LOCK_TIMEOUT": "30"}
    cmd = [*_cli_command(), "index", str(lib), "--labels", "folders", "--batch-size", "2"]
    cmd += ["--workers", "1", "--home", str(home)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        committed = 0
        while time.monotonic() < deadline and proc.poll() is None:
            committed = _count(db, "SELECT COUNT(*) FROM photos")
            if committed >= 4:
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"indexing finished before it could be killed: {out!r} {err!r}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kept = _count(db, "SELECT COUNT(*) FROM photos")
    assert 4 <= kept < n_photos, (kept, n_photos)
    # the rerun continues where the killed one stopped
    use_shared_pipeline(monkeypatch)
    r = run_cli(["index", lib, "--labels", "folders", "--home", home, "--json"])
    import json

    report = json.loads(r.stdout)
    assert report["unchanged"] == kept
    assert report["new"] == n_photos - kept
    with Collection.open(home) as col, col.session() as s:
        paths = st.photo_stats(s)
        assert len(paths) == n_photos  # all present, no duplicates (paths are unique)
        assert st.face_count(s) == n_photos  # one face per photo, none twice
        assert {p.name: p.faces for p in st.people(s)} == {p: 5 for p in people}
    assert_agree(home, None)


def test_pipeline_loader_runs_once_and_only_when_a_photo_needs_it(
    tmp_path: Path, data: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for f in sorted((data / "photos" / "BBT_Howard").iterdir())[:3]:
        shutil.copy(f, lib / f.name)
    (lib / "broken.jpg").write_bytes(b"not a jpeg")
    calls: list[CountingPipeline] = []

    def loader() -> CountingPipeline:
        calls.append(CountingPipeline())
        return calls[-1]

    settings = IndexSettings(batch_size=2, workers=2)
    with Collection.open(tmp_path, "c", create=True) as col:
        r = index_paths(col, loader, [lib], settings)  # type: ignore[arg-type]
        assert (r.new, r.failed, len(calls), calls[0].photos) == (3, 1, 1, 3)
        assert r.faces_added >= 3
        # nothing new: the networks are not loaded
        r = index_paths(col, loader, [lib], settings)  # type: ignore[arg-type]
        assert (r.unchanged, len(calls)) == (4, 1)

    # a loader that fails (e.g. a model file that cannot be read) stores nothing more
    shutil.copy(data / "photos" / "BBT_Amy" / "amy1.png", lib / "amy1.png")

    def bad_loader() -> CountingPipeline:
        raise FacesearchError("model file broken.fsm cannot be read")

    with Collection.open(tmp_path, "c") as col:
        with pytest.raises(FacesearchError, match="broken.fsm"):
            index_paths(col, bad_loader, [lib], settings)  # type: ignore[arg-type]
        with col.session() as s:
            assert str(lib / "amy1.png") not in st.photo_stats(s)
            assert len(st.photo_stats(s)) == 4
