"""Recovery with the default timing settings: how soon a kill -9'd worker's job runs again,
and a burst worker that recovers abandoned jobs before it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedq import queue as q
from seedq.service.context import Services
from seedq.service.submit import submit_file
from seedq.settings import Settings
from tests.conftest import env_for
from tests.service.helpers import (
    SMALL,
    WorkerProcesses,
    gsm8k_lines,
    scalar,
    wait_until,
    write_jsonl,
)

TIMING_VARS = (
    "SEEDQ_HEARTBEAT_SECONDS",
    "SEEDQ_HEARTBEAT_TTL",
    "SEEDQ_MAINTENANCE_SECONDS",
    "SEEDQ_DEQUEUE_TIMEOUT",
)
REQUEUE_BOUND_SECONDS = 10.0


class DefaultTimingWorkers(WorkerProcesses):
    """Worker processes (canned generator) with seedq's default heartbeat, TTL and
    maintenance settings."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.settings = settings

    def start(self, *args: str, delay: float) -> subprocess.Popen[bytes]:
        env = env_for(
            self.settings,
            SEEDQ_TEST_GENERATOR="canned",
            SEEDQ_TEST_GENERATOR_DELAY=str(delay),
            SEEDQ_ROUND_SIZE="1",
        )
        for var in TIMING_VARS:
            env.pop(var, None)
        return self.spawn(env, *args)


@pytest.fixture
def pool(services: Services, tmp_path: Path) -> Iterator[DefaultTimingWorkers]:
    workers = DefaultTimingWorkers(services.settings, tmp_path)
    yield workers
    workers.stop_all()


def running_on(services: Services, job_id: str) -> tuple[str | None, str | None, int]:
    row = scalar(services, "SELECT status || '|' || COALESCE(worker, '') || '|' || attempts "
                 "FROM jobs WHERE id = :i", i=job_id)
    status, worker, attempts = str(row).split("|")
    return status, worker or None, int(attempts)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_kill_9_job_runs_again_within_10s_by_default(
    services: Services, pool: DefaultTimingWorkers, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(1, search=SMALL))
    job_id = q.job_id_for(submit_file(services, path).batch_id, 1)
    victim = pool.start(delay=2.0)
    wait_until(lambda: running_on(services, job_id)[0] == "running", timeout=60)
    first_worker = running_on(services, job_id)[1]
    rescuer = pool.start(delay=0.01)
    wait_until(lambda: services.redis.scard(f"rq:workers:{services.settings.queue}") >= 2, 60)
    time.sleep(1.0)  # the rescuer is up and idle
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    killed = time.monotonic()

    def rerun() -> bool:
        status, worker, attempts = running_on(services, job_id)
        return attempts >= 2 and worker != first_worker and status in ("running", "completed")

    wait_until(rerun, timeout=60, step=0.1)
    latency = time.monotonic() - killed
    print(f"requeue latency after kill -9: {latency:.1f}s")
    assert latency < REQUEUE_BOUND_SECONDS, latency
    rescuer.send_signal(signal.SIGTERM)
    rescuer.wait(30)
