"""webhook deliveries are an outbox

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

- `webhook_deliveries` gains what the receiver's outbox needs: `started_at` (when the track's run was
  started; NULL while it waits), `flow_run_id` (the run), `attempts`, `retry_at` and `last_error` (the
  tries that failed, and when the next one is due). A delivery recorded before this revision had its run
  started before it was answered, so it is marked started when it was received.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("started_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("flow_run_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
    op.execute("UPDATE webhook_deliveries SET started_at = received_at WHERE track_id IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        for column in ("last_error", "retry_at", "attempts", "flow_run_id", "started_at"):
            batch_op.drop_column(column)
