"""a release repaired in place supersedes the one it was

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

- `release_states.state` may be `superseded`: a local release whose folder's files changed in place before
  its run was done; the release that holds them now runs in its place, and it is never run again nor waited
  behind. Going back, a superseded release becomes `skipped`, the state that older code also never runs and
  never waits behind (its detail still says why).
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STATES = ("discovered", "dispatched", "running", "done", "failed", "skipped")


def _check(column: str, words: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(w) for w in words)})"


def _allow(words: tuple[str, ...]) -> None:
    """Let `release_states.state` hold exactly `words`."""
    with op.batch_alter_table("release_states", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_release_states_release_state"), type_="check")
    with op.batch_alter_table("release_states", schema=None) as batch_op:
        batch_op.create_check_constraint("release_state", _check("state", words))


def upgrade() -> None:
    _allow((*STATES, "superseded"))


def downgrade() -> None:
    op.execute("UPDATE release_states SET state = 'skipped' WHERE state = 'superseded'")
    _allow(STATES)
