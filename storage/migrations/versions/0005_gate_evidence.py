"""the gate's evidence: per-sample results and fingerprints of evaluations; approval requests

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

- `eval_results.samples_blob`: the blob of the task's per-sample results (zstd JSON lines keyed by document id),
  shared by the task's metric rows; `fingerprint`: what decides the numbers (harness, task version and config
  hash, backend, dtype, batch size, chat template, few-shot count, seed, model hash); `setup_sha256`: the hash
  of the fingerprint without the model, equal for comparable evaluations; `model_sha256`. NULL for results from
  before, which are comparable with none.
- `approval_requests`: a candidate that passed its gate's rules and waits for a person's approval on a channel.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("eval_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("samples_blob", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("fingerprint", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("setup_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("model_sha256", sa.String(length=64), nullable=True))
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["track_id"], ["tracks.id"], name=op.f("fk_approval_requests_track_id_tracks")),
        sa.ForeignKeyConstraint(
            ["candidate_id"], ["candidates.id"], name=op.f("fk_approval_requests_candidate_id_candidates")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_requests")),
        sa.UniqueConstraint("candidate_id", "channel", name=op.f("uq_approval_requests_candidate_id_channel")),
    )


def downgrade() -> None:
    op.drop_table("approval_requests")
    with op.batch_alter_table("eval_results", schema=None) as batch_op:
        batch_op.drop_column("model_sha256")
        batch_op.drop_column("setup_sha256")
        batch_op.drop_column("fingerprint")
        batch_op.drop_column("samples_blob")
