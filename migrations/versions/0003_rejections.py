""" "Not this person": the ``rejections`` table; cluster ids are never reused.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

``rejections`` holds one row per "face F is not person P" (``person_id``) or "face F was taken
out of cluster C by hand and must not go back" (``cluster_id``); exactly one of the two is
set (CHECK ``one_target``), each pair at most once. Rows go with their face, person or cluster
(``ON DELETE CASCADE``).

``clusters`` gets AUTOINCREMENT on SQLite, for the reason ``faces`` got it in 0002: clustering
keeps the ids of clusters across runs, so a page showing cluster 7 shows the same people
after the next run; an id handed out again would show other people under it. The table is
rebuilt (Alembic batch mode); dropping the old table sets ``faces.cluster_id`` to NULL (its
``ON DELETE SET NULL``, ``PRAGMA foreign_keys`` cannot be switched off inside the migration's
transaction), so the memberships are kept in a temporary table and put back. Its sequence
starts at the largest cluster id. PostgreSQL: a ``SERIAL`` sequence never hands out an id
twice; only the table is created.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEEP = "_facesearch_0003_memberships"


def _clusters() -> sa.Table:
    """The ``clusters`` table as revision 0001 created it (batch mode copies it from this)."""
    return sa.Table(
        "clusters",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("manual", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name="fk_clusters_person_id_people",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_clusters"),
        sa.Index("ix_clusters_person_id", "person_id"),
    )


def _rebuild_clusters(autoincrement: bool) -> None:
    bind = op.get_bind()
    op.execute(f"CREATE TEMP TABLE {_KEEP} (id INTEGER PRIMARY KEY, cluster_id INTEGER NOT NULL)")
    op.execute(
        f"INSERT INTO {_KEEP} (id, cluster_id) "
        "SELECT id, cluster_id FROM faces WHERE cluster_id IS NOT NULL"
    )
    with op.batch_alter_table(
        "clusters",
        recreate="always",
        copy_from=_clusters(),
        table_kwargs={"sqlite_autoincrement": autoincrement},
    ):
        pass
    op.execute(
        f"UPDATE faces SET cluster_id = (SELECT k.cluster_id FROM {_KEEP} k WHERE k.id = faces.id) "
        f"WHERE id IN (SELECT id FROM {_KEEP})"
    )
    op.execute(f"DROP TABLE {_KEEP}")
    if autoincrement:
        top = bind.execute(sa.text("SELECT MAX(id) FROM clusters")).scalar() or 0
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'clusters'"))
        if top > 0:
            bind.execute(
                sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('clusters', :seq)"),
                {"seq": top},
            )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_clusters(autoincrement=True)
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("face_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("cluster_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(person_id IS NULL) <> (cluster_id IS NULL)", name=op.f("ck_rejections_one_target")
        ),
        sa.ForeignKeyConstraint(
            ["cluster_id"],
            ["clusters.id"],
            name=op.f("fk_rejections_cluster_id_clusters"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["face_id"], ["faces.id"], name=op.f("fk_rejections_face_id_faces"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name=op.f("fk_rejections_person_id_people"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejections")),
        sa.UniqueConstraint("face_id", "cluster_id", name=op.f("uq_rejections_face_id_cluster_id")),
        sa.UniqueConstraint("face_id", "person_id", name=op.f("uq_rejections_face_id_person_id")),
    )
    op.create_index(op.f("ix_rejections_cluster_id"), "rejections", ["cluster_id"])
    op.create_index(op.f("ix_rejections_person_id"), "rejections", ["person_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_rejections_person_id"), table_name="rejections")
    op.drop_index(op.f("ix_rejections_cluster_id"), table_name="rejections")
    op.drop_table("rejections")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_clusters(autoincrement=False)
