"""Indexing on a local Ray cluster of two worker processes against a local run: the same rows (bit
for bit when batched alike), a worker killed mid-run, a driver killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="pip install 'facesearch[ray]'")

import numpy as np  # noqa: E402
from sqlalchemy import select  # noqa: E402

from facesearch import store as st  # noqa: E402
from facesearch.collection import Collection  # noqa: E402
from facesearch.indexer import IndexSettings, Progress, index_paths  # noqa: E402
from facesearch.pipeline import FacePipeline, PipelineConfig  # noqa: E402
from facesearch.ray_index import RaySettings, index_paths_ray  # noqa: E402
from tests.collhelpers import make_library, run_cli  # noqa: E402

CONFIG = PipelineConfig(engine="numpy")
#: Small commits and one photo per actor call: a kill lands between commits.
SETTINGS = IndexSettings(batch_size=4, workers=2)
ONE_PHOTO = RaySettings(batch_photos=1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster: two CPUs, so two worker processes (actors) at a time."""
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=128 << 20, log_to_driver=False
    )
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """The test library (faces, a photo without one, bad files, hidden files) and 12 LFW
    photos."""
    root = tmp_path_factory.mktemp("ray-library")
    lib = make_library(data, root)
    lfw = lib / "lfw"
    lfw.mkdir()
    for person in sorted((data / "lfw" / "images").iterdir())[:12]:
        first = sorted(person.iterdir())[0]
        shutil.copy(first, lfw / first.name)
    return lib


def stored(home: Path, name: str) -> list[Any]:
    """Every photo and face row (paths, sizes, status, error, boxes, landmarks, scores,
    embedding bytes, labels), in id order."""
    with Collection.open(home, name) as col, col.session() as s:
        photos = s.execute(
            select(
                st.Photo.id,
                st.Photo.path,
                st.Photo.content_hash,
                st.Photo.width,
                st.Photo.height,
                st.Photo.status,
                st.Photo.error,
            ).order_by(st.Photo.id)
        ).all()
        faces = s.execute(select(st.FaceRow).order_by(st.FaceRow.id)).scalars().all()
        return [tuple(p) for p in photos] + [
            {k: v for k, v in vars(f).items() if not k.startswith("_")} for f in faces
        ]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, library: Path) -> tuple[Path, Any]:
    home = tmp_path_factory.mktemp("ray-home")
    with Collection.open(home, "local", create=True) as col:
        rep = index_paths(col, FacePipeline(CONFIG), [library], SETTINGS)
    return home, rep


def test_ray_stores_what_a_local_run_stores(
    cluster: str, library: Path, local_run: tuple[Path, Any]
) -> None:
    home, local = local_run
    with Collection.open(home, "ray", create=True) as col:
        rep = index_paths_ray(col, [library], CONFIG, SETTINGS)
    assert stored(home, "ray") == stored(home, "local")
    got, want = rep.to_dict(), local.to_dict()
    got.pop("seconds"), want.pop("seconds")
    assert got == want
    assert rep.new == 21 and rep.failed == 3 and rep.no_face == 1
    with Collection.open(home, "ray") as col:  # again: nothing is sent, nothing changes
        again = index_paths_ray(col, [library], CONFIG, SETTINGS)
        assert (again.unchanged, again.processed) == (rep.files, 0)
        assert sorted(col.vectors.ids()) == sorted(f["id"] for f in stored(home, "ray")[24:])


