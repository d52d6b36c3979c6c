"""Helpers for the indexing, query and collection-command tests.

- :func:`shared_pipeline`: one :class:`FacePipeline` per test process (loading the networks
  takes seconds; tests share it instead of building one per command).
- :func:`use_shared_pipeline`: make the CLI commands use it (monkeypatch).
- :func:`make_library`: a small photo library in a temporary folder, copied from the shared
  data: three people (tiny 150x150 face crops, fast to process), a photo without a face, bad
  files, a non-image file and hidden files.
- :func:`run_cli`: invoke ``facesearch`` through click's ``CliRunner``.
- :func:`assert_agree`: SQL and the vector index file hold the same faces.
- ``pg_module_url``: a module-scoped private PostgreSQL schema (skips without a server).
"""

from __future__ import annotations

import functools
import inspect
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

#: The people of the test library and their photos (BBT crops: one face, 150x150).
PEOPLE: dict[str, tuple[str, ...]] = {
    "BBT_Amy": ("amy1.png", "amy2.png", "amy3.png"),
    "BBT_Raj": ("raj1.png", "raj2.png", "raj3.png"),
    "BBT_Penny": ("penny1.png", "penny2.png"),
}
#: Photos of people *not* in the library (for "unknown").
STRANGERS: tuple[str, ...] = ("BBT_Sheldon/sheldon1.png", "BBT_Howard/howard1.png")
BAD_FILES: tuple[str, ...] = ("empty.jpg", "not_an_image.jpg", "truncated.jpg")
NO_FACE = "white.png"


@functools.lru_cache(maxsize=1)
def shared_pipeline() -> Any:
    """The default pipeline (``sface``), built once per test process."""
    import torch

    from facesearch.pipeline import FacePipeline

    torch.set_num_threads(1)
    return FacePipeline()


