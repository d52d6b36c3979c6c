"""Database fixtures and synthetic faces for the store, collection and migration tests.

Each test gets its own database: a SQLite file in ``tmp_path``, or a fresh schema in the
PostgreSQL database named by ``FACESEARCH_TEST_PG_URL`` (dropped afterwards). Start a
throwaway server with ``eval "$(.ci/postgres.sh)"``; without the variable the PostgreSQL
cases skip with that reason.

Import the fixtures into a test module with ``from dbhelpers import db_url  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from facesearch.store import NewPhoto
from facesearch.types import Detection, Face

PG_ENV = "FACESEARCH_TEST_PG_URL"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DIM = 16


def pg_base_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f'{PG_ENV} is not set: run `eval "$(.ci/postgres.sh)"` to test PostgreSQL')
    return url


@contextlib.contextmanager
def private_schema() -> Iterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a fresh schema, dropped on the way out."""
    base = pg_base_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose ``search_path`` is a fresh, private schema."""
    with private_schema() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: SQLite file or private PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture(params=BACKENDS)
def collection_db(request: pytest.FixtureRequest) -> str | None:
    """``db_url`` for :meth:`Collection.open`: ``None`` (SQLite in the folder) or PostgreSQL."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_schema_url"))


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """``(n, dim) float32`` random unit vectors."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_face(
    rng: np.random.Generator, *, dim: int = DIM, model: str = "sface", size: float = 50.0
) -> Face:
    x1, y1 = (float(v) for v in rng.uniform(0, 400, 2))
    box = (x1, y1, x1 + size, y1 + size * 1.2)
    pts = tuple(
        (x1 + size * fx, y1 + size * fy)
        for fx, fy in ((0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8))
    )
    det = Detection(box=box, landmarks=pts, score=float(rng.uniform(0.6, 1.0)))  # type: ignore[arg-type]
    return Face(detection=det, embedding=unit_vectors(rng, 1, dim)[0], model=model)


def make_photo(
    rng: np.random.Generator,
    path: str,
    n_faces: int = 1,
    *,
    labels: tuple[str | None, ...] = (),
    dim: int = DIM,
    model: str = "sface",
    content_hash: str | None = None,
) -> NewPhoto:
    faces = tuple(make_face(rng, dim=dim, model=model) for _ in range(n_faces))
    return NewPhoto(
        path=path,
        content_hash=content_hash or uuid.uuid4().hex * 2,
        size=int(rng.integers(1000, 10**6)),
        mtime=float(rng.uniform(1e9, 2e9)),
        width=640,
        height=480,
        faces=faces,
        labels=labels,
    )
