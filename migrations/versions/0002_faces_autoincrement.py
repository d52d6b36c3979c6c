"""Face ids are never reused: ``faces`` gets AUTOINCREMENT on SQLite.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Without AUTOINCREMENT, SQLite gives a new row the largest id in the table plus one, so after the
face with the largest id is deleted the next face added takes that id again. Anything that
remembers face ids across runs then mistakes the new face for the old one; incremental
clustering (``meta['cluster.last_face']``: "faces up to this id were placed") skipped it.

SQLite: the table is rebuilt (Alembic batch mode: copy, drop, rename) with ``AUTOINCREMENT``,
and its sequence starts at the largest id known to have been used: the largest face id, or
``cluster.last_face`` if larger (a face deleted before this migration). Dropping ``faces``
cascades to ``assignments`` (``PRAGMA foreign_keys`` cannot be switched off inside the
migration's transaction), so the assignments are kept in a temporary table and put back.
PostgreSQL: nothing to do, a ``SERIAL`` sequence never hands out an id twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: ``meta`` key where clustering records the largest face id it has placed.
_LAST_FACE_KEY = "cluster.last_face"
_KEEP = "_facesearch_0002_assignments"


def _faces(autoincrement: bool) -> sa.Table:
    """The ``faces`` table as revision 0001 created it (batch mode copies it from this)."""
    return sa.Table(
        "faces",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("photo_id", sa.Integer(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
        sa.Column("x2", sa.Float(), nullable=False),
        sa.Column("y2", sa.Float(), nullable=False),
        sa.Column("landmarks", sa.JSON(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("cluster_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["cluster_id"],
            ["clusters.id"],
            name="fk_faces_cluster_id_clusters",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(["model"], ["models.name"], name="fk_faces_model_models"),
        sa.ForeignKeyConstraint(
            ["photo_id"], ["photos.id"], name="fk_faces_photo_id_photos", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_faces"),
        sa.Index("ix_faces_cluster_id", "cluster_id"),
        sa.Index("ix_faces_model", "model"),
        sa.Index("ix_faces_photo_id", "photo_id"),
        sqlite_autoincrement=autoincrement,
    )


def _rebuild_faces(autoincrement: bool) -> None:
    bind = op.get_bind()
    op.execute(f"CREATE TEMP TABLE {_KEEP} AS SELECT * FROM assignments")
    with op.batch_alter_table(
        "faces",
        recreate="always",
        copy_from=_faces(autoincrement),
        table_kwargs={"sqlite_autoincrement": autoincrement},
    ):
        pass
    op.execute(f"INSERT INTO assignments SELECT * FROM {_KEEP}")
    op.execute(f"DROP TABLE {_KEEP}")
    if autoincrement:
        top = bind.execute(sa.text("SELECT MAX(id) FROM faces")).scalar() or 0
        raw = bind.execute(
            sa.text("SELECT value FROM meta WHERE key = :k"), {"k": _LAST_FACE_KEY}
        ).scalar()
        if raw is not None and str(raw).strip().lstrip("-").isdigit():
            top = max(top, int(raw))
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'faces'"))
        if top > 0:
            bind.execute(
                sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('faces', :seq)"),
                {"seq": top},
            )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_faces(autoincrement=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_faces(autoincrement=False)
