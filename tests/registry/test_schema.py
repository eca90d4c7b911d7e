"""Must-hold 5 (migrations) and the database rules: one session scope, immutable artifacts, idempotent inserts."""

from __future__ import annotations

import pytest
import sqlalchemy.exc
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from graftwork.errors import DatabaseError, ImmutableRowError, NotFoundError, SchemaTooNewError
from graftwork.storage import Registry, evals, runs
from graftwork.storage import registry as rows
from graftwork.storage.db import (
    MIGRATIONS,
    current_revision,
    downgrade,
    ensure_schema,
    head_revision,
    known_revisions,
    make_engine,
    session_scope,
    upgrade,
)
from graftwork.storage.models import Base, Release
from graftwork.terms import ActorKind, ArtifactKind, EvalSubject, GateDecision, RecycleMode
from tests.registry.conftest import candidate, digest, record_release, track_named

PROMOTE, REJECT, GATE = GateDecision.PROMOTE, GateDecision.REJECT, ActorKind.GATE

TABLES = {
    "tracks", "releases", "release_states", "diffs", "diff_files", "finetune_runs", "candidates", "eval_results",
    "promotions", "webhook_deliveries", "track_specs", "approval_requests",
}  # fmt: skip
SHA = "a" * 40


def test_upgrade_from_empty_to_head_and_back(database_url: str) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        pending = compare_metadata(context, Base.metadata)
        assert context.get_current_revision() == head_revision()  # read as Alembic reads it
    assert pending == []
    downgrade(engine, revision="0003")
    assert current_revision(engine) == "0003"
    downgrade(engine, revision="base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    assert current_revision(engine) is None
    engine.dispose()


def test_the_revisions_read_without_alembic_are_alembics() -> None:
    """Commands read the schema's revisions from the files, without loading Alembic: the same chain and head."""
    scripts = ScriptDirectory(str(MIGRATIONS))
    assert known_revisions() == {s.revision: s.down_revision for s in scripts.walk_revisions()}
    assert head_revision() == scripts.get_current_head() == max(known_revisions())


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
        "fk_candidates_spec_id_track_specs",
    }


def test_the_database_refuses_words_it_does_not_know(registry: Registry) -> None:
    inspector = inspect(registry.engine)
    checks = {
        c["name"]
        for table in ("candidates", "eval_results", "promotions")
        for c in inspector.get_check_constraints(table)
    }
    assert checks == {
        "ck_candidates_recycle_mode", "ck_candidates_candidate_kind", "ck_eval_results_eval_subject",
        "ck_promotions_gate_decision", "ck_promotions_actor_kind",
    }  # fmt: skip
    with session_scope(registry.engine) as session:
        release, _ = record_release(session, track=track_named(session, "t"), repo_id="o/m", revision=SHA)
    insert = text(
        "INSERT INTO candidates (track_id, release_id, kind, mode, alpha, model_uri, created_at) "
        "VALUES (:track, :release, 'recycle', :mode, 1.0, '/m', CURRENT_TIMESTAMP)"
    )
    refused = r"ck_candidates_recycle_mode|CHECK constraint failed"
    with pytest.raises(sqlalchemy.exc.IntegrityError, match=refused), registry.engine.begin() as connection:
        connection.execute(insert, {"track": release.track_id, "release": release.id, "mode": "iterativ"})
    unknown = r"'iterativ' is not among the defined enum values"
    with pytest.raises(sqlalchemy.exc.StatementError, match=unknown), session_scope(registry.engine) as session:
        candidate(session, session.get(Release, release.id), mode="iterativ", uri="/m")  # type: ignore[arg-type]


