"""initial registry schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22

The candidates → diffs foreign key closes a cycle (diffs also point at candidates), so it is added
after both tables exist.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tracks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tracks")),
        sa.UniqueConstraint("name", name=op.f("uq_tracks_name")),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("repo_id", sa.String(length=400), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("ref", sa.String(length=400), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["track_id"], ["tracks.id"], name=op.f("fk_releases_track_id_tracks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_releases")),
        sa.UniqueConstraint("track_id", "repo_id", "revision", name=op.f("uq_releases_track_id_repo_id_revision")),
    )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_releases_track_id"), ["track_id"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["track_id"], ["tracks.id"], name=op.f("fk_webhook_deliveries_track_id_tracks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("key", name=op.f("uq_webhook_deliveries_key")),
    )
    op.create_table(
        "finetune_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("recipe", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("loss_curve", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], name=op.f("fk_finetune_runs_release_id_releases")),
        sa.ForeignKeyConstraint(["track_id"], ["tracks.id"], name=op.f("fk_finetune_runs_track_id_tracks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finetune_runs")),
    )
    with op.batch_alter_table("finetune_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_finetune_runs_track_id"), ["track_id"], unique=False)

    op.create_table(
        "candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=32), nullable=False),
        sa.Column("alpha", sa.Float(), nullable=False),
        sa.Column("source_diff_id", sa.Integer(), nullable=True),
        sa.Column("finetune_run_id", sa.Integer(), nullable=True),
        sa.Column("model_uri", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["finetune_run_id"], ["finetune_runs.id"], name=op.f("fk_candidates_finetune_run_id_finetune_runs")
        ),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], name=op.f("fk_candidates_release_id_releases")),
        sa.ForeignKeyConstraint(["track_id"], ["tracks.id"], name=op.f("fk_candidates_track_id_tracks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidates")),
    )
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_candidates_track_id"), ["track_id"], unique=False)

    op.create_table(
        "diffs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("base_release_id", sa.Integer(), nullable=True),
        sa.Column("candidate_id", sa.Integer(), nullable=True),
        sa.Column("finetuned", sa.JSON(), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("tensor_count", sa.Integer(), nullable=False),
        sa.Column("norms", sa.JSON(), nullable=False),
        sa.Column("codec", sa.String(length=64), nullable=False),
        sa.Column("raw_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("graftwork_version", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["base_release_id"], ["releases.id"], name=op.f("fk_diffs_base_release_id_releases")),
        sa.ForeignKeyConstraint(["candidate_id"], ["candidates.id"], name=op.f("fk_diffs_candidate_id_candidates")),
        sa.ForeignKeyConstraint(["parent_id"], ["diffs.id"], name=op.f("fk_diffs_parent_id_diffs")),
        sa.ForeignKeyConstraint(["track_id"], ["tracks.id"], name=op.f("fk_diffs_track_id_tracks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_diffs")),
        sa.UniqueConstraint("track_id", "key", name=op.f("uq_diffs_track_id_key")),
    )
    with op.batch_alter_table("diffs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_diffs_parent_id"), ["parent_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_diffs_track_id"), ["track_id"], unique=False)
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_candidates_source_diff_id_diffs"), "diffs", ["source_diff_id"], ["id"]
        )

    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=True),
        sa.Column("release_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("metric", sa.String(length=200), nullable=False),
        sa.Column("filter", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("stderr", sa.Float(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=True),
        sa.Column("harness_version", sa.String(length=64), nullable=False),
        sa.Column("task_version", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_id"], ["candidates.id"], name=op.f("fk_eval_results_candidate_id_candidates")
        ),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], name=op.f("fk_eval_results_release_id_releases")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_results")),
    )
    with op.batch_alter_table("eval_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_results_candidate_id"), ["candidate_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_results_release_id"), ["release_id"], unique=False)

    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=32), nullable=False),
        sa.Column("from_candidate_id", sa.Integer(), nullable=True),
        sa.Column("to_candidate_id", sa.Integer(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_candidate_id"], ["candidates.id"], name=op.f("fk_promotions_from_candidate_id_candidates")
        ),
        sa.ForeignKeyConstraint(
            ["to_candidate_id"], ["candidates.id"], name=op.f("fk_promotions_to_candidate_id_candidates")
        ),
        sa.ForeignKeyConstraint(["track_id"], ["tracks.id"], name=op.f("fk_promotions_track_id_tracks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotions")),
    )
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_promotions_track_id"), ["track_id"], unique=False)

    op.create_table(
        "diff_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("diff_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=400), nullable=False),
        sa.Column("raw_sha256", sa.String(length=64), nullable=False),
        sa.Column("raw_bytes", sa.BigInteger(), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("codec", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["diff_id"], ["diffs.id"], name=op.f("fk_diff_files_diff_id_diffs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_diff_files")),
        sa.UniqueConstraint("diff_id", "path", name=op.f("uq_diff_files_diff_id_path")),
    )
    with op.batch_alter_table("diff_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_diff_files_blob_sha256"), ["blob_sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("diff_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_diff_files_blob_sha256"))

    op.drop_table("diff_files")
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_promotions_track_id"))

    op.drop_table("promotions")
    with op.batch_alter_table("eval_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_results_release_id"))
        batch_op.drop_index(batch_op.f("ix_eval_results_candidate_id"))

    op.drop_table("eval_results")
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_candidates_source_diff_id_diffs"), type_="foreignkey")
    with op.batch_alter_table("diffs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_diffs_track_id"))
        batch_op.drop_index(batch_op.f("ix_diffs_parent_id"))

    op.drop_table("diffs")
    with op.batch_alter_table("candidates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_candidates_track_id"))

    op.drop_table("candidates")
    with op.batch_alter_table("finetune_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_finetune_runs_track_id"))

    op.drop_table("finetune_runs")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_releases_track_id"))

    op.drop_table("releases")
    op.drop_table("tracks")