def use_shared_pipeline(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make ``facesearch`` commands use :func:`shared_pipeline` (``sface`` only)."""
    import facesearch.cli.options as cli_options

    pipe = shared_pipeline()

    def make(config: Any) -> Any:
        # `query` embeds with the numpy engine in a child process by default; this pipeline
        # serves the other paths (its faces equal the numpy engine's: tests/test_npengine.py)
        assert config.model == "sface", f"tests only share the sface pipeline, not {config.model!r}"
        return pipe

    monkeypatch.setattr(cli_options, "build_pipeline", make)
    return pipe


def make_library(data: Path, root: Path) -> Path:
    """Copy the test library into ``root/photos`` and return that folder.

    Layout: ``photos/<Person>/<file>`` for :data:`PEOPLE`; ``photos/misc/`` with the bad files
    of ``odd/``, a photo without a face, ``notes.txt``; hidden ``photos/.cache/x.png`` and
    ``photos/misc/.hidden.png`` (copies of a face photo).
    """
    lib = root / "photos"
    for person, files in PEOPLE.items():
        (lib / person).mkdir(parents=True)
        for f in files:
            shutil.copy(data / "photos" / person / f, lib / person / f)
    misc = lib / "misc"
    misc.mkdir()
    for f in BAD_FILES:
        shutil.copy(data / "odd" / f, misc / f)
    shutil.copy(data / "negatives" / NO_FACE, misc / NO_FACE)
    (misc / "notes.txt").write_text("not a photo\n")
    (lib / ".cache").mkdir()
    shutil.copy(data / "photos" / "BBT_Amy" / "amy4.png", lib / ".cache" / "x.png")
    shutil.copy(data / "photos" / "BBT_Amy" / "amy5.png", misc / ".hidden.png")
    for p in lib.rglob("*"):  # copies of read-only files: make them writable for the tests
        p.chmod(0o755 if p.is_dir() else 0o644)
    return lib


def composite(paths: Sequence[Path], sizes: Sequence[int], out: Path) -> Path:
    """A photo with several faces: each photo scaled to ``size`` x ``size`` side by side."""
    canvas = Image.new("RGB", (sum(sizes) + 40 * (len(sizes) + 1), max(sizes) + 80), "white")
    x = 40
    for p, size in zip(paths, sizes, strict=True):
        canvas.paste(Image.open(p).convert("RGB").resize((size, size)), (x, 40))
        x += size + 40
    canvas.save(out)
    return out


def run_cli(args: Sequence[str], *, ok: bool = True) -> Result:
    """``facesearch ARGS`` through CliRunner (stderr kept apart from stdout)."""
    from facesearch.cli import main

    runner = CliRunner()
    result = runner.invoke(
        main, [str(a) for a in args], catch_exceptions=False, prog_name="facesearch"
    )
    if ok and result.exit_code != 0:
        raise AssertionError(
            f"facesearch {' '.join(map(str, args))} exited {result.exit_code}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def collection_args(home: Path, db_url: str | None, name: str = "default") -> list[str]:
    args = ["--home", str(home), "--collection", name]
    return args + (["--db", db_url] if db_url else [])


def assert_agree(home: Path, db_url: str | None, name: str = "default") -> None:
    """SQL and the index file hold the same face ids, and the index file is current."""
    from facesearch import store as st
    from facesearch.collection import Collection
    from facesearch.vectors import VectorIndex

    with Collection.open(home, name, db_url=db_url) as col:
        report = col.check()
        assert report["consistent"], report
        assert report["index_status"] == "current", report
        with col.session() as s:
            sql = st.face_ids(s)
        if len(sql):
            vi = VectorIndex.load(col.index_path, mmap=True)
            np.testing.assert_array_equal(np.sort(vi.ids()), sql)


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a fresh private schema, for one module."""
    from dbhelpers import private_schema

    with private_schema() as url:
        yield url


def index_library(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    data: Path,
    use: Callable[[pytest.MonkeyPatch], object] = use_shared_pipeline,
) -> dict[str, Any]:
    """The test library indexed with ``facesearch index --labels folders`` into a new home, on
    the backend of ``request.param`` (``sqlite`` or ``postgres``); the CLI's pipelines come from
    ``use``. Returns ``root``, ``lib``, ``home``, ``db``, ``args`` and the index ``result``."""
    db_url = None if request.param == "sqlite" else request.getfixturevalue("pg_module_url")
    root = tmp_path_factory.mktemp("library")
    lib = make_library(data, root)
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        use(mp)
        result = run_cli(["index", lib, "--labels", "folders", *collection_args(home, db_url)])
    args = collection_args(home, db_url)
    return {"root": root, "lib": lib, "home": home, "db": db_url, "args": args, "result": result}


#: Backends of the module-scoped collection fixtures.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


# -- Ctrl-C at chosen moments -------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """A moment of a command run in this process: the ``nth`` call (from 1) in the main thread
    of ``function`` (``"facesearch/vectors.py:add"``: a file path ending and a function name;
    ``"posix.replace"``: a builtin, the moment it returns; ``"*"``: any call), then ``after``
    more calls of anything."""

    function: str
    nth: int = 1
    after: int = 0

    def __str__(self) -> str:
        return f"{self.function}#{self.nth}+{self.after}"


#: Where a write's steps meet: a commit under way, between a commit and the vector-index
#: update, the update, the index file being written and renamed, the report counting a commit,
#: SQL changes before their commit.
WRITE_STEPS: tuple[str, ...] = (
    "sqlalchemy/orm/session.py:commit",
    "facesearch/collection.py:_apply",
    "facesearch/vectors.py:add",
    "facesearch/vectors.py:remove",
    "facesearch/vectors.py:_write_index_file",
    "posix.replace",
    "facesearch/collection.py:_flush",
    "facesearch/indexer.py:_count",
    "facesearch/store.py:add_photos",
    "facesearch/store.py:update_embeddings",
    "facesearch/store.py:set_clusters",
    "facesearch/store.py:merge_people",
    "facesearch/store.py:register_model",
)


#: Functions Python runs as finalizers (weakref callbacks, ``__del__``), where it drops an
#: exception raised: a Ctrl-C landing there is lost to any program, so no moment is put there.
_FINALIZERS = frozenset({"__del__", "_cleanup", "_fast_discard", "remove", "_remove"})
#: Generator frames: one left unfinished (``next(gen, None)``) is closed when collected, and an
#: exception raised while it closes is dropped the same way.
_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _in_finalizer(frame: Any, depth: int = 4) -> bool:
    if frame is not None and frame.f_code.co_flags & _GENERATOR_FLAGS:
        return True
    while frame is not None and depth:
        if frame.f_code.co_name in _FINALIZERS:
            return True
        frame, depth = frame.f_back, depth - 1
    return False


class _Calls:
    """A profile function (``sys.setprofile``) counting the main thread's calls of each
    :data:`WRITE_STEPS` function, and sending SIGINT to this process at ``moment``."""

    def __init__(self, moment: Moment | None = None) -> None:
        self.moment = moment
        self.counts: dict[str, int] = {}
        self.countdown: int | None = None
        self.sent_in_section: bool | None = None  # None: not sent (the run ended first)
        self.where = ""  # the stack the signal was sent at

    def _names(self, frame: Any, event: str, arg: Any) -> Iterator[str]:
        yield "*"
        if event == "c_call":
            builtin = f"{getattr(arg, '__module__', None)}.{getattr(arg, '__name__', '')}"
            if builtin in WRITE_STEPS:
                yield builtin
            return
        path = frame.f_code.co_filename.replace("\\", "/")
        name = frame.f_code.co_name
        for step in WRITE_STEPS:
            where, _, function = step.rpartition(":")
            if function == name and path.endswith(where):
                yield step

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event not in ("call", "c_call") or self.sent_in_section is not None:
            return
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown < 0:
                self._send(frame)
            return
        for name in self._names(frame, event, arg):
            n = self.counts[name] = self.counts.get(name, 0) + 1
            m = self.moment
            if m is not None and name == m.function and n == m.nth:
                self.countdown = m.after
                if not m.after:
                    self._send(frame)
                return

    def _send(self, frame: Any) -> None:
        if _in_finalizer(frame):  # the moment comes at the next call outside
            self.countdown = 0
            return
        import traceback

        from facesearch import interrupts

        self.sent_in_section = interrupts._held.depth > 0
        self.where = "".join(traceback.format_stack(frame, limit=8))
        signal.raise_signal(signal.SIGINT)


def count_write_steps(args: Sequence[str]) -> dict[str, int]:
    """``facesearch ARGS`` (CliRunner, must succeed) and the calls of each write step it made
    in the main thread (``"*"``: every call)."""
    calls = _Calls()
    sys.setprofile(calls)
    try:
        run_cli(args)
    finally:
        sys.setprofile(None)
    return calls.counts


#: Steps also interrupted a few calls in: inside a commit, inside the index update.
_NUDGED = ("sqlalchemy/orm/session.py:commit", "facesearch/collection.py:_apply")


def moments(counts: dict[str, int], spread: int = 3) -> list[Moment]:
    """Moments of a run whose calls were ``counts``: the first and last call of every write
    step the run made (and a few calls into the first commit and index update), plus
    ``spread`` moments spread over the whole run."""
    out: set[Moment] = set()
    for name, n in counts.items():
        if name != "*":
            out |= {Moment(name, 1), Moment(name, n)}
        if name in _NUDGED:
            out.add(Moment(name, 1, 3))
    total = counts.get("*", 0)
    out |= {Moment("*", max(1, total * (2 * i + 1) // (2 * spread))) for i in range(spread)}
    return sorted(out, key=str)


def run_cli_interrupted(args: Sequence[str], moment: Moment) -> tuple[Result, bool | None]:
    """``facesearch ARGS`` (CliRunner) with Ctrl-C at ``moment``. Returns the result and
    whether the signal came inside a critical section (``None``: the run ended before the
    moment, no signal sent)."""
    calls = _Calls(moment)
    sys.setprofile(calls)
    try:
        result = run_cli(args, ok=False)
    finally:
        sys.setprofile(None)
    seen = (moment, result.exit_code, result.stderr, calls.where)
    if calls.sent_in_section is not None:
        assert result.exit_code == 130 and "interrupted" in result.stderr, seen
    else:
        assert result.exit_code == 0, seen
    assert "Traceback" not in result.stderr, seen
    return result, calls.sent_in_section


def stored_state(
    home: Path, db_url: str | None, name: str = "default"
) -> dict[str, tuple[str, int, tuple[str, ...], tuple[str, ...]]]:
    """What SQL holds, per photo path: ``(status, faces, their people sorted, their models
    sorted)`` (empty when the collection was never created)."""
    import sqlalchemy as sa

    from facesearch.collection import Collection
    from facesearch.errors import NotFoundError

    try:
        col = Collection.open(home, name, db_url=db_url)
    except NotFoundError:
        return {}
    out: dict[str, tuple[str, int, tuple[str, ...], tuple[str, ...]]] = {}
    with col, col.session() as s:
        rows = s.execute(
            sa.text(
                "SELECT p.path, p.status, f.model, pe.name FROM photos p "
                "LEFT JOIN faces f ON f.photo_id = p.id "
                "LEFT JOIN assignments a ON a.face_id = f.id "
                "LEFT JOIN people pe ON pe.id = a.person_id"
            )
        ).all()
    faces: dict[str, list[tuple[str | None, str | None]]] = {}
    status: dict[str, str] = {}
    for path, photo_status, model, person in rows:
        status[path] = str(photo_status)
        if model is not None:
            faces.setdefault(path, []).append((model, person))
    for path, st in status.items():
        fs = faces.get(path, [])
        out[path] = (
            st,
            len(fs),
            tuple(sorted(p for _, p in fs if p is not None)),
            tuple(sorted(m for m, _ in fs if m is not None)),
        )
    return out


def assert_agree_or_empty(home: Path, db_url: str | None, name: str = "default") -> None:
    """:func:`assert_agree`, or a collection holding no face (never made, or nothing committed:
    no index file needed)."""
    if not any(n for _, n, _, _ in stored_state(home, db_url, name).values()):
        return
    assert_agree(home, db_url, name)
