"""The store on SQLite and PostgreSQL: migrations, claims, idempotent nodes, outcomes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from seedq.store import migrate, repo, reports
from seedq.store.db import Database
from seedq.store.models import Base, utcnow
from seedq.store.rows import Claimed, ClaimRefused, GenerationRow, NewJob, NodeRow, Rejection
from seedq.store.stale import find_stale, recover_stale


@pytest.fixture
def db(database_url: str):
    database = Database(database_url)
    migrate.upgrade(database)
    yield database
    database.close()


def make_batch(db: Database, n: int = 2, batch_id: str = "b1", queue: str = "q") -> list[str]:
    jobs = [NewJob(f"{batch_id}-{i:06d}", i, f"c{i}", "gsm8k", {"i": i}) for i in range(1, n + 1)]
    rejected = [Rejection(n + 1, "search.breadth", "must be in 1..32, got 0", '{"x": 1}')]
    repo.create_batch(
        db,
        batch_id=batch_id,
        source="f.jsonl",
        task="gsm8k",
        queue=queue,
        options={},
        jobs=jobs,
        rejected=rejected,
    )
    return [j.id for j in jobs]


def node(node_id: str, parent: str | None, depth: int, thought: str = "t") -> NodeRow:
    return {
        "node_id": node_id,
        "parent_id": parent,
        "depth": depth,
        "kind": "root" if parent is None else "thought",
        "thought": thought,
        "evaluation": None,
        "score": 0.5,
        "selected": False,
        "failure": None,
        "metrics": {},
    }


def gen(key: str, node_id: str, tokens: int) -> GenerationRow:
    group, _, index = key.partition("#")
    return {
        "gen_key": key,
        "group_key": group,
        "seq_index": int(index),
        "node_id": node_id,
        "role": "thought",
        "strategy": "sample",
        "depth": 1,
        "engine": "ar",
        "sequences": 1,
        "shared": 1,
        "new_tokens": tokens,
        "drafted_tokens": 0,
        "accepted_tokens": 0,
        "target_forwards": tokens,
        "draft_forwards": 0,
        "draft_seconds": 0.0,
        "verify_seconds": 0.1,
        "wait_seconds": 0.0,
        "wall_seconds": 0.2,
    }


def test_migrations_match_models_and_schema_check(database_url: str) -> None:
    database = Database(database_url)
    try:
        with pytest.raises(migrate.SchemaOutOfDate, match="seedq db upgrade"):
            migrate.ensure_current(database)
        assert migrate.upgrade(database) == migrate.head_revision()
        migrate.ensure_current(database)
        with database.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
        with database.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'old0'"))
        with pytest.raises(migrate.SchemaOutOfDate, match="revision old0"):
            migrate.ensure_current(database)
    finally:
        database.close()


def test_batch_insert_claim_and_refusals(db: Database) -> None:
    ids = make_batch(db, 3)
    summary = reports.summarize(db, ["b1"])[0]
    assert summary.counts == {"queued": 3, "rejected": 1}
    stale = utcnow() - timedelta(seconds=10)
    first = repo.claim_job(db, ids[0], "w1", stale)
    assert isinstance(first, Claimed) and first.attempt == 1 and first.payload == {"i": 1}
    again = repo.claim_job(db, ids[0], "w2", stale)
    assert again == ClaimRefused(ids[0], "running")  # live on w1: not claimable
    # w1 stops heartbeating: once its heartbeat is older than the cutoff, w2 may take over
    later = utcnow() + timedelta(seconds=1)
    taken = repo.claim_job(db, ids[0], "w2", later)
    assert isinstance(taken, Claimed) and taken.attempt == 2
    assert repo.heartbeat(db, [ids[0]], "w1") == {ids[0]}  # w1 lost it
    assert repo.heartbeat(db, [ids[0]], "w2") == set()
    assert repo.claim_job(db, "nope", "w1", stale) == ClaimRefused("nope", None)


def test_nodes_are_upserted_and_old_attempts_dropped(db: Database) -> None:
    (job_id,) = make_batch(db, 1)
    stale = utcnow() - timedelta(seconds=10)
    c1 = repo.claim_job(db, job_id, "w1", stale)
    assert isinstance(c1, Claimed)
    repo.record_node(db, job_id, 1, node("0", None, 0))
    repo.record_node(db, job_id, 1, node("0.1", "0", 1, "first"), [gen("0/thought#0", "0.1", 5)])
    repo.record_node(db, job_id, 1, node("0.2", "0", 1), [gen("0/thought#1", "0.2", 7)])
    # the worker dies; attempt 2 re-runs the same tree, writing the same keys again
    c2 = repo.claim_job(db, job_id, "w2", utcnow() + timedelta(seconds=1))
    assert isinstance(c2, Claimed) and c2.attempt == 2
    repo.record_node(db, job_id, 2, node("0", None, 0))
    repo.record_node(db, job_id, 2, node("0.1", "0", 1, "second"), [gen("0/thought#0", "0.1", 9)])
    assert not repo.complete_job(
        db, job_id, "w1", 1, result={}, answer=None, correct=None, wall_seconds=1.0
    )  # the old owner cannot finish it
    assert repo.complete_job(
        db, job_id, "w2", 2, result={"answer": "4"}, answer="4", correct=True, wall_seconds=1.0
    )
    nodes = reports.tree_nodes(db, job_id)
    assert [(n["node_id"], n["thought"], n["attempt"]) for n in nodes] == [
        ("0", "t", 2),
        ("0.1", "second", 2),
    ]
    with db.engine.connect() as conn:
        gens = conn.execute(text("SELECT gen_key, new_tokens FROM generations")).all()
    assert [tuple(g) for g in gens] == [("0/thought#0", 9)]


def test_release_fail_cancel_and_retry(db: Database) -> None:
    ids = make_batch(db, 3)
    stale = utcnow() - timedelta(seconds=10)
    for job_id in ids[:2]:
        assert isinstance(repo.claim_job(db, job_id, "w", stale), Claimed)
    assert repo.release_job(db, ids[0], "w", 1, note="ckpt", kind="shutdown", refund_attempt=True)
    assert repo.fail_job(db, ids[1], "w", 1, error="boom\ntrace", kind="internal")
    with db.engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, attempts FROM jobs WHERE id = :i"), {"i": ids[0]}
        ).one()
    assert tuple(row) == ("queued", 0)
    assert repo.cancel_batch(db, "b1") == 2  # the released one and the never-claimed one
    targets = repo.reset_for_retry(db, batch_id="b1")
    assert sorted(t.job_id for t in targets) == sorted(ids)
    assert reports.summarize(db, ["b1"])[0].counts == {"queued": 3, "rejected": 1}
    errors = list(reports.iter_results(db, "b1", errors=True))
    assert [e["status"] for e in errors] == ["rejected"]
    assert "search.breadth" in errors[0]["error"]


def test_stale_recovery_requeues_then_fails(db: Database) -> None:
    (job_id,) = make_batch(db, 1, queue="qq")
    repo.claim_job(db, job_id, "dead", utcnow() - timedelta(seconds=10))
    cutoff = utcnow() + timedelta(seconds=1)
    (stale,) = find_stale(db, "qq", cutoff)
    assert recover_stale(db, stale, cutoff, max_attempts=2) == "queued"
    assert recover_stale(db, stale, cutoff, max_attempts=2) is None  # already done
    repo.claim_job(db, job_id, "dead2", utcnow() - timedelta(seconds=10))
    (stale,) = find_stale(db, "qq", utcnow() + timedelta(seconds=1))
    assert stale.attempts == 2
    assert (
        recover_stale(db, stale, utcnow() + timedelta(seconds=1), max_attempts=2) == "failed"
    )


LEGACY_ROW = (
    "INSERT INTO generations (job_id, gen_key, node_id, role, depth, engine, sequences, shared,"
    " new_tokens, drafted_tokens, accepted_tokens, target_forwards, draft_forwards,"
    " draft_seconds, verify_seconds, wait_seconds, wall_seconds, attempt, created_at)"
    " VALUES (:j, '0.1:evaluation', '0.1', 'evaluation', 1, 'ar', 3, 1, 30, 0, 0, 30, 0,"
    " 0, 1.5, 0, 1.5, 1, :t)"
)

LEGACY_BATCH = (
    "INSERT INTO batches (id, created_at, source, task, queue, total, rejected, options)"
    " VALUES ('b1', :t, 'f.jsonl', 'gsm8k', 'q', 1, 0, '{}')"
)
LEGACY_JOB = (
    "INSERT INTO jobs (id, batch_id, line_no, custom_id, task, status, attempts, payload,"
    " created_at) VALUES (:j, 'b1', 1, 'c1', 'gsm8k', 'queued', 0, '{}', :t)"
)


def test_revision_0002_keeps_legacy_rows_until_their_job_completes(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert migrate.upgrade(database, "0001") == "0001"
        job_id = "b1-000001"
        with database.engine.begin() as conn:  # the 0001 schema, as its seedq wrote it
            conn.execute(text(LEGACY_BATCH), {"t": utcnow()})
            conn.execute(text(LEGACY_JOB), {"j": job_id, "t": utcnow()})
            conn.execute(text(LEGACY_ROW), {"j": job_id, "t": utcnow()})
        assert migrate.upgrade(database, "0002") == "0002"
        with database.engine.connect() as conn:
            legacy = conn.execute(
                text("SELECT gen_key, group_key, seq_index, strategy, sequences FROM generations")
            ).all()
        assert [tuple(r) for r in legacy] == [("0.1:evaluation", None, 0, None, 3)]
        assert migrate.upgrade(database) == migrate.head_revision() == "0005"
        with database.engine.connect() as conn:  # 0003: batches of old have no engine options
            assert conn.execute(text("SELECT engine FROM batches")).scalars().all() == [None]
            reused = text("SELECT reused_prompt_tokens FROM generations")  # 0005: old rows 0
            assert conn.execute(reused).scalars().all() == [0]
        claim = repo.claim_job(database, job_id, "w", utcnow() - timedelta(seconds=10))
        assert isinstance(claim, Claimed) and claim.attempt == 1  # same attempt as the old rows
        repo.record_node(database, job_id, 1, node("0.1", "0", 1), [gen("0/value#0", "0.1", 4)])
        assert repo.complete_job(
            database, job_id, "w", 1, result={}, answer=None, correct=None, wall_seconds=1.0
        )
        with database.engine.connect() as conn:
            keys = conn.execute(text("SELECT gen_key FROM generations")).scalars().all()
        assert keys == ["0/value#0"]  # the summed 0001 row is gone, the per-sequence one kept
        cfg = migrate.alembic_config()
        with database.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        columns = {c["name"] for c in inspect(database.engine).get_columns("generations")}
        assert "group_key" not in columns and "seq_index" not in columns
        assert "engine" not in {c["name"] for c in inspect(database.engine).get_columns("batches")}
        assert migrate.current_revision(database) == "0001"
    finally:
        database.close()


def test_nul_characters_a_model_wrote_are_stored_scrubbed(db: Database) -> None:
    (job_id,) = make_batch(db, 1)
    claim = repo.claim_job(db, job_id, "w", utcnow() - timedelta(seconds=10))
    assert isinstance(claim, Claimed)
    garbage = node("0.1", "0", 1, "a\x00b")
    garbage["metrics"] = {"raw": ["c\x00"]}
    repo.record_node(db, job_id, 1, garbage)  # PostgreSQL refuses NUL in TEXT and JSONB
    result = {"answer": "4\x00", "tree": {"nodes": [{"thought": "\x00"}]}}
    assert repo.complete_job(
        db, job_id, "w", 1, result=result, answer="4\x00", correct=None, wall_seconds=1.0
    )
    (stored,) = reports.tree_nodes(db, job_id)
    assert stored["thought"] == "a\ufffdb" and stored["metrics"] == {"raw": ["c\ufffd"]}
    (record,) = reports.iter_results(db, "b1", errors=False)
    assert record["answer"] == "4\ufffd" and record["tree"]["nodes"] == [{"thought": "\ufffd"}]
