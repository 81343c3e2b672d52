"""In-process workers (canned generator) on real Redis, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from rq.job import Job as RQJob

from seedq import queue as q
from seedq.cli import main
from seedq.decoding.types import GroupRequest, GroupResult
from seedq.service import control
from seedq.service.context import Services
from seedq.service.submit import submit_file
from seedq.service.worker import TreeWorker
from seedq.store import repo, reports
from tests.service.helpers import (
    SMALL,
    gsm8k_lines,
    rows,
    run_burst,
    scalar,
    wait_until,
    write_jsonl,
)
from workers.testing import CannedGenerator

NODES_PER_TREE = 6  # root + 2 thoughts at depth 1 + 2 at depth 2 (beam 1) + solution


class CountingGenerator(CannedGenerator):
    """Records how many groups were in flight at once (one shared generator)."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, request: GroupRequest) -> GroupResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await super().generate(request)
        finally:
            self.in_flight -= 1


def submit(services: Services, tmp_path: Path, n: int, **kw: object) -> str:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(n, search=SMALL))
    return submit_file(services, path, **kw).batch_id  # type: ignore[arg-type]


def test_end_to_end_submit_worker_results(services: Services, tmp_path: Path) -> None:
    batch = submit(services, tmp_path, 5)
    gen = CountingGenerator(0.02)
    worker = run_burst(services, gen, round_size=3)
    assert worker.completed == 5 and gen.closed
    assert gen.max_in_flight > 1  # trees of several jobs shared the one generator
    summary = reports.summarize(services.db, [batch])[0]
    assert summary.counts == {"completed": 5} and summary.done
    assert scalar(services, "SELECT COUNT(*) FROM nodes") == 5 * NODES_PER_TREE
    per_node = rows(
        services,
        "SELECT job_id, node_id, COUNT(*) FROM nodes GROUP BY job_id, node_id HAVING COUNT(*) > 1",
    )
    assert per_node == []
    gens = rows(
        services,
        "SELECT role, COUNT(*), MIN(engine), SUM(new_tokens) FROM generations "
        "GROUP BY role ORDER BY role",
    )
    roles = {r[0]: r[1] for r in gens}
    assert roles == {"evaluation": 20, "solution": 5, "thought": 20}
    assert {r[2] for r in gens} == {"canned"} and all(r[3] > 0 for r in gens)
    # results: one JSON line per job keyed by custom_id, with its tree
    out = tmp_path / "results.jsonl"
    env = {
        "SEEDQ_DATABASE_URL": services.settings.database_url,
        "SEEDQ_REDIS_URL": services.settings.redis_url,
    }
    res = CliRunner().invoke(main, ["results", batch, "-o", str(out)], env=env)
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in records] == [f"q{i}" for i in range(5)]
    assert all(len(r["tree"]["nodes"]) == NODES_PER_TREE and r["answer"] for r in records)
    # RQ saw each job finish exactly once, with a JSON result
    job = RQJob.fetch(q.job_id_for(batch, 1), connection=services.redis, serializer=q.SERIALIZER)
    assert job.get_status() == "finished"
    assert job.return_value()["nodes"] == NODES_PER_TREE
    status = CliRunner().invoke(main, ["status", batch, "--json"], env=env)
    assert json.loads(status.output)["counts"]["completed"] == 5


def test_transient_fault_is_retried_with_backoff(services: Services, tmp_path: Path) -> None:
    batch = submit(services, tmp_path, 1)
    gen = CannedGenerator(
        0.005, fail_with=lambda: redis.exceptions.ConnectionError("lost"), fail_times=1
    )
    worker = run_burst(services, gen)
    assert worker.completed == 1
    (row,) = rows(services, "SELECT status, attempts, error FROM jobs WHERE batch_id = :b", b=batch)
    assert tuple(row) == ("completed", 2, None)


def test_bad_input_and_internal_errors_are_not_retried(services: Services, tmp_path: Path) -> None:
    batch = submit(services, tmp_path, 2)
    job1, job2 = q.job_id_for(batch, 1), q.job_id_for(batch, 2)
    with services.db.engine.begin() as conn:  # a stored spec that no longer validates
        from sqlalchemy import text

        conn.execute(
            text("UPDATE jobs SET payload = :p WHERE id = :i"),
            {"p": json.dumps({"task": "chess", "input": {}}), "i": job1},
        )
    gen = CannedGenerator(0.005, fail_with=lambda: RuntimeError("model exploded"))
    run_burst(services, gen)
    failed = rows(
        services,
        "SELECT id, status, attempts, error_kind, error FROM jobs WHERE batch_id = :b ORDER BY id",
        b=batch,
    )
    assert [(r[0], r[1], r[2], r[3]) for r in failed] == [
        (job1, "failed", 1, "input"),
        (job2, "failed", 1, "internal"),
    ]
    assert "model exploded" in failed[1][4] and "Traceback" in failed[1][4]
    errors = list(reports.iter_results(services.db, batch, errors=True))
    assert [e["custom_id"] for e in errors] == ["q0", "q1"]
    rq_job = RQJob.fetch(job2, connection=services.redis, serializer=q.SERIALIZER)
    assert rq_job.get_status() == "failed"


