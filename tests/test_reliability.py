"""Never a wrong answer, a hang or a traceback: what a hostile but fair user tries.

Each test drives ``facesearch`` as a user does (CliRunner, or a subprocess where a hang, a
signal or the process's memory is the point) on SQLite and, where the store matters,
PostgreSQL. Subprocesses are bounded by timeouts and killed when they overrun.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import sqlalchemy as sa
from collhelpers import (
    BACKENDS,
    assert_agree,
    assert_agree_or_empty,
    collection_args,
    count_write_steps,
    make_library,
    moments,
    pg_module_url,  # noqa: F401
    run_cli,
    run_cli_interrupted,
    stored_state,
    use_shared_pipeline,
)
from dbhelpers import collection_db, pg_schema_url, private_schema  # noqa: F401
from PIL import Image

from facesearch import api
from facesearch.cli import main

#: ``facesearch`` as a console script (the quick exit included).
SCRIPT = (
    "import sys\nfrom facesearch.cli import run\nsys.argv = ['facesearch', *sys.argv[1:]]\nrun()\n"
)


def facesearch(
    args: list[Any], *, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``facesearch ARGS`` in a child process; a child that overruns is killed."""
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, args)],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        env={**os.environ, **(env or {})},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def child(args: list[Any], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``facesearch ARGS`` started in the background; killed on the way out if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="backslashreplace",
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def one_error_line(stderr: str) -> str:
    """The ``Error: ...`` line of a failed command; fails on a traceback or several errors."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture(scope="module", params=BACKENDS)
def library(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: Path
) -> Iterator[dict[str, Any]]:
    """The test library indexed with --labels folders (SQLite or PostgreSQL)."""
    db_url = None if request.param == "sqlite" else request.getfixturevalue("pg_module_url")
    root = tmp_path_factory.mktemp("robust")
    lib = make_library(data, root)
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        use_shared_pipeline(mp)
        run_cli(["index", lib, "--labels", "folders", *collection_args(home, db_url)])
    yield {
        "root": root,
        "lib": lib,
        "home": home,
        "db": db_url,
        "args": collection_args(home, db_url),
    }


def _person_of(out: str) -> tuple[str | None, float | None]:
    (face,) = json.loads(out)
    return face["person"], face["distance"]


# -- 1. a corrupt vector file never gives a confident wrong answer --------------------------------


def _swap_vectors(index_file: Path, home: Path, db: str | None, a: str, b: str) -> None:
    """Overwrite, inside the FAISS bytes of ``index_file`` (trailer intact), the vectors of
    ``a``'s faces with one of ``b``'s and the other way round."""
    import faiss

    index = faiss.read_index(str(index_file))
    n, d = index.ntotal, index.d
    xb = faiss.rev_swig_ptr(faiss.downcast_index(index.index).get_xb(), n * d)
    xb = np.array(xb, dtype=np.float32).reshape(n, d)
    ids = faiss.vector_to_array(index.id_map)
    with api.open_collection(home, db_url=db) as col:
        person = {int(i): api.get_face(col, int(i)).person for i in ids}
    rows = {p: [k for k, i in enumerate(ids) if person[int(i)] == p] for p in (a, b)}
    raw = bytearray(index_file.read_bytes())
    at = {k: raw.find(xb[k].tobytes()) for k in rows[a] + rows[b]}  # before any change
    assert min(at.values()) >= 0
    for mine, theirs in ((a, b), (b, a)):
        for k in rows[mine]:
            raw[at[k] : at[k] + 4 * d] = xb[rows[theirs][0]].tobytes()
    index_file.write_bytes(bytes(raw))


@contextlib.contextmanager
def _corrupted(library: dict[str, Any]) -> Iterator[Path]:
    """The library's vector file with Amy's and Raj's vectors swapped; restored afterwards."""
    home, db = library["home"], library["db"]
    index_file = home / "default" / "vectors.faiss"
    run_cli(["info", *library["args"]])  # the file is current
    saved = index_file.read_bytes()
    _swap_vectors(index_file, home, db, "BBT_Amy", "BBT_Raj")
    try:
        yield index_file
    finally:
        index_file.write_bytes(saved)


def test_query_never_uses_a_corrupt_vector_file(
    library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    raj = data / "photos" / "BBT_Raj" / "raj5.png"
    clean = _person_of(run_cli(["query", raj, "--json", *library["args"]]).stdout)
    assert clean[0] == "BBT_Raj"
    with _corrupted(library):
        info = json.loads(run_cli(["info", "--json", *library["args"]]).stdout)
        assert info["consistency"]["index_status"] == "corrupt"
        got = _person_of(run_cli(["query", raj, "--json", *library["args"]]).stdout)
        assert got[0] == "BBT_Raj" and got[1] == pytest.approx(clean[1], abs=1e-4)
        # the reader could write: the rebuilt file is saved
        info = json.loads(run_cli(["info", "--json", *library["args"]]).stdout)
        assert info["consistency"]["consistent"], info["consistency"]


def test_query_with_a_corrupt_file_while_a_writer_holds_the_lock(
    library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that cannot save a rebuilt index (another writer) still answers right."""
    use_shared_pipeline(monkeypatch)
    raj = data / "photos" / "BBT_Raj" / "raj5.png"
    with _corrupted(library) as index_file:
        corrupt = index_file.read_bytes()
        with api.open_collection(library["home"], db_url=library["db"]) as writer, writer.lock():
            got = _person_of(run_cli(["query", raj, "--json", *library["args"]]).stdout)
            assert got[0] == "BBT_Raj"
            assert index_file.read_bytes() == corrupt  # a reader never writes the writer's file


def test_a_large_file_is_checked_block_by_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory-mapped pq file too large to check whole at open is checked as searches read
    it: a corrupt block is never used."""
    from dbhelpers import unit_vectors

    import facesearch.vectors as vectors
    from facesearch.errors import IndexMismatchError

    rng = np.random.default_rng(0)
    xb = unit_vectors(rng, vectors.PQ_MIN_TRAIN, 16)
    ids = np.arange(len(xb), dtype=np.int64) + 1
    path = tmp_path / "v.faiss"
    vi = vectors.VectorIndex.build(ids, xb, "pq")
    assert vi.accelerated
    vi.save(path)
    raw = bytearray(path.read_bytes())
    at = raw.find(xb[7000].tobytes())
    raw[at : at + 64] = xb[3].tobytes()[:64]  # row 7000 now looks like row 3
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(vectors, "VERIFY_WHOLE_BYTES", 0)
    lazy = vectors.VectorIndex.load(path)  # cheap: nothing read yet
    _, ids_found = lazy.search(xb[100:101], 5)  # far from the bad block: answered
    assert ids_found[0, 0] == 101
    with pytest.raises(IndexMismatchError, match="fail their checksum"):
        lazy.search(xb[7000:7001], 5)  # its candidates are in the bad block
    with pytest.raises(IndexMismatchError, match="checksum"):
        vectors.VectorIndex.load(path, verify=True)


# -- 2. file names that are not UTF-8 -------------------------------------------------------------


def test_file_name_that_is_not_utf8(
    tmp_path: Path,
    data: Path,
    collection_db: str | None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_shared_pipeline(monkeypatch)
    lib = tmp_path / "lib" / "BBT_Raj"
    lib.mkdir(parents=True)
    shutil.copy(data / "photos" / "BBT_Raj" / "raj1.png", lib / "raj1.png")
    bad = os.fsdecode(os.fsencode(lib) + b"/bad_\xff.png")  # surrogate-escaped str
    shutil.copy(data / "photos" / "BBT_Raj" / "raj2.png", bad)
    args = [*collection_args(tmp_path / "home", collection_db), "--json"]
    first = json.loads(run_cli(["index", lib.parent, "--labels", "folders", *args]).stdout)
    assert (first["new"], first["failed"], first["faces_added"]) == (2, 0, 2), first
    again = json.loads(run_cli(["index", lib.parent, "--labels", "folders", *args]).stdout)
    assert (again["unchanged"], again["new"], again["failed"]) == (2, 0, 0), again
    (face,) = json.loads(run_cli(["query", bad, *args]).stdout)
    assert face["person"] == "BBT_Raj"
    assert bad in {m["photo"] for m in face["matches"]}  # the same path comes back
    assert_agree(tmp_path / "home", collection_db)
    latin = os.fsdecode(os.fsencode(tmp_path / "lib") + b"/Jos\xe9")  # a Latin-1 folder name
    os.mkdir(latin)
    shutil.copy(data / "photos" / "BBT_Raj" / "raj3.png", os.path.join(latin, "r.png"))
    run_cli(["index", lib.parent, "--labels", "folders", *args])
    people = json.loads(run_cli(["people", *args]).stdout)
    assert {p["person"] for p in people} == {"BBT_Raj", "José"}
    # the text output of a real console carries the path too
    res = facesearch(["query", bad, *args[:-1]])
    assert res.returncode == 0, res.stderr
    assert "bad_" in res.stdout and "Traceback" not in res.stderr


# -- 3. only regular files are opened; Ctrl-C stops promptly --------------------------------------


def test_fifo_never_hangs_index_query_or_detect(tmp_path: Path, data: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(data / "photos" / "BBT_Raj" / "raj1.png", lib / "raj1.png")
    fifo = lib / "photo.jpg"
    os.mkfifo(fifo)
    home = tmp_path / "home"
    res = facesearch(["index", lib, "--home", home, "--json"], timeout=90)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["new"], report["failed"]) == (1, 1), report
    (failure,) = report["failures"]
    assert failure["path"] == str(fifo) and "not a regular file" in failure["error"]
    res = facesearch(["query", fifo, "--home", home], timeout=60)
    assert res.returncode == 1, res.stderr
    assert "not a regular file" in one_error_line(res.stderr)
    res = facesearch(["detect", fifo, lib / "raj1.png"], timeout=60)  # one bad photo of two
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"error: cannot read image {fifo}: not a regular file" in res.stderr
    assert "raj1.png: 1 face(s)" in res.stdout


def _photos(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM photos").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _interrupt_when(proc: subprocess.Popen[str], ready: Any, *, within: float = 120) -> float:
    """Send SIGINT once ``ready()``; returns the seconds the process took to exit after it."""
    deadline = time.monotonic() + within
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never got going"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    return time.monotonic() - sent


@pytest.mark.slow
def test_ctrl_c_stops_index_promptly_and_keeps_what_was_committed(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    photos = sorted((data / "lfw" / "images").glob("A*/*.jpg"))[:160]
    for p in photos:
        (lib / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, lib / p.parent.name / p.name)
    os.mkfifo(lib / photos[40].parent.name / "stuck.jpg")  # never blocks the run
    home = tmp_path / "home"
    db = home / "default" / "faces.db"
    cmd = ["index", lib, "--home", home, "--batch-size", "4", "--workers", "2"]
    with child(cmd, env={"OMP_NUM_THREADS": "1"}) as proc:
        took = _interrupt_when(proc, lambda: _photos(db) >= 8)
        assert proc.poll() is not None, "index ignored Ctrl-C"
        _, err = proc.communicate()
    assert took < 10, f"index took {took:.1f} s to stop after Ctrl-C"
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert_agree(home, None)
    kept = _photos(db)
    use_shared_pipeline(monkeypatch)
    report = json.loads(run_cli(["index", lib, "--home", home, "--json"]).stdout)
    assert report["unchanged"] == kept and report["new"] + report["failed"] == 161 - kept, report
    assert_agree(home, None)


def test_ctrl_c_stops_a_query_on_a_fifo(tmp_path: Path) -> None:
    """Even a read that does block (a FIFO named explicitly) gives way to Ctrl-C."""
    fifo = tmp_path / "q.jpg"
    os.mkfifo(fifo)
    with child(["detect", fifo]) as proc:
        time.sleep(3)  # started, and reading (or already refused)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        assert proc.poll() is not None, "detect on a FIFO ignored Ctrl-C"
        _, err = proc.communicate()
    assert proc.returncode != 0 and "Traceback" not in err


@contextlib.contextmanager
def _fresh_db(backend_db: str | None) -> Iterator[str | None]:
    """A new, empty database on the backend of ``backend_db`` (``None``: SQLite)."""
    if backend_db is None:
        yield None
        return
    with private_schema() as url:
        yield url


def _index_args(lib: Path, home: Path, db: str | None) -> list[Any]:
    return ["index", lib, "--labels", "folders", "--batch-size", "2", "--json",
            *collection_args(home, db)]  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_index_leaves_sql_and_index_in_step(
    library: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C at every step of a write (a commit under way, between a commit and the
    vector-index update, the update, the index file written and renamed, the report counting a
    commit) and at moments spread over the run: the run stops at the next safe point, the index
    file agrees with SQL, the report counts what SQL holds, and a rerun completes the clean
    state: nothing lost, nothing twice."""
    use_shared_pipeline(monkeypatch)
    lib, backend = library["lib"], library["db"]
    with _fresh_db(backend) as url:
        counts = count_write_steps(_index_args(lib, tmp_path / "clean", url))
        clean = stored_state(tmp_path / "clean", url)
    chosen = moments(counts)
    if backend is not None:  # a fresh schema each: the commit steps, and two spread moments
        chosen = [m for m in chosen if "commit" in m.function or "_apply" in m.function]
        chosen += moments({"*": counts["*"]}, spread=2)
    inside = []
    for i, moment in enumerate(chosen):
        home = tmp_path / f"h{i}"
        with _fresh_db(backend) as url:
            res, in_section = run_cli_interrupted(_index_args(lib, home, url), moment)
            inside.append(in_section)
            assert_agree_or_empty(home, url)
            state = stored_state(home, url)
            assert {p: clean[p] for p in state} == state, moment  # whole photos only
            if res.stdout:
                report = json.loads(res.stdout)
                assert report["new"] + report["failed"] == len(state), (moment, report)
                assert report["faces_added"] == sum(n for _, n, _, _ in state.values())
            run_cli(_index_args(lib, home, url))
            assert stored_state(home, url) == clean, moment
            assert_agree(home, url)
        shutil.rmtree(home)
    assert inside.count(None) <= 2, "most moments must come before the run ends"
    assert inside.count(True) >= 4, "some moments must fall inside critical sections"


def _groups(home: Path) -> frozenset[frozenset[int]]:
    """The clusters SQL holds, as sets of face ids (cluster ids left out)."""
    groups: dict[int, set[int]] = {}
    with api.open_collection(home) as col, col.session() as s:
        for face_id, cluster_id in s.execute(sa.text("SELECT id, cluster_id FROM faces")):
            if cluster_id is not None:
                groups.setdefault(int(cluster_id), set()).add(int(face_id))
    return frozenset(frozenset(g) for g in groups.values())


def _people(home: Path) -> dict[str, int]:
    with api.open_collection(home) as col:
        return {p.name: p.faces for p in api.list_people(col, limit=100).items}


@pytest.mark.slow
@pytest.mark.parametrize("command", ["cluster", "people merge"])
def test_ctrl_c_at_any_moment_of_cluster_or_people_merge_is_all_or_nothing(
    command: str, tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C at every write step of ``cluster --full`` (unlabelled faces) and of ``people
    merge``: SQL holds the state before or the state after, the index file agrees, and the
    command run again gives the clean result."""
    use_shared_pipeline(monkeypatch)
    lib = make_library(data, tmp_path)
    base = tmp_path / "base"
    if command == "cluster":
        run_cli(["index", lib, "--home", base])  # unlabelled: every face is clustered
        args = ["cluster", "--full", "--home"]
        state = _groups
    else:
        run_cli(["index", lib, "--labels", "folders", "--home", base])
        args = ["people", "merge", "BBT_Amy", "BBT_Raj", "--home"]
        state = _people  # type: ignore[assignment]
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    counts = count_write_steps([*args, clean])
    before, after = state(base), state(clean)
    assert after != before
    inside = []
    for i, moment in enumerate(moments(counts)):
        home = tmp_path / f"h{i}"
        shutil.copytree(base, home)
        _, in_section = run_cli_interrupted([*args, home], moment)
        inside.append(in_section)
        assert state(home) in (before, after), moment
        assert_agree(home, None)
        if state(home) == before:
            run_cli([*args, home])
        assert state(home) == after, moment
        assert_agree(home, None)
        shutil.rmtree(home)
    assert inside.count(None) <= 1 and inside.count(True) >= 1, inside


# -- 4. an explicit --home/--collection/--db wins over FACESEARCH_HOME ----------------------------


def _dummy_args(cmd: click.Command, files: Path) -> list[str]:
    """Values for ``cmd``'s arguments and required options (enough to reach the collection)."""
    out: list[str] = []
    for p in cmd.params:
        if isinstance(p, click.Option) and p.required:
            out += [p.opts[0], "1"]
    for p in cmd.params:
        if not isinstance(p, click.Argument):
            continue  # optional arguments too: some commands need one of them or an option
        if isinstance(p.type, click.types.IntParamType):
            values = ["1", "2"]
        elif isinstance(p.type, click.Path):
            values = [str(files if p.type.dir_okay and not p.type.file_okay else files / "x.png")]
        else:
            values = ["Alpha", "Beta"]
        out += values if p.nargs == -1 else values[:1] if p.nargs == 1 else values[: p.nargs]
    return out


def _commands_with_a_collection() -> list[tuple[str, ...]]:
    """Every (command,) and (group, subcommand) of the CLI that takes --home."""
    pairs: list[tuple[str, ...]] = []
    for name, cmd in sorted(main.commands.items()):
        has_home = any(p.name == "home" for p in cmd.params)
        if has_home:
            pairs.append((name,))
        if isinstance(cmd, click.Group):
            for sub_name, sub in sorted(cmd.commands.items()):
                if any(p.name == "home" for p in sub.params):
                    pairs.append((name, sub_name))
    return pairs


class _Opened(Exception):
    pass


@pytest.fixture
def record_opens(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str | None]]:
    """Collections the CLI opens, as ``(home, name, db_url)``; opening stops the command."""
    from facesearch.collection import Collection
    from facesearch.errors import FacesearchError

    opened: list[tuple[str, str, str | None]] = []

    def fake_open(cls: Any, home: Any, name: str = "default", db_url: str | None = None,
                  create: bool = False, **kw: Any) -> Any:  # fmt: skip
        opened.append((os.fspath(home), name, db_url))
        raise FacesearchError("collection opened")

    monkeypatch.setattr(Collection, "open", classmethod(fake_open))
    return opened


@pytest.mark.parametrize("path", _commands_with_a_collection(), ids="-".join)
def test_explicit_collection_options_win_over_the_environment(
    path: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_opens: list[tuple[str, str, str | None]],
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    monkeypatch.setenv("FACESEARCH_HOME", str(tmp_path / "from-env"))
    monkeypatch.setenv("FACESEARCH_LOCK_TIMEOUT", "1")
    cmd: click.Command = main
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    explicit = ["--home", str(tmp_path / "B"), "--collection", "bee", "--db", "sqlite:///b.db"]
    on_group = len(path) == 2 and any(p.name == "home" for p in main.commands[path[0]].params)
    if on_group:
        args = [path[0], *explicit, path[1], *_dummy_args(cmd, tmp_path)]
    else:
        args = [*path, *explicit, *_dummy_args(cmd, tmp_path)]
    res = run_cli(args, ok=False)
    if not record_opens:  # reached the collection another way: its message names the folder
        assert str(tmp_path / "B") in res.output and "from-env" not in res.output, res.output
        return
    assert record_opens[0] == (str(tmp_path / "B"), "bee", "sqlite:///b.db"), (args, res.output)
    if on_group:  # the subcommand's own options win over the group's
        record_opens.clear()
        own = ["--home", str(tmp_path / "C"), "--collection", "cee"]
        run_cli([path[0], *explicit, path[1], *_dummy_args(cmd, tmp_path), *own], ok=False)
        assert record_opens and record_opens[0] == (str(tmp_path / "C"), "cee", "sqlite:///b.db")


# -- 5. a store belongs to one collection; the writer lock lives with the data ---------------------


@pytest.fixture(params=BACKENDS)
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL given explicitly with --db: a SQLite file outside any collection, or a
    private PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


def test_a_store_belongs_to_one_collection(
    tmp_path: Path, data: Path, shared_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    lib = tmp_path / "lib" / "BBT_Raj"
    lib.mkdir(parents=True)
    shutil.copy(data / "photos" / "BBT_Raj" / "raj1.png", lib / "raj1.png")
    home = tmp_path / "home"
    run_cli(["index", lib.parent, "--labels", "folders", *collection_args(home, shared_db, "a")])
    res = run_cli(["index", lib.parent, *collection_args(home, shared_db, "b")], ok=False)
    assert res.exit_code == 1, res.output
    line = one_error_line(res.stderr)
    assert "belongs to collection 'a'" in line and "--collection a" in line, line
    assert not (home / "b" / "collection.json").exists()
    # a second collection made on that database before stores knew their collection
    (home / "b").mkdir()
    config = json.loads((home / "a" / "collection.json").read_text())
    (home / "b" / "collection.json").write_text(json.dumps({**config, "name": "b"}))
    for cmd in (["info"], ["people"], ["people", "rename", "BBT_Raj", "Raj"]):
        res = run_cli([*cmd, *collection_args(home, shared_db, "b")], ok=False)
        assert res.exit_code == 1, res.output
        assert "belongs to collection 'a'" in one_error_line(res.stderr)
    info = json.loads(run_cli(["info", "--json", *collection_args(home, shared_db, "a")]).stdout)
    assert (info["photos"], info["faces"]) == (1, 1)


def test_writers_sharing_a_store_exclude_each_other(
    tmp_path: Path, data: Path, shared_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two homes (say two machines) share one collection's database on purpose: the writer
    lock is taken in the database, not in either home."""
    use_shared_pipeline(monkeypatch)
    lib = tmp_path / "lib" / "BBT_Raj"
    lib.mkdir(parents=True)
    shutil.copy(data / "photos" / "BBT_Raj" / "raj1.png", lib / "raj1.png")
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli(["index", lib.parent, "--labels", "folders", *collection_args(one, shared_db)])
    run_cli(["index", lib.parent, *collection_args(two, shared_db)])  # shared on purpose
    monkeypatch.setenv("FACESEARCH_LOCK_TIMEOUT", "0.5")
    with api.open_collection(one, db_url=shared_db) as col, col.lock():
        rename = ["people", "rename", "BBT_Raj", "Raj", *collection_args(two, shared_db)]
        res = run_cli(rename, ok=False)
        assert res.exit_code == 1 and "is being written by" in one_error_line(res.stderr)
        shutil.copy(data / "photos" / "BBT_Raj" / "raj2.png", lib / "raj2.png")
        res = run_cli(["index", lib.parent, *collection_args(two, shared_db)], ok=False)
        assert res.exit_code == 1 and "is being written by" in one_error_line(res.stderr)
    run_cli(["index", lib.parent, *collection_args(two, shared_db)])
    assert_agree(two, shared_db)
    raj = data / "photos" / "BBT_Raj" / "raj5.png"
    (face,) = json.loads(run_cli(["query", raj, "--json", *collection_args(one, shared_db)]).stdout)
    assert face["person"] == "BBT_Raj"
    assert_agree(one, shared_db)  # the other home's cache was rebuilt from SQL by that query


# -- 6. decoded pixels are budgeted; big JPEGs are decoded reduced --------------------------------


#: The console script, writing its own peak resident memory (``VmHWM``, kB) to ``argv[1]`` at
#: exit: the high-water mark of the process's own memory after exec (``ru_maxrss`` of a child
#: counts the forked copy of a large parent, such as the test process, too).
MEMORY_SCRIPT = (
    "import atexit, sys\n"
    "out = sys.argv.pop(1)\n"
    "def peak():\n"
    "    hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
    "    open(out, 'w').write(hwm.split()[1])\n"
    "atexit.register(peak)\n" + SCRIPT
)


def _peak_rss_mb(args: list[Any], env: dict[str, str] | None = None) -> float:
    """Peak resident memory (MB) of ``facesearch ARGS``, which must succeed."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status (Linux) to read a process's peak memory")
    out = Path(str(args[-1]) + ".peak")
    res = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(out), *map(str, args)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return int(out.read_text()) / 1024


def _big(src: Path, out: Path, size: tuple[int, int]) -> Path:
    """A large photo: ``src`` on a plain canvas of ``size`` (small when compressed)."""
    canvas = Image.new("RGB", size, (200, 190, 180))
    face = Image.open(src).convert("RGB").resize((size[1] // 4, size[1] // 4))
    canvas.paste(face, (size[0] // 3, size[1] // 3))
    canvas.save(out, quality=60) if out.suffix == ".jpg" else canvas.save(out, compress_level=1)
    return out


@pytest.mark.slow
def test_decoded_pixels_are_budgeted_across_read_threads(tmp_path: Path, data: Path) -> None:
    """Four 25-megapixel PNGs read by four threads: with a budget of one such photo at a time
    the run's peak memory is well below the same run with room for all four."""
    src = data / "photos" / "BBT_Raj" / "raj1.png"
    big = tmp_path / "big"
    big.mkdir()
    for i in range(4):
        _big(src, big / f"p{i}.png", (5000, 5000))
    args = ["index", big, "--workers", "4", "--home"]
    tight = _peak_rss_mb([*args, tmp_path / "h1"], {"FACESEARCH_DECODE_MEGAPIXELS": "30"})
    loose = _peak_rss_mb([*args, tmp_path / "h2"], {"FACESEARCH_DECODE_MEGAPIXELS": "1000"})
    # measured: 1138 against 1521 MB (a 25 MP photo costs ~75 MB as RGB, ~250 MB decoding)
    assert tight < loose - 200, (tight, loose)


def _stored_faces(home: Path) -> dict[str, list[tuple[tuple[float, ...], np.ndarray, int, int]]]:
    """Per photo file name: its faces' ``(box, embedding, photo width, photo height)``."""
    from facesearch import store as st
    from facesearch.collection import Collection

    out: dict[str, list[tuple[tuple[float, ...], np.ndarray, int, int]]] = {}
    with Collection.open(home) as col, col.session() as s:
        for path in [r[0] for r in s.execute(sa.text("SELECT path FROM photos"))]:
            photo = st.photo_by_path(s, path)
            assert photo is not None
            size = s.execute(
                sa.text("SELECT width, height FROM photos WHERE id = :i"), {"i": photo.id}
            ).one()
            out[Path(path).name] = [
                (f.box, st.face_embedding(s, f.face_id)[0], int(size[0]), int(size[1]))
                for f in st.faces_of_photo(s, photo.id)
            ]
    return out


@pytest.mark.slow
def test_a_jpeg_far_larger_than_the_detector_needs_is_decoded_reduced(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the reduced-decode side lowered so that a 4600 px JPEG is decoded at 1/2 (the
    default, 4480 px, reduces JPEGs of 8960 px and more): its faces are stored in
    full-resolution pixels, box and embedding close to a full decode's; the photo's stored size
    is its full size; a photo below twice the side is decoded exactly as before (the same
    pixels: the same faces, up to float rounding in a batch of other photos); and the decode
    budget counts the reduced pixels."""
    import facesearch.indexer as indexer
    from facesearch.image import decode_pixels

    use_shared_pipeline(monkeypatch)
    lib = tmp_path / "lib"
    lib.mkdir()
    big = data / "photos" / "George_Clooney" / "img40.jpg"  # 3061x4600
    shutil.copy(big, lib / "big.jpg")
    shutil.copy(data / "photos" / "Barack_Obama" / "obama3.jpg", lib / "normal.jpg")  # 2333
    run_cli(["index", lib, "--home", tmp_path / "full"])
    monkeypatch.setattr(indexer, "_decode_side", lambda pipeline: 2000)
    assert decode_pixels(lib / "big.jpg", 2000) == 1531 * 2300
    assert decode_pixels(lib / "normal.jpg", 2000) == 1434 * 2333
    run_cli(["index", lib, "--home", tmp_path / "reduced"])
    full, reduced = _stored_faces(tmp_path / "full"), _stored_faces(tmp_path / "reduced")
    assert [len(full[n]) for n in ("big.jpg", "normal.jpg")] == [1, 1]
    for (box_a, emb_a, *size_a), (box_b, emb_b, *size_b) in zip(
        full["normal.jpg"], reduced["normal.jpg"], strict=True
    ):
        assert size_a == size_b and np.allclose(box_a, box_b, atol=1e-3)
        assert np.allclose(emb_a, emb_b, atol=1e-5)
    (box_a, emb_a, *size_a), (box_b, emb_b, *size_b) = full["big.jpg"][0], reduced["big.jpg"][0]
    assert size_a == size_b == [3061, 4600]
    width = box_a[2] - box_a[0]
    assert max(abs(a - b) for a, b in zip(box_a, box_b, strict=True)) < 0.03 * width
    # measured 0.24 (bench/reduced_decode.py): a full decode's crop is sampled down from a
    # face of ~1500 px without antialiasing, the reduced one from ~750 px; tau is 1.147
    assert float(np.linalg.norm(emb_a - emb_b)) < 0.35


# -- 7. operational errors: one line, non-zero, nothing lost ---------------------------------------


@contextlib.contextmanager
def small_disk(where: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of ``size_kb`` KB mounted at ``where`` (skips where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command: the disk-full tests need a small tmpfs")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte."""
    filler = folder / f"filler{len(list(folder.glob('filler*')))}"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
                    f.flush()
    return filler


@pytest.mark.parametrize(
    "args, expected",
    [
        (["index", "{lib}", "--db", "postgresql+psycopg://postgres@127.0.0.1:9/nodb"], "connect"),
        (["index", "{lib}", "--db", "not a url"], "--db"),
        (["index", "{lib}", "--db", "nosuchdialect://x/y"], "--db"),
        (["index", "{lib}", "--home", "{file}/below"], "below"),
        (["query", "{photo}", "--home", "{file}/below"], "below"),
        (["info", "--home", "{file}"], "file"),
        (["cluster", "--threshold", "nan", "--home", "{home}"], "nan"),
    ],
)
def test_operational_errors_are_one_line(
    args: list[str], expected: str, library: dict[str, Any], data: Path
) -> None:
    if library["db"] is not None:
        pytest.skip("no store of its own: the SQLite run covers these")
    notes = library["root"] / "notes.txt"
    notes.write_text("a file, not a folder\n")
    values = {
        "lib": str(library["lib"]),
        "file": str(notes),
        "photo": str(data / "photos" / "BBT_Raj" / "raj5.png"),
        "home": str(library["home"]),
    }
    res = facesearch([a.format(**values) for a in args], timeout=60)
    assert res.returncode in (1, 2), res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    line = res.stderr.strip().splitlines()
    assert any(expected in x for x in line if x.startswith("Error")), res.stderr
    if res.returncode == 1:
        one_error_line(res.stderr)


def test_a_corrupt_sqlite_file_is_one_line_and_left_alone(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    lib = tmp_path / "lib" / "BBT_Raj"
    lib.mkdir(parents=True)
    shutil.copy(data / "photos" / "BBT_Raj" / "raj1.png", lib / "raj1.png")
    home = tmp_path / "home"
    run_cli(["index", lib.parent, "--home", home])
    db = home / "default" / "faces.db"
    garbage = bytes(np.random.default_rng(0).integers(0, 256, db.stat().st_size, dtype=np.uint8))
    db.write_bytes(garbage)
    for cmd in (["info"], ["index", lib.parent], ["query", lib / "raj1.png"], ["people"]):
        res = facesearch([*cmd, "--home", home], timeout=60)
        assert res.returncode == 1, res.stderr
        line = one_error_line(res.stderr)
        assert str(db) in line and "corrupt" in line, line
        assert db.read_bytes() == garbage  # nothing is "repaired" over it


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_loses_nothing(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    lib = make_library(data, tmp_path)
    with small_disk(tmp_path / "disk", 16384) as disk:
        home = disk / "home"
        run_cli(["index", lib / "BBT_Amy", "--labels", "folders", "--home", home])
        filler = _fill(disk)
        res = run_cli(["index", lib, "--labels", "folders", "--home", home], ok=False)
        assert res.exit_code == 1, res.output
        line = one_error_line(res.stderr)
        assert "no space left" in line.lower() and str(disk) in line, line
        # a reader answers on a full disk, even when it has to rebuild the index
        (home / "default" / "vectors.faiss").unlink()
        filler2 = _fill(disk)
        raj = data / "photos" / "BBT_Amy" / "amy4.png"
        res = run_cli(["query", raj, "--json", "--home", home], ok=False)
        assert res.exit_code == 0, res.output
        assert _person_of(res.stdout)[0] == "BBT_Amy"
        filler.unlink(missing_ok=True)
        filler2.unlink(missing_ok=True)
        again = json.loads(
            run_cli(["index", lib, "--labels", "folders", "--home", home, "--json"]).stdout
        )
        assert again["unchanged"] + again["new"] + again["failed"] == 12, again
        assert_agree(home, None)
        info = json.loads(run_cli(["info", "--json", "--home", home]).stdout)
        assert (info["photos"], info["faces"], info["people"]) == (12, 8, 3)


def test_query_answers_when_the_index_cannot_be_saved(
    library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that rebuilds the index and cannot write it (disk full) still answers."""
    import faiss

    use_shared_pipeline(monkeypatch)
    index_file = library["home"] / "default" / "vectors.faiss"
    saved = index_file.read_bytes()
    index_file.unlink()

    def full(*a: Any, **k: Any) -> None:
        raise RuntimeError("write error in vectors.faiss: 0 != 4096 (No space left on device)")

    monkeypatch.setattr(faiss, "write_index", full)
    try:
        raj = data / "photos" / "BBT_Raj" / "raj5.png"
        res = run_cli(["query", raj, "--json", *library["args"]], ok=False)
        assert res.exit_code == 0, res.output
        assert _person_of(res.stdout)[0] == "BBT_Raj"
    finally:
        monkeypatch.undo()
        if not index_file.exists():
            index_file.write_bytes(saved)


@pytest.mark.postgres
def test_postgresql_connection_lost_mid_run_is_one_line(
    tmp_path: Path,
    data: Path,
    pg_schema_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server ends the connection in the middle of ``index`` (as a restart does)."""
    import sqlalchemy as sa

    from facesearch import store as st

    use_shared_pipeline(monkeypatch)
    lib = make_library(data, tmp_path)
    args = collection_args(tmp_path / "home", pg_schema_url)
    run_cli(["index", lib / "BBT_Amy", "--labels", "folders", *args])
    admin = sa.create_engine(pg_schema_url, isolation_level="AUTOCOMMIT")
    real = st.add_photos
    calls = []

    def add_then_lose(s: Any, *a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the second batch: its connection is ended under it
            pid = s.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        return real(s, *a, **k)

    monkeypatch.setattr(st, "add_photos", add_then_lose)
    try:
        res = run_cli(["index", lib, "--labels", "folders", "--batch-size", "2", *args], ok=False)
    finally:
        admin.dispose()
    assert res.exit_code == 1, res.output
    line = one_error_line(res.stderr)
    assert "connection" in line.lower() and "127.0.0.1" in line, line
    monkeypatch.setattr(st, "add_photos", real)
    again = json.loads(run_cli(["index", lib, "--labels", "folders", "--json", *args]).stdout)
    assert again["unchanged"] + again["new"] + again["failed"] == 12, again
    assert_agree(tmp_path / "home", pg_schema_url)


# -- 8. NaN and inf are rejected by every float option --------------------------------------------


def _float_params() -> list[tuple[str, click.Parameter]]:
    out = []

    def visit(cmd: click.Command, path: str) -> None:
        for p in cmd.params:
            if isinstance(p.type, click.types.FloatParamType):
                out.append((f"{path} {p.name}", p))
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                visit(sub, f"{path} {name}")

    visit(main, "facesearch")
    return out


def test_the_cli_has_float_options() -> None:
    names = [n for n, _ in _float_params()]
    assert "facesearch query threshold" in names and "facesearch cluster threshold" in names


@pytest.mark.parametrize("name, param", _float_params(), ids=[n for n, _ in _float_params()])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_every_float_option_rejects_nan_and_inf(
    name: str, param: click.Parameter, value: str
) -> None:
    ctx = click.Context(main)
    with pytest.raises(click.BadParameter, match="finite"):
        param.type.convert(value, param, ctx)


def test_nan_threshold_is_a_usage_error(library: dict[str, Any], data: Path) -> None:
    raj = data / "photos" / "BBT_Raj" / "raj5.png"
    for cmd in (["query", raj, "--threshold", "nan"], ["cluster", "--threshold", "nan"]):
        res = run_cli([*cmd, *library["args"]], ok=False)
        assert res.exit_code == 2 and "finite" in res.stderr, res.output
    with (
        api.open_collection(library["home"], db_url=library["db"]) as col,
        pytest.raises(api.ArgumentError, match="finite"),
    ):
        api.identify(col, raj, threshold=math.nan)


def test_lock_timeout_must_be_a_finite_number(
    library: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for raw in ("nan", "inf", "-1"):
        monkeypatch.setenv("FACESEARCH_LOCK_TIMEOUT", raw)
        res = run_cli(["people", "rename", "nobody", "x", *library["args"]], ok=False)
        assert res.exit_code == 2 and "FACESEARCH_LOCK_TIMEOUT" in res.stderr, res.output


# -- 9. unreadable folders are counted; --rehash ---------------------------------------------------


@contextlib.contextmanager
def _unreadable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Iterator[None]:
    """``folder`` cannot be listed nor its entries looked at, as a mode-000 folder for a user
    who is not its owner (the tests may run as root, for whom permissions do not apply)."""
    real_scandir, real_stat, real_lstat = os.scandir, os.stat, os.lstat
    inside = os.fspath(folder) + os.sep

    def denied(path: Any) -> OSError:
        return PermissionError(13, "Permission denied", os.fspath(path))

    def scandir(path: Any = ".") -> Any:
        if os.fspath(path) == os.fspath(folder):
            raise denied(path)
        return real_scandir(path)

    def stat(path: Any, *a: Any, **k: Any) -> Any:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(inside):
            raise denied(path)
        return real_stat(path, *a, **k)

    def lstat(path: Any, *a: Any, **k: Any) -> Any:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(inside):
            raise denied(path)
        return real_lstat(path, *a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(os, "scandir", scandir)
        mp.setattr(os, "stat", stat)
        mp.setattr(os, "lstat", lstat)
        yield


def test_unreadable_folder_is_counted_and_its_photos_kept(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    lib = make_library(data, tmp_path)
    args = ["--labels", "folders", "--home", tmp_path / "home"]
    run_cli(["index", lib, *args])
    with _unreadable(monkeypatch, lib / "BBT_Penny"):
        res = run_cli(["index", lib, "--prune", *args])
        report = json.loads(run_cli(["index", lib, "--prune", "--json", *args]).stdout)
    assert report["unreadable_folders"] == 1 and report["pruned"] == 0, report
    assert "1 folder could not be read" in res.stdout and "BBT_Penny" in res.stdout, res.stdout
    info = json.loads(run_cli(["info", "--json", "--home", tmp_path / "home"]).stdout)
    assert (info["photos"], info["faces"], info["people"]) == (12, 8, 3)


def test_rehash_finds_files_edited_in_place(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    lib = tmp_path / "lib" / "BBT_Raj"
    lib.mkdir(parents=True)
    photo = lib / "one.bmp"  # uncompressed: same size for any 150x150 content
    Image.open(data / "photos" / "BBT_Raj" / "raj1.png").convert("RGB").resize((150, 150)).save(
        photo
    )
    args = ["--labels", "folders", "--home", tmp_path / "home", "--json"]
    run_cli(["index", lib.parent, *args])
    st = photo.stat()
    Image.open(data / "photos" / "BBT_Amy" / "amy1.png").convert("RGB").resize((150, 150)).save(
        photo
    )
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert photo.stat().st_size == st.st_size
    plain = json.loads(run_cli(["index", lib.parent, *args]).stdout)
    assert (plain["unchanged"], plain["updated"]) == (1, 0)  # size and mtime: not read
    rehash = json.loads(run_cli(["index", lib.parent, "--rehash", *args]).stdout)
    assert (rehash["unchanged"], rehash["updated"]) == (0, 1), rehash
    again = json.loads(run_cli(["index", lib.parent, "--rehash", *args]).stdout)
    assert (again["unchanged"], again["updated"]) == (1, 0), again
    assert "--rehash" in run_cli(["index", "--help"]).stdout
