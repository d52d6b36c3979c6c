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
import shutil
from collections.abc import Callable, Iterator, Sequence
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