def test_retry_of_a_failed_job(services: Services, tmp_path: Path) -> None:
    batch = submit(services, tmp_path, 2)
    run_burst(services, CannedGenerator(0.005, fail_with=lambda: RuntimeError("boom")))
    assert reports.summarize(services.db, [batch])[0].counts == {"failed": 2}
    env = {
        "SEEDQ_DATABASE_URL": services.settings.database_url,
        "SEEDQ_REDIS_URL": services.settings.redis_url,
    }
    one = q.job_id_for(batch, 2)
    res = CliRunner().invoke(main, ["retry", "--job", one], env=env)
    assert res.exit_code == 0 and "1 job(s)" in res.output, res.output
    run_burst(services)
    assert reports.summarize(services.db, [batch])[0].counts == {"failed": 1, "completed": 1}
    assert control.retry(services, batch_id=batch) == 1
    run_burst(services)
    assert reports.summarize(services.db, [batch])[0].counts == {"completed": 2}
    assert scalar(services, "SELECT COUNT(*) FROM nodes") == 2 * NODES_PER_TREE
    res = CliRunner().invoke(main, ["retry", batch], env=env)
    assert res.exit_code == 1 and "no failed or cancelled job" in res.output


def test_cancel_a_running_batch(services: Services, tmp_path: Path) -> None:
    batch = submit(services, tmp_path, 6)
    gen = CannedGenerator(0.2)
    worker = TreeWorker(services, lambda: gen, install_signals=False, round_size=2)
    thread = threading.Thread(target=worker.work, kwargs={"burst": True}, daemon=True)
    thread.start()
    # both round slots busy and a tree under way (the second claim may land after the first
    # node under load: wait for it rather than racing it; a worker that never runs 2 fails)
    wait_until(lambda: len(worker.running) == 2
               and scalar(services, "SELECT COUNT(*) FROM nodes") > 0)
    assert control.cancel_batch(services, batch) == 6
    thread.join(15)
    assert not thread.is_alive()
    assert reports.summarize(services.db, [batch])[0].counts == {"cancelled": 6}
    assert worker.completed == 0
    canceled = services.queue().canceled_job_registry.get_job_ids()
    assert len(canceled) == 2  # the 2 stopped while running
    assert services.redis.llen(services.queue().key) == 0  # the 4 queued left Redis at cancel


def test_a_heartbeat_during_the_completion_write_loses_nothing(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing a job's completion takes it out of RUNNING; a heartbeat landing between that
    write and the worker's next step saw the job as no longer owned, cancelled the finished
    tree as lost and never told RQ (a CI failure: 4 of 5 completed)."""
    batch = submit(services, tmp_path, 3)
    worker = TreeWorker(services, lambda: CannedGenerator(0.005), install_signals=False)
    real_complete = repo.complete_job

    def complete_then_beat(*args: Any, **kwargs: Any) -> bool:
        owned = real_complete(*args, **kwargs)
        worker.on_lost(worker.beat())  # what the heartbeat thread does, right now
        time.sleep(0.05)  # the event loop runs the cancel before this write returns
        return owned

    monkeypatch.setattr(repo, "complete_job", complete_then_beat)
    worker.work(burst=True)
    assert worker.completed == 3
    assert reports.summarize(services.db, [batch])[0].counts == {"completed": 3}
    for i in range(1, 4):
        job = RQJob.fetch(q.job_id_for(batch, i), connection=services.redis,
                          serializer=q.SERIALIZER)
        assert job.get_status() == "finished"


def test_rerun_of_a_finished_tree_writes_no_duplicates(services: Services, tmp_path: Path) -> None:
    batch = submit(services, tmp_path, 1)
    run_burst(services)
    first = rows(services, "SELECT node_id, thought FROM nodes ORDER BY node_id")
    with services.db.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE jobs SET status = 'failed' WHERE batch_id = :b"), {"b": batch})
    control.retry(services, batch_id=batch)
    run_burst(services)
    assert rows(services, "SELECT node_id, thought FROM nodes ORDER BY node_id") == first
    assert scalar(services, "SELECT COUNT(*) FROM generations") == 9
