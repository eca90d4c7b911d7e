"""the domain's words as checked columns; fine-tune runs as they are recorded

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

- `candidates.mode`, `eval_results.subject` and `promotions.decision` get CHECK constraints that allow
  only the words Graftwork knows. Before this revision an unknown recycle mode ran direct recycling
  and was recorded as typed, so such candidates are first recorded as what they were: `direct`.
- `promotions.actor_kind` (`gate` or `user`) says who decided; rows before it are `gate` when their
  actor was the gate, else `user`.
- `finetune_runs`, never written before this revision, takes the shape a completed run is recorded in.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WORDS = {
    ("candidates", "mode", "recycle_mode"): ("iterative", "direct", "none"),
    ("eval_results", "subject", "eval_subject"): ("candidate", "base", "transferred", "champion"),
    ("promotions", "decision", "gate_decision"): ("promote", "reject", "rollback"),
}


def _check(column: str, words: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(w) for w in words)})"


def upgrade() -> None:
    op.execute("UPDATE candidates SET mode = 'direct' WHERE mode NOT IN ('iterative', 'direct', 'none')")
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor_kind", sa.String(length=32), nullable=True))
    op.execute("UPDATE promotions SET actor_kind = CASE WHEN actor = 'gate' THEN 'gate' ELSE 'user' END")
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.alter_column("actor_kind", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_check_constraint("actor_kind", _check("actor_kind", ("gate", "user")))
    for (table, column, name), words in WORDS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_check_constraint(name, _check(column, words))

    with op.batch_alter_table("finetune_runs", schema=None) as batch_op:
        batch_op.drop_column("status")
        batch_op.drop_column("loss_curve")
        batch_op.add_column(sa.Column("steps", sa.Integer(), nullable=False))
        batch_op.add_column(sa.Column("device", sa.String(length=64), nullable=False))
        batch_op.add_column(sa.Column("processes", sa.Integer(), nullable=False))
        batch_op.add_column(sa.Column("tokens", sa.BigInteger(), nullable=False))
        batch_op.add_column(sa.Column("tokens_per_second", sa.Float(), nullable=False))
        batch_op.add_column(sa.Column("final_loss", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("loss_curve_blob", sa.String(length=64), nullable=True))
        batch_op.alter_column(
            "finished_at", existing_type=sa.DateTime(timezone=True), nullable=False, existing_nullable=True
        )


def downgrade() -> None:
    with op.batch_alter_table("finetune_runs", schema=None) as batch_op:
        batch_op.alter_column(
            "finished_at", existing_type=sa.DateTime(timezone=True), nullable=True, existing_nullable=False
        )
        for column in ("loss_curve_blob", "final_loss", "tokens_per_second", "tokens", "processes", "device", "steps"):
            batch_op.drop_column(column)
        batch_op.add_column(sa.Column("loss_curve", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("status", sa.String(length=32), nullable=False, server_default="done"))
    for (table, _column, name), _words in WORDS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f(f"ck_{table}_{name}"), type_="check")
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_promotions_actor_kind"), type_="check")
        batch_op.drop_column("actor_kind")
