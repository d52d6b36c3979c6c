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


def _schema_dump(engine: sa.Engine) -> dict[str, object]:
    """Everything the inspector sees, in a comparable form, plus the rows a new database has."""
    out: dict[str, object] = {}
    with engine.connect() as conn:
        ins = sa.inspect(conn)
        for t in sorted(ins.get_table_names()):
            out[t] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                    for c in ins.get_columns(t)
                ],
                "pk": ins.get_pk_constraint(t),
                "fks": sorted(
                    (
                        f["name"] or "",
                        tuple(f["constrained_columns"]),
                        f["referred_table"],
                        tuple(f["referred_columns"]),
                        tuple(sorted(f["options"].items())),
                    )
                    for f in ins.get_foreign_keys(t)
                ),
                "indexes": sorted(
                    (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                    for i in ins.get_indexes(t)
                ),
                "unique": sorted(
                    (u["name"] or "", tuple(u["column_names"]))
                    for u in ins.get_unique_constraints(t)
                ),
            }
        out["rows"] = {
            "meta": sorted(conn.execute(sa.text("SELECT key, value FROM meta")).all()),
            "version": conn.execute(sa.text("SELECT version_num FROM alembic_version")).all(),
        }
        if engine.dialect.name == "sqlite":  # AUTOINCREMENT (migrations 0002, 0003) in the DDL
            ddl = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type='table'"))
            out["autoincrement"] = sorted(n for n, sql in ddl if "AUTOINCREMENT" in (sql or ""))
    return out