def test_revision_0002_records_a_typo_mode_as_what_it_ran(database_url: str) -> None:
    """Before 0002 an unknown mode ran direct recycling and was recorded as typed; 0002 records `direct`
    (0003 renames it `source`) and says who made each promotion, 0003 gives each release its state and 0004
    makes each track's spec its version 1, on a database full of rows that point at each other."""
    engine = make_engine(database_url)
    upgrade(engine, revision="0001")
    with engine.begin() as connection:
        for statement in (
            "INSERT INTO tracks (id, name, spec, created_at) VALUES (1, 't', '{}', CURRENT_TIMESTAMP)",
            "INSERT INTO releases (id, track_id, repo_id, revision, created_at) "
            f"VALUES (1, 1, 'o/m', '{SHA}', CURRENT_TIMESTAMP)",
            "INSERT INTO candidates (id, track_id, release_id, mode, alpha, model_uri, created_at) "
            "VALUES (1, 1, 1, 'iterativ', 1.0, '/a', CURRENT_TIMESTAMP), "
            "(2, 1, 1, 'none', 0.0, '/b', CURRENT_TIMESTAMP)",
            "INSERT INTO diffs (id, track_id, key, candidate_id, finetuned, base, tensor_count, norms, codec, "
            "raw_bytes, stored_bytes, graftwork_version, created_at) "
            "VALUES (1, 1, 'k', 2, '{}', '{}', 0, '{}', 'c', 0, 0, '0.1.0', CURRENT_TIMESTAMP)",
            "INSERT INTO promotions (id, track_id, channel, decision, to_candidate_id, reasons, actor, created_at) "
            "VALUES (1, 1, 'p', 'promote', 2, '[]', 'gate', CURRENT_TIMESTAMP), "
            "(2, 1, 'p', 'rollback', 1, '[]', 'alice', CURRENT_TIMESTAMP)",
        ):
            connection.execute(text(statement))
    upgrade(engine)
    with engine.connect() as connection:
        modes = connection.execute(text("SELECT mode FROM candidates ORDER BY id")).scalars().all()
        actors = connection.execute(text("SELECT actor_kind, actor FROM promotions ORDER BY id")).all()
        diff_owner = connection.execute(text("SELECT candidate_id FROM diffs")).scalar_one()
        states = connection.execute(text("SELECT release_id, state, attempts FROM release_states")).all()
        versions = connection.execute(text("SELECT id, track_id, version, sha256 FROM track_specs")).all()
        spec_ids = connection.execute(text("SELECT spec_id FROM candidates ORDER BY id")).scalars().all()
    assert [tuple(v) for v in versions] == [(1, 1, 1, digest({}))]  # 0004: the spec it had is version 1
    assert spec_ids == [1, 1]  # and the candidates made before were made with it
    assert (modes, [tuple(a) for a in actors], diff_owner) == (
        ["source", "none"],
        [("gate", "gate"), ("user", "alice")],
        2,
    )
    assert [tuple(row) for row in states] == [(1, "done", 0)]  # its candidate has the gate's decision
    downgrade(engine, revision="0001")
    engine.dispose()


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
        track = track_named(session, "t")
        first, new1 = record_release(session, track=track, repo_id="org/m", revision=SHA)
        second, new2 = record_release(session, track=track, repo_id="org/m", revision=SHA, ref="main")
        assert (new1, new2) == (True, False)
        assert first.id == second.id and second.ref is None
    with session_scope(registry.engine) as session:
        assert len(rows.list_artifacts(session, kind=ArtifactKind.RELEASE)) == 1


def test_artifact_rows_cannot_be_changed_or_deleted(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        release, _ = record_release(session, track=track_named(session, "t"), repo_id="o/m", revision=SHA)
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
        record_release(session, track=track_named(session, "x"), repo_id="o/m", revision=SHA)
        raise RuntimeError("boom")
    with session_scope(registry.engine) as session:
        assert rows.list_artifacts(session) == []
        with pytest.raises(NotFoundError, match="no track named 'x'"):
            rows.get_track(session, name="x")


def test_promotion_and_rollback_are_new_rows(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        track = track_named(session, "t")
        release, _ = record_release(session, track=track, repo_id="o/m", revision=SHA)
        a, b = (candidate(session, release, mode=RecycleMode.ITERATIVE, uri=f"/m/{n}") for n in "ab")
        runs.add_promotion(
            session,
            track=track,
            channel="prod",
            decision=PROMOTE,
            to_candidate=a,
            reasons=[],
            actor_kind=GATE,
            actor="gate",
        )
        runs.add_promotion(
            session,
            track=track,
            channel="prod",
            decision=REJECT,
            to_candidate=b,
            reasons=["worse"],
            actor_kind=GATE,
            actor="gate",
        )
        assert runs.champion(session, track=track, channel="prod") == a
        runs.add_promotion(
            session,
            track=track,
            channel="prod",
            decision=PROMOTE,
            to_candidate=b,
            reasons=[],
            actor_kind=GATE,
            actor="gate",
        )
        assert runs.champion(session, track=track, channel="prod") == b
        back = runs.add_promotion(
            session,
            track=track,
            channel="prod",
            decision=GateDecision.ROLLBACK,
            to_candidate=a,
            reasons=["regression"],
            actor_kind=ActorKind.USER,
            actor="me",
        )
        assert (back.from_candidate_id, back.to_candidate_id) == (b.id, a.id)
        assert runs.champion(session, track=track, channel="prod") == a
        assert len(rows.list_artifacts(session, kind=ArtifactKind.PROMOTION)) == 4


def test_eval_results_keep_na_stderr_as_null(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        track = track_named(session, "t")
        release, _ = record_release(session, track=track, repo_id="o/m", revision=SHA)
        cand = candidate(session, release, mode=RecycleMode.NONE, uri="/m")
        score = evals.Score("addition", "exact_match", "none", 0.93, None, 200, "0.4.13", "1.0")
        evals.add_eval_results(session, scores=[score], subject=EvalSubject.CANDIDATE, candidate=cand)
    with session_scope(registry.engine) as session:
        [stored] = evals.eval_results(session, candidate=cand)
        assert (stored.value, stored.stderr, stored.n) == (0.93, None, 200)


def test_ids_are_checked(registry: Registry) -> None:
    with session_scope(registry.engine) as session:
        with pytest.raises(NotFoundError, match="'x-1' is not a registry id"):
            rows.get(session, ref="x-1")
        with pytest.raises(NotFoundError, match="no diff with id 7"):
            rows.get_diff(session, ref="7")
