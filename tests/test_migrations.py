"""Alembic migrations agree with the models, run without alembic.ini, and go down again."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from dbhelpers import db_url, pg_schema_url  # noqa: F401

from facesearch import store as st
from facesearch.collection import Collection, upgrade_collection
from facesearch.errors import CollectionError


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_known_revisions_match_the_scripts() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(st.MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(cfg)
    assert script.get_current_head() == st.SCHEMA_HEAD
    history = [r.revision for r in script.walk_revisions("base", "heads")][::-1]
    assert tuple(history) == st.SCHEMA_REVISIONS


def test_upgrade_creates_exactly_the_models_schema(
    db_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no alembic.ini around: the config is built in code
    assert st.upgrade_database(db_url) == st.SCHEMA_HEAD
    engine = st.make_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, st.Base.metadata)
        assert diff == []
        assert _tables(engine) == {t.name for t in st.Base.metadata.sorted_tables} | {
            "alembic_version"
        }
        st.check_schema(engine)
        with engine.connect() as conn:
            assert (
                conn.execute(sa.text("SELECT value FROM meta WHERE key = 'generation'")).scalar()
                == "0"
            )
        assert st.upgrade_database(engine) == st.SCHEMA_HEAD  # idempotent
        assert st.downgrade_database(engine, "base") is None
        assert _tables(engine) <= {"alembic_version"}
        assert st.upgrade_database(engine) == st.SCHEMA_HEAD  # and up again
    finally:
        engine.dispose()


def test_check_schema_messages(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    engine = st.make_engine(db_url)
    try:
        with pytest.raises(CollectionError, match="empty database"):
            st.check_schema(engine, "collection 'x'")
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE stranger (id INTEGER)")
        with pytest.raises(CollectionError, match="not a facesearch database"):
            st.check_schema(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE stranger")
        st.upgrade_database(engine)
        # A newer facesearch would know revision "0002": this database is then older.
        monkeypatch.setattr(st, "SCHEMA_HEAD", "0002")
        monkeypatch.setattr(st, "SCHEMA_REVISIONS", ("0001", "0002"))
        with pytest.raises(
            CollectionError, match="revision 0001.*needs 0002.*facesearch db upgrade"
        ):
            st.check_schema(engine, "collection 'x'")
        monkeypatch.undo()
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        with pytest.raises(CollectionError, match="newer facesearch; upgrade facesearch"):
            st.check_schema(engine)
    finally:
        engine.dispose()


def test_older_collection_asks_for_db_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Collection.open(tmp_path, "old", create=True).close()
    monkeypatch.setattr(st, "SCHEMA_HEAD", "0002")
    monkeypatch.setattr(st, "SCHEMA_REVISIONS", ("0001", "0002"))
    with pytest.raises(
        CollectionError, match="collection 'old' has schema revision 0001.*db upgrade"
    ):
        Collection.open(tmp_path, "old")
    monkeypatch.undo()
    # `facesearch db upgrade` on a collection whose database lost its tables re-creates them
    engine = st.make_engine(f"sqlite:///{tmp_path / 'old' / 'faces.db'}")
    st.downgrade_database(engine, "base")
    engine.dispose()
    with pytest.raises(CollectionError, match="empty database"):
        Collection.open(tmp_path, "old")
    assert upgrade_collection(tmp_path, "old") == (None, st.SCHEMA_HEAD)
    Collection.open(tmp_path, "old").close()
    with pytest.raises(CollectionError, match="no collection 'nope'"):
        upgrade_collection(tmp_path, "nope")