def test_create_schema_builds_what_the_migrations_build(
    db_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Store.open(create=True)`` builds a new database from the models (no Alembic run);
    the result must be the migrations' database, and Alembic must take it from there."""
    monkeypatch.chdir(tmp_path)
    engine = st.make_engine(db_url)
    try:
        assert st.upgrade_database(engine) == st.SCHEMA_HEAD
        migrated = _schema_dump(engine)
        assert st.downgrade_database(engine, "base") is None  # leaves an empty alembic_version
        st.create_schema(engine)
        assert _schema_dump(engine) == migrated
        assert migrated["rows"] == {  # type: ignore[comparison-overlap]
            "meta": [("face_count", "0"), ("generation", "0")],
            "version": [(st.SCHEMA_HEAD,)],
        }
        if engine.dialect.name == "sqlite":
            assert migrated["autoincrement"] == ["clusters", "faces"]
        assert st.upgrade_database(engine) == st.SCHEMA_HEAD  # nothing to do
        assert st.downgrade_database(engine, "base") is None  # and the scripts can go down
        assert _tables(engine) <= {"alembic_version"}
    finally:
        engine.dispose()
    store = st.Store.open(db_url, create=True)  # an empty database again: created, and usable
    try:
        st.check_schema(store.engine)
    finally:
        store.engine.dispose()


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
        # A newer facesearch would know revision "0004": this database is then older.
        monkeypatch.setattr(st, "SCHEMA_HEAD", "0004")
        monkeypatch.setattr(st, "SCHEMA_REVISIONS", ("0001", "0002", "0003", "0004"))
        with pytest.raises(
            CollectionError, match="revision 0003.*needs 0004.*facesearch db upgrade"
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
    monkeypatch.setattr(st, "SCHEMA_HEAD", "0004")
    monkeypatch.setattr(st, "SCHEMA_REVISIONS", ("0001", "0002", "0003", "0004"))
    with pytest.raises(
        CollectionError, match="collection 'old' has schema revision 0003.*db upgrade"
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


def _insert_face(conn: sa.Connection, photo_id: int, face_id: int | None = None) -> int:
    cols = "photo_id, x1, y1, x2, y2, landmarks, score, embedding, model"
    vals = ":p, 0, 0, 1, 1, '[]', 0.9, :e, 'm'"
    if face_id is not None:
        cols, vals = "id, " + cols, ":i, " + vals
    conn.execute(
        sa.text(f"INSERT INTO faces ({cols}) VALUES ({vals})"),
        {"p": photo_id, "i": face_id, "e": b"\x00"},
    )
    return int(conn.execute(sa.text("SELECT MAX(id) FROM faces")).scalar() or 0)


def test_0002_faces_ids_are_not_reused_on_sqlite(tmp_path: Path) -> None:
    """Revision 0001 let SQLite hand out a deleted largest face id again; 0002 keeps the data
    (assignments included, though rebuilding ``faces`` cascades) and makes ids AUTOINCREMENT,
    starting above both the largest face id and ``cluster.last_face``."""
    engine = st.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        assert st.upgrade_database(engine, "0001") == "0001"
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO models (name, dim, created_at) VALUES ('m', 1, 0)"))
            conn.execute(
                sa.text(
                    "INSERT INTO photos (id, path, content_hash, size, mtime, status, indexed_at) "
                    "VALUES (1, 'a.jpg', 'h', 1, 0, 'ok', 0)"
                )
            )
            conn.execute(sa.text("INSERT INTO people (id, name, created_at) VALUES (1, 'Amy', 0)"))
            for _ in range(3):
                _insert_face(conn, 1)
            conn.execute(
                sa.text(
                    "INSERT INTO assignments (face_id, person_id, source, assigned_at) "
                    "VALUES (2, 1, 'manual', 0)"
                )
            )
            # the bug, at 0001: the largest id is handed out again after a delete
            conn.execute(sa.text("DELETE FROM faces WHERE id = 3"))
            assert _insert_face(conn, 1) == 3
            # clustering had seen faces up to id 5 (4 and 5 deleted since)
            conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('cluster.last_face', '5')"))
        assert st.upgrade_database(engine, "0002") == "0002"
        with engine.begin() as conn:
            sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'faces'")
            ).scalar()
            assert "AUTOINCREMENT" in str(sql)
            assert conn.execute(sa.text("SELECT id FROM faces ORDER BY id")).scalars().all() == [
                1, 2, 3,
            ]  # fmt: skip
            assert conn.execute(sa.text("SELECT face_id FROM assignments")).scalars().all() == [2]
            assert _insert_face(conn, 1) == 6  # above cluster.last_face
            conn.execute(sa.text("DELETE FROM faces WHERE id = 6"))
            assert _insert_face(conn, 1) == 7  # a deleted id is not handed out again
        assert st.upgrade_database(engine) == st.SCHEMA_HEAD
        st.check_schema(engine)
        assert st.downgrade_database(engine, "0001") == "0001"
        with engine.begin() as conn:
            sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'faces'")
            ).scalar()
            assert "AUTOINCREMENT" not in str(sql)
            assert conn.execute(sa.text("SELECT COUNT(*) FROM faces")).scalar() == 4
            assert conn.execute(sa.text("SELECT face_id FROM assignments")).scalars().all() == [2]
    finally:
        engine.dispose()


def test_0003_keeps_clusters_and_adds_rejections(db_url: str) -> None:  # noqa: F811
    """From 0002 with clusters in use: memberships survive (SQLite rebuilds ``clusters``, which
    would set ``faces.cluster_id`` to NULL), cluster ids are not handed out again, and the
    rejections table takes one target per row, once, and goes with its face."""
    engine = st.make_engine(db_url)
    try:
        assert st.upgrade_database(engine, "0002") == "0002"
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO models (name, dim, created_at) VALUES ('m', 1, :t)"),
                {"t": "2026-01-01"},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO photos (id, path, content_hash, size, mtime, status, indexed_at) "
                    "VALUES (1, 'a.jpg', 'h', 1, 0, 'ok', :t)"
                ),
                {"t": "2026-01-01"},
            )
            conn.execute(
                sa.text("INSERT INTO people (id, name, created_at) VALUES (1, 'Amy', :t)"),
                {"t": "2026-01-01"},
            )
            for manual in (False, True, False):  # the sequence's ids (PostgreSQL keeps count)
                conn.execute(
                    sa.text(
                        "INSERT INTO clusters (manual, created_at, updated_at) VALUES (:m, :t, :t)"
                    ),
                    {"m": manual, "t": "2026-01-01"},
                )
            ids = conn.execute(sa.text("SELECT id FROM clusters ORDER BY id")).scalars().all()
            assert ids == [1, 2, 3]
            for _ in range(4):
                _insert_face(conn, 1)
            conn.execute(sa.text("UPDATE faces SET cluster_id = 1 WHERE id IN (1, 2)"))
            conn.execute(sa.text("UPDATE faces SET cluster_id = 3 WHERE id = 3"))
        assert st.upgrade_database(engine) == st.SCHEMA_HEAD == "0003"
        with engine.begin() as conn:
            rows = conn.execute(sa.text("SELECT id, cluster_id FROM faces ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(1, 1), (2, 1), (3, 3), (4, None)]
            manual = conn.execute(sa.text("SELECT id FROM clusters WHERE manual")).scalars()
            assert manual.all() == [2]
            conn.execute(sa.text("DELETE FROM clusters WHERE id = 3"))
        store = st.Store.open(db_url)
        with store.session() as s:
            new = st.new_clusters(s, 1)
            assert new[0] > 3, "a deleted cluster id is handed out again"
            assert st.add_rejections(s, [1, 2], person_id=1) == 2
            assert st.add_rejections(s, [1], person_id=1) == 0  # once
            assert st.add_rejections(s, [4], cluster_id=1) == 1
        store.engine.dispose()
        # both targets, or none: refused by the database
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO rejections (face_id, person_id, cluster_id, created_at) "
                    "VALUES (3, 1, 1, :t)"
                ),
                {"t": "2026-01-01"},
            )
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.execute(sa.text("DELETE FROM faces WHERE id = 1"))
            left = conn.execute(sa.text("SELECT face_id FROM rejections ORDER BY face_id"))
            assert left.scalars().all() == [2, 4]
        assert st.downgrade_database(engine, "0002") == "0002"
        with engine.begin() as conn:
            rows = conn.execute(sa.text("SELECT id, cluster_id FROM faces ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(2, 1), (3, None), (4, None)]
            assert "rejections" not in _tables(engine)
    finally:
        engine.dispose()
