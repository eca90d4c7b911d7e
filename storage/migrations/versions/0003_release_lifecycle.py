"""releases in their source's order, with a state; candidates say what made them and which Δ they carried

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

- `releases.position` (the source's order) and `releases.content_key` (the model files' hash); rows from
  before have neither and sort first, by id.
- `release_states`: one row per release. Releases from before are `done` when a candidate of theirs has
  the gate's decision, `failed` when one has none (its run died: the next watcher pass runs it again),
  else `discovered` (never run: the next pass runs it).
- The recycle mode `direct` is renamed `source`: it always carried the lineage's first Δ (the first
  fine-tune's, or one imported), never the paper's Δ^dir. Candidates and registered track specs follow.
- `candidates.kind` (`recycle` or `backport`) and `candidates.carry_reason`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATES = ("discovered", "dispatched", "running", "done", "failed", "skipped")


def _check(column: str, words: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(w) for w in words)})"


def _rename_mode_in_specs(old: str, new: str) -> None:
    """Registered track specs (JSON) that name the recycle mode `old` name `new` instead."""
    tracks = sa.table("tracks", sa.column("id", sa.Integer()), sa.column("spec", sa.JSON()))
    bind = op.get_bind()
    for track_id, spec in bind.execute(sa.select(tracks.c.id, tracks.c.spec)).all():
        recycle = spec.get("recycle") if isinstance(spec, dict) else None
        if isinstance(recycle, dict) and recycle.get("mode") == old:
            spec = {**spec, "recycle": {**recycle, "mode": new}}
            bind.execute(tracks.update().where(tracks.c.id == track_id).values(spec=spec))


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("position", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("content_key", sa.String(length=64), nullable=True))
    op.create_table(
        "release_states",
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("runner", sa.String(length=200), nullable=True),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_check("state", STATES), name=op.f("ck_release_states_release_state")),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], name=op.f("fk_release_states_release_id_releases")),
        sa.PrimaryKeyConstraint("release_id", name=op.f("pk_release_states")),
    )
    op.execute(
        "INSERT INTO release_states (release_id, state, attempts, updated_at) SELECT r.id, CASE "
        "WHEN EXISTS (SELECT 1 FROM candidates c JOIN promotions p ON p.to_candidate_id = c.id "
        "WHERE c.release_id = r.id AND p.actor_kind = 'gate') THEN 'done' "
        "WHEN EXISTS (SELECT 1 FROM candidates c WHERE c.release_id = r.id) THEN 'failed' "
        "ELSE 'discovered' END, 0, CURRENT_TIMESTAMP FROM releases r"
    )
    _rename_mode_in_specs("direct", "source")
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_candidates_recycle_mode"), type_="check")
    op.execute("UPDATE candidates SET mode = 'source' WHERE mode = 'direct'")
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.create_check_constraint("recycle_mode", _check("mode", ("iterative", "source", "none")))
        batch_op.add_column(sa.Column("kind", sa.String(length=32), nullable=False, server_default="recycle"))
        batch_op.add_column(sa.Column("carry_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=sa.String(length=32), server_default=None)
        batch_op.create_check_constraint("candidate_kind", _check("kind", ("recycle", "backport")))


def downgrade() -> None:
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_candidates_candidate_kind"), type_="check")
        batch_op.drop_column("carry_reason")
        batch_op.drop_column("kind")
        batch_op.drop_constraint(batch_op.f("ck_candidates_recycle_mode"), type_="check")
    op.execute("UPDATE candidates SET mode = 'direct' WHERE mode = 'source'")
    _rename_mode_in_specs("source", "direct")
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.create_check_constraint("recycle_mode", _check("mode", ("iterative", "direct", "none")))
    op.drop_table("release_states")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("content_key")
        batch_op.drop_column("position")
