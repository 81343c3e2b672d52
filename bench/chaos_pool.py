"""Worker processes of the chaos run and the clock on their recovery after a kill -9.

``WorkerPool`` starts ``python -m workers.gpu`` processes (canned generator, seedq's default
heartbeat, TTL and maintenance) named ``chaos-w<N>``, kills one that is running trees with
SIGKILL and starts a replacement. ``Recoveries`` polls SQL for the jobs each victim left
running: *requeue* is the time from the kill until the job is no longer running on the dead
worker (back on the queue, or taken by another worker), *rerun* until another worker runs or
has completed it. Kills whose recovery overlapped a Redis or PostgreSQL restart are counted
apart.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from seedq.service.context import Services
from seedq.settings import Settings

log = logging.getLogger("chaos.pool")
ROOT = Path(__file__).resolve().parents[1]


class WorkerPool:
    def __init__(self, settings: Settings, root: Path, cfg: Any) -> None:
        self.settings, self.root, self.cfg = settings, root, cfg
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0
        self.kills = 0
        self.exits = 0  # workers that exited on their own (and were started again)
        self.size = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDQ_")}
        env.update(
            SEEDQ_REDIS_URL=self.settings.redis_url,
            SEEDQ_DATABASE_URL=self.settings.database_url,
            SEEDQ_QUEUE=self.settings.queue,
            SEEDQ_ROUND_SIZE=str(self.cfg.round_size),
            SEEDQ_MAX_ATTEMPTS=str(self.cfg.max_attempts),
            SEEDQ_RETRY_BACKOFF="1",
            SEEDQ_RETRY_BACKOFF_MAX="4",
            SEEDQ_SHUTDOWN_GRACE="20",
            SEEDQ_TEST_GENERATOR="canned",
            SEEDQ_TEST_GENERATOR_DELAY=str(self.cfg.delay),
            PYTHONPATH=str(ROOT),
        )
        return env

    def start(self, n: int = 1) -> None:
        for _ in range(n):
            name = f"chaos-w{self.started}"
            self.started += 1
            out = (self.root / f"{name}.log").open("wb")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "workers.gpu", "--name", name],
                cwd=ROOT, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
            )
        self.size = len(self.procs)

    def check(self, limit: int = 10) -> None:
        """Act as a supervisor: start a new worker for each that exited on its own (one that
        started while Redis or PostgreSQL was down exits at once); raise after ``limit``."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            self.exits += 1
            del self.procs[name]
            tail = (self.root / f"{name}.log").read_text(errors="replace")[-2000:]
            if self.exits > limit:
                raise RuntimeError(f"worker {name} exited with {proc.returncode}:\n{tail}")
            log.warning("worker %s exited with %s; starting another", name, proc.returncode)
            self.start(1)

    def busy(self, services: Services, most_attempts: int = 2) -> list[str]:
        """Live workers of the pool that the database shows running trees, none of which has
        been started more than ``most_attempts`` times (requeued jobs go to the front of the
        queue: without this, the same unlucky job would be killed again and again)."""
        with services.db.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT worker, MAX(attempts) FROM jobs WHERE status = 'running' "
                     "GROUP BY worker")
            ).all()
        return sorted(
            name for name, attempts in rows
            if attempts <= most_attempts and name in self.procs and self.procs[name].poll() is None
        )

    def kill_one(self, rng: random.Random, recoveries: Recoveries) -> str | None:
        try:
            candidates = self.busy(recoveries.services)
        except Exception:
            return None
        if not candidates:
            return None
        name = rng.choice(candidates)
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.kills += 1
        recoveries.killed(name)
        self.start(1)
        return name

    def stop_all(self, timeout: float = 60.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class Recoveries(threading.Thread):
    def __init__(self, services: Services, interval: float = 0.1) -> None:
        super().__init__(name="chaos-recoveries", daemon=True)
        self.services, self.interval = services, interval
        self.pending: dict[str, dict[str, Any]] = {}
        self.done: list[dict[str, Any]] = []
        self.outage = False
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def killed(self, victim: str) -> None:
        t = time.monotonic()
        with self.services.db.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, attempts FROM jobs WHERE worker = :w AND status = 'running'"),
                {"w": victim},
            ).all()
        with self._lock:
            for job_id, attempts in rows:
                self.pending[job_id] = {"victim": victim, "t": t, "attempts": attempts,
                                        "outage": self.outage, "requeue": None, "rerun": None}

    def outage_began(self) -> None:
        with self._lock:
            self.outage = True
            for rec in self.pending.values():
                rec["outage"] = True

    def outage_ended(self) -> None:
        with self._lock:
            self.outage = False

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.poll()
            except Exception:  # an outage: poll again
                continue

    def poll(self) -> None:
        with self._lock:
            ids = list(self.pending)
        if not ids:
            return
        with self.services.db.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, status, worker, attempts FROM jobs WHERE id = ANY(:i)"),
                {"i": ids},
            ).all()
        now = time.monotonic()
        with self._lock:
            for job_id, status, worker, attempts in rows:
                rec = self.pending[job_id]
                if rec["requeue"] is None and not (status == "running" and worker == rec["victim"]):
                    rec["requeue"] = now - rec["t"]
                moved_on = attempts > rec["attempts"] and status in ("running", "completed")
                if rec["rerun"] is None and (moved_on or status == "failed"):
                    rec["rerun"] = now - rec["t"]
                if rec["requeue"] is not None and rec["rerun"] is not None:
                    self.done.append(self.pending.pop(job_id))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def summary(self) -> dict[str, Any]:
        clean = [r for r in self.done if not r["outage"]]
        return {
            "jobs_hit": len(self.done) + len(self.pending),
            "unrecovered": len(self.pending),
            "requeue_seconds": _stats([r["requeue"] for r in clean]),
            "requeue_samples": sorted(round(r["requeue"], 1) for r in clean),
            "rerun_seconds": _stats([r["rerun"] for r in clean]),
            "during_restarts": {
                "jobs": len(self.done) - len(clean),
                "requeue_seconds": _stats([r["requeue"] for r in self.done if r["outage"]]),
            },
        }


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "max": None}
    return {"n": len(values), "median": round(statistics.median(values), 2),
            "max": round(max(values), 2)}
