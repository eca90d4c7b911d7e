"""versioned track specs; candidates keep the spec they were made with; fine-tune runs record their data's hash

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

- `track_specs`: one row per version of a track's spec. Each track's current spec becomes its version 1, and
  the candidates made before point at it (the only spec the registry knew them by).
- `candidates.spec_id`, `finetune_runs.data_sha256` (unknown, NULL, for runs from before).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "track_specs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["track_id"], ["tracks.id"], name=op.f("fk_track_specs_track_id_tracks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_track_specs")),
        sa.UniqueConstraint("track_id", "version", name=op.f("uq_track_specs_track_id_version")),
    )
    op.create_index(op.f("ix_track_specs_track_id"), "track_specs", ["track_id"], unique=False)
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spec_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(op.f("fk_candidates_spec_id_track_specs"), "track_specs", ["spec_id"], ["id"])
    with op.batch_alter_table("finetune_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data_sha256", sa.String(length=64), nullable=True))
    tracks = sa.table("tracks", sa.column("id", sa.Integer()), sa.column("spec", sa.JSON()))
    specs = sa.table(
        "track_specs",
        sa.column("id", sa.Integer()),
        sa.column("track_id", sa.Integer()),
        sa.column("version", sa.Integer()),
        sa.column("spec", sa.JSON()),
        sa.column("sha256", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    candidates = sa.table("candidates", sa.column("track_id", sa.Integer()), sa.column("spec_id", sa.Integer()))
    bind = op.get_bind()
    for track_id, spec in bind.execute(sa.select(tracks.c.id, tracks.c.spec)).all():
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        bind.execute(
            specs.insert().values(track_id=track_id, version=1, spec=spec, sha256=digest, created_at=datetime.now(UTC))
        )
        first = bind.execute(sa.select(specs.c.id).where(specs.c.track_id == track_id)).scalar_one()
        bind.execute(candidates.update().where(candidates.c.track_id == track_id).values(spec_id=first))


def downgrade() -> None:
    with op.batch_alter_table("finetune_runs", schema=None) as batch_op:
        batch_op.drop_column("data_sha256")
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_candidates_spec_id_track_specs"), type_="foreignkey")
        batch_op.drop_column("spec_id")
    op.drop_index(op.f("ix_track_specs_track_id"), table_name="track_specs")
    op.drop_table("track_specs")
