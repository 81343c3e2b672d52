"""How a :class:`~seedq.service.worker.TreeWorker` shows it is alive, and how it stops.

Registration with RQ (taking over the name of a dead worker), the heartbeat thread (database
first, it decides ownership, then RQ) and the signal handlers: a first SIGTERM stops taking
jobs and lets the running trees finish or checkpoint, a second puts them back and exits at
once. Everything below :meth:`WorkerLiveness.beat` is called from other threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from datetime import datetime, timezone
from types import FrameType

import redis.exceptions
from rq.utils import as_text, now, utcparse
from rq.worker import WorkerStatus

from seedq.service import finish
from seedq.service.context import Services
from seedq.service.engines import GeneratorPool
from seedq.service.heartbeat import Heartbeat
from seedq.service.outcomes import RQOutcomes, Running
from seedq.settings import Settings
from seedq.store import repo
from seedq.store.db import Database

log = logging.getLogger("seedq.service.worker")  # the worker's lines keep their logger name
FORCE_EXIT_SECONDS = 3.0


class WorkerLiveness(RQOutcomes):
    """Mixed into ``TreeWorker``, which sets these attributes in its ``__init__``."""

    services: Services
    settings: Settings
    db: Database
    round_size: int
    install_signals: bool
    running: dict[str, Running]
    _lock: threading.Lock
    _pool: GeneratorPool | None
    _heartbeat: Heartbeat | None
    _loop: asyncio.AbstractEventLoop | None
    _stop: asyncio.Event
    _cold_exit: threading.Thread | None

    def register_worker(self) -> None:
        try:
            self.register_birth()
        except ValueError:  # the name is taken: fine if its owner died (no recent heartbeat)
            beat = self.connection.hget(self.key, "last_heartbeat")
            age = (now() - utcparse(as_text(beat))).total_seconds() if beat else float("inf")
            if age < self.settings.heartbeat_ttl:
                raise
            log.warning("worker %s: taking over the name of a dead worker", self.name)
            self.connection.delete(self.key)
            self.register_birth()
        self.set_state(WorkerStatus.IDLE)
        self._heartbeat = Heartbeat(self.settings.heartbeat_seconds, self.beat, self.on_lost)
        self._heartbeat.start()
        if self.install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.on_signal)
            signal.signal(signal.SIGINT, self.on_signal)
        log.info(
            "worker %s: listening on %s (round size %d)",
            self.name,
            self.queue.name,
            self.round_size,
        )

    def unregister_worker(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop(timeout=5)
        try:
            self.register_death()
        except redis.exceptions.RedisError:
            log.warning("worker %s: could not register its death", self.name, exc_info=True)
        if self._pool is not None:
            self._pool.close()

    # ---- heartbeats and signals (called from other threads) ------------------------------

    def beat(self) -> set[str]:
        """Heartbeat thread: database first (it decides ownership), then RQ."""
        with self._lock:
            runs = [r for r in self.running.values() if not r.finishing]
        lost = repo.heartbeat(self.db, [r.job_id for r in runs], self.name)
        ttl = self.settings.heartbeat_ttl
        with self.connection.pipeline() as pipe:
            self.heartbeat(ttl, pipeline=pipe)
            for run in runs:
                run.execution.heartbeat(self.queue.started_job_registry, ttl, pipeline=pipe)
                run.rq_job.heartbeat(datetime.now(timezone.utc), ttl, pipeline=pipe, xx=True)
            pipe.execute()
        return lost

    def ask_stop(self) -> None:
        """Ask the loop (from any thread) to stop as on a first SIGTERM."""
        self._stop_requested = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def on_lost(self, job_ids: set[str]) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel_lost, job_ids)

    def _cancel_lost(self, job_ids: set[str]) -> None:
        for job_id in job_ids:
            run = self.running.get(job_id)
            if run is None or run.task is None or run.stop_reason is not None or run.finishing:
                continue  # gone, or its outcome is being written (which is why it looks lost)
            log.warning(
                "worker %s: job %s was cancelled or taken over; stopping it", self.name, job_id
            )
            run.stop_reason = "lost"
            run.task.cancel()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_requested:
            log.warning("worker %s: second %s, exiting now", self.name, signal.Signals(signum).name)
            self.force_exit(128 + signum)
            return
        self._stop_requested = True
        log.warning(
            "worker %s: %s, no new jobs; finishing or checkpointing %d running",
            self.name,
            signal.Signals(signum).name,
            len(self.running),
        )
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def force_exit(self, code: int) -> None:
        """Put every running job back (Redis, then database), record death, end the process.

        A signal handler runs on the main thread on top of whatever it was doing, which may
        hold a lock the put-back needs (the Redis or database pool's, ``self._lock``); waiting
        there for the put-back would wait for itself. So this only starts the cold exit on its
        own thread and returns at once; that thread ends the process within
        ``FORCE_EXIT_SECONDS`` whatever happens, and :meth:`await_cold_exit` keeps the main
        thread from ending it first."""
        if self._cold_exit is not None:
            return
        try:  # no lock here (see above); one C-level copy under the GIL
            runs = list(self.running.values())
        except RuntimeError:  # changed size meanwhile: the cold exit looks again
            runs = []
        self._cold_exit = threading.Thread(
            target=self._exit_cold, args=(code, runs), name="seedq-cold-exit", daemon=True
        )
        self._cold_exit.start()

    def await_cold_exit(self) -> None:
        """The main thread is about to return: if a cold exit is under way, let it end the
        process (with the jobs put back) rather than the interpreter's exit."""
        if self._cold_exit is not None:
            self._cold_exit.join()

    def _exit_cold(self, code: int, runs: list[Running]) -> None:
        helper = threading.Thread(target=self._put_back, args=(runs,), daemon=True)
        helper.start()
        helper.join(FORCE_EXIT_SECONDS)
        if helper.is_alive():
            log.error("worker %s: running jobs not put back within %.0fs; maintenance will "
                      "recover them", self.name, FORCE_EXIT_SECONDS)
        os._exit(code)

    def _put_back(self, runs: list[Running]) -> None:
        with self._lock:  # taken off the main thread, so it can let go of it
            now_running = list(self.running.values())
        by_id = {r.job_id: r for r in (*runs, *now_running)}  # FCFS order, each once
        finish.abandon_all(self, list(by_id.values()))
