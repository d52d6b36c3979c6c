"""Shared fixtures.

The face data lives beside the clone in ``../shared`` (``FACESEARCH_SHARED`` overrides it).
Tests that need it skip with a reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

# Spinning OpenMP threads make torch crawl when the cores are shared (see facesearch/cli).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACESEARCH_SHARED", REPO.parent / "shared")).resolve()


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
