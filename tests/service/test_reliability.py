"""Recovery that is fast and tidy, and one SQL store per queue: jobs claimed during a database
outage, checkpoint order, retry history, bulk cancel, burst workers and dead workers, and a
worker connected to another database."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from rq.job import Job as RQJob
from sqlalchemy import exc as sa_exc

from seedq import queue as q
from seedq.service import control
from seedq.service.context import Services, open_services
from seedq.service.submit import submit_file
from seedq.service.worker import TreeWorker
from seedq.store import migrate, repo, reports
from seedq.store.db import Database
from seedq.store.models import utcnow
from seedq.store.rows import Claimed
from tests.service.helpers import SMALL, gsm8k_lines, rows, run_burst, wait_until, write_jsonl
from workers.testing import CannedGenerator


def submit(services: Services, tmp_path: Path, n: int, name: str = "in") -> list[str]:
    path = write_jsonl(tmp_path / f"{name}.jsonl", gsm8k_lines(n, search=SMALL))
    batch = submit_file(services, path).batch_id
    return [q.job_id_for(batch, line) for line in range(1, n + 1)]


def waiting(services: Services) -> list[str]:
    return [j.decode() for j in services.redis.lrange(services.queue().key, 0, -1)]


def claiming(services: Services) -> list[str]:
    key = services.queue().intermediate_queue_key
    return [j.decode() for j in services.redis.lrange(key, 0, -1)]


def test_a_job_taken_during_a_database_outage_goes_back_to_the_front(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = submit(services, tmp_path, 2)
    worker = TreeWorker(services, CannedGenerator, install_signals=False)

    def database_down(*args: object, **kwargs: object) -> None:
        raise sa_exc.OperationalError("UPDATE jobs", {}, Exception("server closed"))

    monkeypatch.setattr(repo, "claim_job", database_down)
    with pytest.raises(sa_exc.OperationalError):
        asyncio.run(worker.take_jobs(block=False))
    assert waiting(services) == ids and claiming(services) == []  # FCFS order kept


def test_checkpointed_jobs_keep_their_fcfs_order(services: Services, tmp_path: Path) -> None:
    ids = submit(services, tmp_path, 5)
    quick_stop = Services(
        services.settings.with_overrides(shutdown_grace_seconds=0.0), services.db, services.redis
    )
    worker = TreeWorker(quick_stop, lambda: CannedGenerator(0.5), install_signals=False,
                        round_size=3)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    wait_until(lambda: len(worker.running) == 3)
    worker.ask_stop()
    thread.join(20)
    assert not thread.is_alive()
    assert waiting(services) == ids
    assert reports.summarize(services.db, [q.batch_of(ids[0])])[0].counts == {"queued": 5}


def test_retry_keeps_the_attempt_history(services: Services, tmp_path: Path) -> None:
    (job_id,) = submit(services, tmp_path, 1)
    run_burst(services, CannedGenerator(0.005, fail_with=lambda: RuntimeError("boom")))
    assert control.retry(services, job_id=job_id) == 1
    run_burst(services)
    (row,) = rows(
        services, "SELECT status, attempts, attempt_base, retries FROM jobs WHERE id = :i",
        i=job_id,
    )
    assert tuple(row) == ("completed", 2, 1, 1)
    leftovers = rows(services, "SELECT node_id FROM nodes WHERE job_id = :i AND attempt <> 2",
                     i=job_id)
    assert leftovers == []


def test_cancel_removes_the_batch_from_redis_in_bulk(services: Services, tmp_path: Path) -> None:
    before = submit(services, tmp_path, 2, "a")
    cancelled = submit(services, tmp_path, 40, "b")
    after = submit(services, tmp_path, 2, "c")
    assert control.cancel_batch(services, q.batch_of(cancelled[0])) == 40
    assert waiting(services) == before + after
    assert services.redis.exists(*(RQJob.key_for(j) for j in cancelled)) == 0
    assert services.redis.exists(*(RQJob.key_for(j) for j in before + after)) == 4
    run_burst(services)
    counts = {s.batch_id: s.counts for s in reports.summarize(
        services.db, [q.batch_of(j) for j in (before[0], cancelled[0], after[0])])}
    assert counts == {
        q.batch_of(before[0]): {"completed": 2},
        q.batch_of(cancelled[0]): {"cancelled": 40},
        q.batch_of(after[0]): {"completed": 2},
    }


def claim_as(services: Services, job_id: str, worker: str, beat_age: float) -> None:
    """``worker`` claimed ``job_id`` (Redis and database) and last beat ``beat_age`` ago."""
    rq_job = q.claim_next(services.queue(), None)
    assert rq_job is not None and rq_job.id == job_id
    services.redis.lrem(services.queue().intermediate_queue_key, 0, job_id)
    claim = repo.claim_job(services.db, job_id, worker, utcnow() - timedelta(seconds=60))
    assert isinstance(claim, Claimed)
    with services.db.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE jobs SET heartbeat_at = ? WHERE id = ?"
            if services.db.dialect == "sqlite"
            else "UPDATE jobs SET heartbeat_at = %s WHERE id = %s",
            (utcnow() - timedelta(seconds=beat_age), job_id),
        )


def test_a_burst_worker_recovers_abandoned_jobs_before_it_exits(
    services: Services, tmp_path: Path
) -> None:
    (job_id,) = submit(services, tmp_path, 1)
    claim_as(services, job_id, "ghost", beat_age=2.0)  # missed beats, not yet past the TTL
    worker = run_burst(services)
    assert worker.completed == 1
    (row,) = rows(services, "SELECT status, attempts, worker FROM jobs WHERE id = :i", i=job_id)
    assert tuple(row) == ("completed", 2, worker.name)


def test_workers_shows_a_dead_worker_at_once_and_keeps_it_with_its_jobs(
    services: Services, tmp_path: Path
) -> None:
    (job_id,) = submit(services, tmp_path, 1)
    name = f"host.4242.{services.settings.queue[-6:]}"
    dead = TreeWorker(services, CannedGenerator, name=name, install_signals=False)
    dead.register_birth()
    claim_as(services, job_id, name, beat_age=0.0)
    lapsed = (utcnow() - timedelta(seconds=2.0)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    services.redis.hset(dead.key, "last_heartbeat", lapsed)  # TTL 4s: not yet expired
    assert name not in [w.name for w in control.list_workers(services)]
    (info,) = [w for w in control.list_workers(services, include_dead=True) if w.name == name]
    assert not info.alive and info.state == "dead" and [j["job_id"] for j in info.jobs] == [job_id]
    services.redis.delete(dead.key)  # its Redis record expired; the job still shows running
    (info,) = [w for w in control.list_workers(services, include_dead=True) if w.name == name]
    assert not info.alive and info.pid == 4242 and [j["job_id"] for j in info.jobs] == [job_id]


def test_a_worker_of_another_store_leaves_the_jobs_in_place(
    services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = submit(services, tmp_path, 2)
    other_url = f"sqlite:///{tmp_path / 'other.sqlite'}"
    database = Database(other_url)
    migrate.upgrade(database)
    database.close()
    other = open_services(services.settings.with_overrides(database_url=other_url))
    try:
        with caplog.at_level(logging.WARNING, logger="seedq.service.recovery"):
            stray = run_burst(other)
            stray = run_burst(other)
    finally:
        other.close()
    assert stray.completed == 0
    assert waiting(services) == ids and claiming(services) == []
    warnings = [r for r in caplog.records if "belongs to SQL store" in r.getMessage()]
    assert len(warnings) == 2  # once per worker
    assert run_burst(services).completed == 2
    assert other.store_id != services.store_id


def test_jobs_redis_lost_come_back_at_once_even_with_newer_work_queued(
    services: Services, tmp_path: Path
) -> None:
    from seedq.service.maintenance import Maintenance

    lost = submit(services, tmp_path, 2, "old")
    with services.db.engine.begin() as conn:  # submitted a while ago
        conn.exec_driver_sql(
            "UPDATE jobs SET created_at = created_at - INTERVAL '30 seconds'"
            if services.db.dialect == "postgresql"
            else "UPDATE jobs SET created_at = datetime(created_at, '-30 seconds')"
        )
    Maintenance(services, services.queue(), "m").run()  # Redis known to be whole
    name = services.settings.queue  # Redis restarted without its data (this queue's part)...
    services.redis.delete(*services.redis.keys(f"*{name}*"), *(RQJob.key_for(j) for j in lost))
    newer = submit(services, tmp_path, 1, "new")  # ...and a new batch came in since
    report = Maintenance(services, services.queue(), "m").run()
    assert report.orphans == lost
    assert waiting(services) == newer + lost


def test_a_second_sigterm_on_a_thread_holding_the_pools_locks_still_puts_jobs_back(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler runs on top of whatever the main thread was doing: here it was
    inside a Redis call (the pool's lock) and adding a job to ``running`` (the worker's
    lock). The handler must return at once, and the jobs must be back, in the database and
    on the queue, before the process ends."""
    import signal

    from seedq.service import liveness

    ids = submit(services, tmp_path, 2)
    worker = TreeWorker(services, lambda: CannedGenerator(0.5), install_signals=False,
                        round_size=2)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    wait_until(lambda: len(worker.running) == 2)
    at_exit: list[tuple[int, dict[str, int], list[str]]] = []
    exited = threading.Event()

    def fake_exit(code: int) -> None:  # what the process would leave behind
        counts = reports.summarize(services.db, [q.batch_of(ids[0])])[0].counts
        at_exit.append((code, counts, waiting(services)))
        exited.set()
        # returning ends the cold-exit thread only

    monkeypatch.setattr(liveness.os, "_exit", fake_exit)
    returned = threading.Event()

    def interrupted_main_thread() -> None:
        with services.redis.connection_pool._lock, worker._lock:
            worker.on_signal(signal.SIGTERM, None)
            worker.on_signal(signal.SIGTERM, None)
            returned.set()
            exited.wait(1.0)  # still holding them a while: the cold exit must wait for us

    main = threading.Thread(target=interrupted_main_thread, daemon=True)
    main.start()
    assert returned.wait(2.0), "the second signal's handler blocked"
    assert exited.wait(10.0)
    assert at_exit == [(128 + signal.SIGTERM, {"queued": 2}, ids)]
    thread.join(20)
    assert not thread.is_alive()
