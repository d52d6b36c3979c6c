"""How each face was found: ``faces.detector_pass``.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-07

``default``: the detector at its settings; ``upscaled``: the second pass on the photo upscaled
2x, run only for a photo in which the first found nothing; ``aligned``: no detection, the photo
was given as a face crop on the alignment template (``--aligned``). VARCHAR(16) validated in
Python like the other enumerated columns (``facesearch.store.DetectorPass``). Faces stored
before this revision were all found by the default pass, which the server default fills in.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN on both databases: a batch-mode copy of ``faces`` would cascade to
    # ``assignments`` on SQLite (see 0002).
    op.add_column(
        "faces",
        sa.Column("detector_pass", sa.String(length=16), nullable=False, server_default="default"),
    )


def downgrade() -> None:
    op.drop_column("faces", "detector_pass")  # SQLite >= 3.35 drops a column in place