def test_index_on_ray_from_the_command_line(
    cluster: str, library: Path, local_run: tuple[Path, Any]
) -> None:
    """``facesearch index PATHS --ray``: the Ray already initialised in this process serves."""
    home, _ = local_run
    args = ["--home", str(home), "--collection", "cli"]
    out = run_cli(["index", library, "--ray", "--ray-workers", "2", "--json", *args])
    rep = json.loads(out.stdout)
    assert (rep["new"], rep["failed"], rep["no_face"]) == (21, 3, 1)
    assert_same_photos(home, "cli", "local")
    again = json.loads(run_cli(["index", library, "--json", *args]).stdout)  # a local run next
    assert again["unchanged"] == rep["files"] and again["faces_added"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray", "LIB"], "photos' is not 'local', 'auto', HOST:PORT or ray://HOST:PORT (a path?"),
        (["LIB", "--ray", "host"], "'host' is not 'local'"),
        (["LIB", "--ray-workers", "2"], "--ray-workers needs --ray"),
    ],
)
def test_bad_ray_options_say_what_is_wrong(
    library: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [str(library) if a == "LIB" else a for a in args]
    res = run_cli(["index", *args, "--home", str(tmp_path)], ok=False)
    assert res.exit_code == 2 and message in res.stderr.replace("\n", " "), res.stderr
    assert not (tmp_path / "default").exists()  # nothing made


def _embed_actor_pids() -> list[int]:
    """Worker processes of this test's cluster running an EmbedActor (descendants of this
    process: the local cluster's raylet is its child)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"EmbedActor" in cmd:
            found.append(pid)
    return found


def test_a_worker_killed_mid_run_loses_nothing_and_stores_nothing_twice(
    cluster: str, library: Path, local_run: tuple[Path, Any]
) -> None:
    home, _ = local_run
    killed: list[int] = []

    def kill_one(p: Progress) -> None:
        if p.done == 5 and not killed:
            pids = _embed_actor_pids()
            assert len(pids) == 2, pids  # two worker processes embed side by side
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    with Collection.open(home, "killed", create=True) as col:
        rep = index_paths_ray(col, [library], CONFIG, SETTINGS, ONE_PHOTO, progress=kill_one)
    assert killed and rep.processed == 24
    assert_same_photos(home, "killed", "local")


def test_a_driver_killed_mid_run_is_continued_by_the_next_run(
    cluster: str, library: Path, local_run: tuple[Path, Any], tmp_path: Path
) -> None:
    home, _ = local_run
    script = textwrap.dedent(f"""
        import sys
        from facesearch.collection import Collection
        from facesearch.indexer import IndexSettings
        from facesearch.pipeline import PipelineConfig
        from facesearch.ray_index import RaySettings, index_paths_ray
        with Collection.open({str(home)!r}, "driver", create=True) as col:
            index_paths_ray(col, [{str(library)!r}], PipelineConfig(engine="numpy"),
                            IndexSettings(batch_size=4, workers=2),
                            RaySettings(address={cluster!r}, batch_photos=1))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    db = home / "driver" / "faces.db"
    deadline = time.monotonic() + 240
    try:
        while _photos(db) < 4:  # the first commit is in
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"the driver ended (exit {proc.poll()}) before a commit:\n{err}")
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    first = _photos(db)
    assert 4 <= first < 24
    with Collection.open(home, "driver") as col:
        rep = index_paths_ray(col, [library], CONFIG, SETTINGS)
    assert rep.unchanged == first and rep.processed == 24 - first
    assert_same_photos(home, "driver", "local")


def _photos(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        try:
            return int(con.execute("SELECT COUNT(*) FROM photos").fetchone()[0])
        except sqlite3.OperationalError:  # schema not made yet
            return 0


def by_path(home: Path, name: str) -> dict[str, Any]:
    """``path -> (photo columns, faces' columns, (faces, D) float32 embeddings)``, ids aside."""
    out: dict[str, Any] = {}
    rows = stored(home, name)
    photos = {p[0]: p for p in rows if isinstance(p, tuple)}
    faces: dict[int, list[dict[str, Any]]] = {}
    for f in rows:
        if isinstance(f, dict):
            faces.setdefault(f["photo_id"], []).append(f)
    skip = {"id", "photo_id", "embedding", "created_at"}
    for pid, p in photos.items():
        fs = faces.get(pid, [])
        out[p[1]] = (
            p[1:],
            [tuple(sorted((k, v) for k, v in f.items() if k not in skip)) for f in fs],
            np.array([np.frombuffer(f["embedding"], "<f4") for f in fs]),
        )
    return out


def assert_same_photos(home: Path, name: str, reference: str) -> None:
    """The same photos and faces as ``reference``; embeddings within float32 rounding (which
    crops share a forward pass changes their last bits; a run batched alike is bit-equal)."""
    got, want = by_path(home, name), by_path(home, reference)
    assert sorted(got) == sorted(want)
    for path, (photo, faces, xb) in want.items():
        assert got[path][:2] == (photo, faces), path
        np.testing.assert_allclose(got[path][2], xb, atol=2e-6, err_msg=path)
