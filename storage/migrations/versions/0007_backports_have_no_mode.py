"""a backport has no recycle mode

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

- `candidates.mode` may be NULL: a backport (`kind = 'backport'`) applies the track's newest Δ to an older
  release and is no mode of Algorithm 1's; the backports recorded before, as `iterative`, say so now.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.alter_column("mode", existing_type=sa.String(length=32), nullable=True)
    op.execute("UPDATE candidates SET mode = NULL WHERE kind = 'backport'")


def downgrade() -> None:
    op.execute("UPDATE candidates SET mode = 'iterative' WHERE mode IS NULL")
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.alter_column("mode", existing_type=sa.String(length=32), nullable=False)
