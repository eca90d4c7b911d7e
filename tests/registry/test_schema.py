"""Must-hold 5 (migrations) and the database rules: one session scope, immutable artifacts, idempotent inserts."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from flows.registry import Registry
from storage import registry as rows
from storage.db import current_revision, downgrade, ensure_schema, head_revision, make_engine, session_scope, upgrade
from storage.errors import DatabaseError, ImmutableRowError, NotFoundError, SchemaTooNewError
from storage.models import Base, Release

TABLES = {
    "tracks", "releases", "diffs", "diff_files", "finetune_runs", "candidates", "eval_results", "promotions",
    "webhook_deliveries",
}  # fmt: skip
SHA = "a" * 40


def test_upgrade_from_empty_to_head_and_back(database_url: str) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    with engine.connect() as connection:
        pending = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert pending == []
    downgrade(engine, revision="base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    assert current_revision(engine) is None
    engine.dispose()


def test_constraints_follow_the_naming_convention(registry: Registry) -> None:
    inspector = inspect(registry.engine)
    assert inspector.get_pk_constraint("releases")["name"] == "pk_releases"
    assert {u["name"] for u in inspector.get_unique_constraints("releases")} == {
        "uq_releases_track_id_repo_id_revision"
    }
    assert {f["name"] for f in inspector.get_foreign_keys("candidates")} == {
        "fk_candidates_track_id_tracks",
        "fk_candidates_release_id_releases",
        "fk_candidates_source_diff_id_diffs",
        "fk_candidates_finetune_run_id_finetune_runs",
    }


def test_a_database_from_a_newer_graftwork_is_refused(registry: Registry) -> None:
    with registry.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(SchemaTooNewError, match=r"revision f00dfeed, which this Graftwork .* does not know"):
        ensure_schema(registry.engine)
    assert current_revision(registry.engine) == "f00dfeed"


def test_an_unreachable_database_is_a_clear_error() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(DatabaseError, match="cannot reach the database at postgresql"):
        ensure_schema(engine)


def test_a_bad_url_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="is not a database URL"):
        make_engine("not a url")


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_recording_a_release_twice_gives_one_row(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        track = rows.ensure_track(session, name="t")
        first, new1 = rows.record_release(session, track=track, repo_id="org/m", revision=SHA)
        second, new2 = rows.record_release(session, track=track, repo_id="org/m", revision=SHA, ref="main")
        assert (new1, new2) == (True, False)
        assert first.id == second.id and second.ref is None
    with session_scope(registry.engine) as session:
        assert len(rows.list_artifacts(session, kind="release")) == 1


def test_artifact_rows_cannot_be_changed_or_deleted(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        release, _ = rows.record_release(
            session, track=rows.ensure_track(session, name="t"), repo_id="o/m", revision=SHA
        )
    with (
        pytest.raises(ImmutableRowError, match=r"Release \d+ is an immutable artifact row"),
        session_scope(registry.engine) as session,
    ):
        session.get(Release, release.id).revision = "b" * 40  # type: ignore[union-attr]
    with pytest.raises(ImmutableRowError), session_scope(registry.engine) as session:
        session.delete(session.get(Release, release.id))
    with session_scope(registry.engine) as session:
        assert session.get(Release, release.id).revision == SHA  # type: ignore[union-attr]


def test_a_failing_scope_rolls_everything_back(registry: Registry) -> None:
    with pytest.raises(RuntimeError), session_scope(registry.engine) as session:
        rows.record_release(session, track=rows.ensure_track(session, name="t"), repo_id="o/m", revision=SHA)
        raise RuntimeError("boom")
    with session_scope(registry.engine) as session:
        assert rows.list_artifacts(session) == []
        with pytest.raises(NotFoundError, match="no track named 't'"):
            rows.get_track(session, name="t")


def test_promotion_and_rollback_are_new_rows(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        track = rows.ensure_track(session, name="t")
        release, _ = rows.record_release(session, track=track, repo_id="o/m", revision=SHA)
        a, b = (
            rows.add_candidate(session, track=track, release=release, mode="iterative", alpha=1.0, model_uri=f"/m/{n}")
            for n in "ab"
        )
        rows.add_promotion(
            session, track=track, channel="prod", decision="promote", to_candidate=a, reasons=[], actor="gate"
        )
        rows.add_promotion(
            session, track=track, channel="prod", decision="reject", to_candidate=b, reasons=["worse"], actor="gate"
        )
        assert rows.champion(session, track=track, channel="prod") == a
        rows.add_promotion(
            session, track=track, channel="prod", decision="promote", to_candidate=b, reasons=[], actor="gate"
        )
        assert rows.champion(session, track=track, channel="prod") == b
        back = rows.add_promotion(
            session,
            track=track,
            channel="prod",
            decision="rollback",
            to_candidate=a,
            reasons=["regression"],
            actor="me",
        )
        assert (back.from_candidate_id, back.to_candidate_id) == (b.id, a.id)
        assert rows.champion(session, track=track, channel="prod") == a
        assert len(rows.list_artifacts(session, kind="promotion")) == 4


def test_eval_results_keep_na_stderr_as_null(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        track = rows.ensure_track(session, name="t")
        release, _ = rows.record_release(session, track=track, repo_id="o/m", revision=SHA)
        cand = rows.add_candidate(session, track=track, release=release, mode="none", alpha=0.0, model_uri="/m")
        score = rows.Score("addition", "exact_match", "none", 0.93, None, 200, "0.4.13", "1.0")
        rows.add_eval_results(session, scores=[score], subject="candidate", candidate=cand)
    with session_scope(registry.engine) as session:
        [stored] = rows.eval_results(session, candidate=cand)
        assert (stored.value, stored.stderr, stored.n) == (0.93, None, 200)


def test_ids_are_checked(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        with pytest.raises(NotFoundError, match="'x-1' is not a registry id"):
            rows.get(session, ref="x-1")
        with pytest.raises(NotFoundError, match="no diff with id 7"):
            rows.get_diff(session, ref="7")
