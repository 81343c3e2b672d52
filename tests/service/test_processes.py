"""Worker processes (``python -m workers.gpu`` with the canned test generator): sharing a
queue, kill -9 in the middle of a tree, SIGTERM once and twice."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rq.job import Job as RQJob

from seedq import queue as q
from seedq.service.context import Services
from seedq.service.submit import submit_file
from seedq.store import reports
from tests.conftest import env_for
from tests.service.helpers import (
    SMALL,
    WorkerProcesses,
    gsm8k_lines,
    rows,
    run_burst,
    scalar,
    wait_until,
    write_jsonl,
)

NODES_PER_TREE = 6


class Workers(WorkerProcesses):
    def __init__(self, services: Services, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.services = services

    def start(
        self, *args: str, delay: float = 0.02, round_size: int = 2, **extra: str
    ) -> subprocess.Popen[bytes]:
        env = env_for(
            self.services.settings,
            SEEDQ_TEST_GENERATOR="canned",
            SEEDQ_TEST_GENERATOR_DELAY=str(delay),
            SEEDQ_ROUND_SIZE=str(round_size),
            **extra,
        )
        return self.spawn(env, *args)

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("worker*.log")))


@pytest.fixture
def workers(services: Services, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(services, tmp_path)
    yield pool
    pool.stop_all()


def submit(services: Services, tmp_path: Path, n: int) -> str:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(n, search=SMALL))
    return submit_file(services, path).batch_id


def job_row(services: Services, job_id: str) -> tuple[str, int, int]:
    status = scalar(services, "SELECT status FROM jobs WHERE id = :i", i=job_id)
    attempts = scalar(services, "SELECT attempts FROM jobs WHERE id = :i", i=job_id)
    nodes = scalar(services, "SELECT COUNT(*) FROM nodes WHERE job_id = :i", i=job_id)
    return status, attempts, nodes


def assert_complete_trees(services: Services, batch: str, n: int) -> None:
    assert reports.summarize(services.db, [batch])[0].counts == {"completed": n}
    assert scalar(services, "SELECT COUNT(*) FROM nodes") == n * NODES_PER_TREE
    dupes = rows(
        services,
        "SELECT job_id, gen_key FROM generations GROUP BY job_id, gen_key HAVING COUNT(*) > 1",
    )
    assert dupes == []


def test_two_workers_share_a_queue_and_no_job_runs_twice(
    services: Services, workers: Workers, tmp_path: Path
) -> None:
    batch = submit(services, tmp_path, 12)
    a, b = workers.start("--burst"), workers.start("--burst")
    assert a.wait(60) == 0 and b.wait(60) == 0, workers.logs()
    assert_complete_trees(services, batch, 12)
    by_worker = rows(
        services,
        "SELECT worker, COUNT(*), MAX(attempts) FROM jobs WHERE batch_id = :b GROUP BY worker",
        b=batch,
    )
    assert len(by_worker) == 2, by_worker  # both took part
    assert all(r[2] == 1 for r in by_worker)  # every job started exactly once
    for line in range(1, 13):
        job = RQJob.fetch(
            q.job_id_for(batch, line), connection=services.redis, serializer=q.SERIALIZER
        )
        assert len(job.results()) == 1, (line, workers.logs())  # one RQ result per job


def test_kill_9_mid_tree_is_detected_and_rerun_without_duplicates(
    services: Services, workers: Workers, tmp_path: Path
) -> None:
    batch = submit(services, tmp_path, 2)
    first = q.job_id_for(batch, 1)
    victim = workers.start(delay=0.4, round_size=1)
    wait_until(lambda: job_row(services, first)[2] >= 2, timeout=30)  # mid-tree
    status, attempts, nodes = job_row(services, first)
    assert status == "running" and attempts == 1 and nodes < NODES_PER_TREE
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    rescuer = workers.start(delay=0.02)
    wait_until(lambda: reports.summarize(services.db, [batch])[0].done, timeout=40)
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(20) == 0, workers.logs()
    assert_complete_trees(services, batch, 2)
    assert job_row(services, first)[1] == 2  # detected and re-run once
    assert scalar(services, "SELECT MIN(attempt) FROM nodes WHERE job_id = :i", i=first) == 2


def test_sigterm_checkpoints_running_trees_and_exits_cleanly(
    services: Services, workers: Workers, tmp_path: Path
) -> None:
    batch = submit(services, tmp_path, 3)
    proc = workers.start(delay=0.4, round_size=2, SEEDQ_SHUTDOWN_GRACE="0.3")
    wait_until(lambda: scalar(services, "SELECT COUNT(*) FROM nodes") >= 2, timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, workers.logs()
    counts = reports.summarize(services.db, [batch])[0].counts
    assert counts.get("running", 0) == 0 and counts.get("queued", 0) >= 1, counts
    kept = scalar(services, "SELECT COUNT(*) FROM nodes")
    assert kept >= 2  # checkpointed nodes stay
    assert scalar(services, "SELECT MAX(attempts) FROM jobs") <= 1  # attempt refunded
    assert services.redis.llen(services.queue().key) == counts["queued"]  # back on the queue
    run_burst(services)
    assert_complete_trees(services, batch, 3)


def test_second_sigterm_exits_at_once_and_requeues(
    services: Services, workers: Workers, tmp_path: Path
) -> None:
    batch = submit(services, tmp_path, 2)
    proc = workers.start(delay=1.0, round_size=2)
    wait_until(
        lambda: scalar(services, "SELECT COUNT(*) FROM jobs WHERE status = 'running'") == 2,
        timeout=30,
    )
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "no new jobs" in workers.logs(), timeout=10)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 128 + signal.SIGTERM
    counts = reports.summarize(services.db, [batch])[0].counts
    assert counts == {"queued": 2}, counts
    assert services.redis.llen(services.queue().key) == 2
    run_burst(services)
    assert_complete_trees(services, batch, 2)
