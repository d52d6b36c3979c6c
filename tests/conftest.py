"""Shared fixtures.

The face data lives beside the clone in ``../shared`` (``FACESEARCH_SHARED`` overrides it).
Tests that need it skip with a reason when it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Spinning OpenMP threads make torch crawl when the cores are shared (see facesearch/cli).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACESEARCH_SHARED", REPO.parent / "shared")).resolve()


def pytest_sessionstart(session: pytest.Session) -> None:
    """``FACESEARCH_TEST_REQUIRE`` (set by ``.ci/run``): what must be there, comma-separated
    (``shared``, ``postgres``, ``chromium``, or a module to import). Without it the tests that
    need one skip with a reason; with it a missing one stops the run before any test, so a CI
    run cannot pass by skipping them."""
    import importlib.util

    missing = []
    for need in filter(None, os.environ.get("FACESEARCH_TEST_REQUIRE", "").split(",")):
        if need == "shared":
            ok = (SHARED / "data").is_dir()
        elif need == "postgres":
            ok = bool(os.environ.get("FACESEARCH_TEST_PG_URL"))
        elif need == "chromium":  # where tests/serverhelpers.py looks for them
            ok = all(
                Path(os.environ.get(f"FACESEARCH_{name.upper()}", f"/usr/bin/{name}")).is_file()
                for name in ("chromium", "chromedriver")
            )
        else:
            ok = importlib.util.find_spec(need) is not None
        if not ok:
            missing.append(need)
    if missing:
        raise pytest.UsageError(f"FACESEARCH_TEST_REQUIRE: not available: {', '.join(missing)}")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (set FACESEARCH_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def data(shared: Path) -> Path:
    return shared / "data"


@pytest.fixture(scope="session")
def reference(shared: Path) -> Path:
    return shared / "reference"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    on shared cores, spinning OpenMP threads make a contended run many times slower, and these
    tests check numbers, not speed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _weight_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The numpy engine caches prepared weights (``FACESEARCH_CACHE``): keep the suite's copy
    out of the user's cache, shared by the whole session (and the CLI processes it starts)."""
    before = os.environ.get("FACESEARCH_CACHE")
    os.environ["FACESEARCH_CACHE"] = str(tmp_path_factory.mktemp("weight-cache"))
    yield
    if before is None:
        os.environ.pop("FACESEARCH_CACHE", None)
    else:
        os.environ["FACESEARCH_CACHE"] = before
