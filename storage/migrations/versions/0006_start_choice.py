"""how `recycle.mode: auto` chose a candidate's start

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

- `candidates.start_choice`: for a candidate of an `auto` track, the transferability pre-check's figures, each
  start's probe score, the start chosen and what the probe cost (JSON); NULL for candidates of the other modes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("start_choice", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_column("start_choice")
