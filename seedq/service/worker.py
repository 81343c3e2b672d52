"""The seedq worker: one long-running process per GPU.

It loads its generator (target + draft) once and never forks. Its loop, like RQ's, is a series
of named steps: :meth:`TreeWorker.take_jobs` claims up to ``round_size`` jobs in FCFS order
(RQ's ``dequeue_any``: an atomic LMOVE/BLMOVE into the queue's intermediate list), each job's
tree runs as an asyncio task through the generator of its batch's engine options (the
worker's own, or one derived over the same models per distinct option set, see
:mod:`seedq.service.engines`), shared by all trees of those options (so the SeeD scheduler
sees all of them), and a freed slot is refilled at once. A heartbeat thread, periodic
maintenance and signal handling (first SIGTERM: stop taking jobs, finish or checkpoint;
second: requeue and exit at once) keep every job recoverable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import FrameType
from typing import Any
from uuid import uuid4

import redis.exceptions
from rq.job import Job as RQJob
from rq.utils import as_text, now, utcparse
from rq.worker import WorkerStatus
from sqlalchemy import exc as sa_exc

from seedq import queue as q
from seedq.decoding.types import GroupGenerator
from seedq.service import finish
from seedq.service.context import Services
from seedq.service.engines import GeneratorPool
from seedq.service.heartbeat import Heartbeat
from seedq.service.jobrun import EngineTap, build_tree
from seedq.service.maintenance import Maintenance
from seedq.service.outcomes import RQOutcomes, Running
from seedq.store import repo
from seedq.store.models import utcnow
from seedq.store.rows import ClaimRefused

log = logging.getLogger(__name__)
GeneratorFactory = Callable[[], GroupGenerator]
FORCE_EXIT_SECONDS = 3.0


def worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{uuid4().hex[:6]}"


class TreeWorker(RQOutcomes):
    """An RQ ``BaseWorker`` with its own non-forking asyncio loop (see the module docstring)."""

    def __init__(
        self,
        services: Services,
        generator_factory: GeneratorFactory,
        *,
        queue_name: str | None = None,
        round_size: int | None = None,
        name: str | None = None,
        install_signals: bool = True,
    ) -> None:
        s = services.settings
        self.settings = s
        self.queue = services.queue(queue_name)
        super().__init__(
            [self.queue],
            name=name or worker_name(),
            connection=services.redis,
            serializer=q.SERIALIZER,
            worker_ttl=s.heartbeat_ttl,
            maintenance_interval=max(1, int(s.maintenance_seconds)),
            job_monitoring_interval=max(1, int(s.heartbeat_seconds)),
        )
        self.services, self.settings, self.db = services, s, services.db
        self.log = log.getChild("rq")  # RQ's own messages follow seedq's verbosity
        self.generator_factory = generator_factory
        self.round_size = round_size or s.round_size
        self.install_signals = install_signals
        self.running: dict[str, Running] = {}
        self.completed = 0
        self._lock = threading.Lock()
        self._pool: GeneratorPool | None = None
        self._heartbeat: Heartbeat | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._slot_freed = asyncio.Event()

    @property
    def dequeue_timeout(self) -> int:
        return self.settings.dequeue_timeout

    def get_heartbeat_ttl(self, job: RQJob, working_time: float = 0.0) -> int:
        return self.settings.heartbeat_ttl

    @property
    def generators(self) -> GeneratorPool:
        """The worker's own generator and those derived for batches' engine options."""
        if self._pool is None:
            raise RuntimeError("the worker has not loaded its generator yet")
        return self._pool

    @property
    def generator(self) -> EngineTap:
        return self.generators.base

    # ---- lifecycle -----------------------------------------------------------------------

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        """Run until stopped (or, with ``burst``, until the queue is drained)."""
        return asyncio.run(self.work_async(burst)) > 0

    async def work_async(self, burst: bool = False) -> int:
        self._loop = asyncio.get_running_loop()
        self._stop, self._slot_freed = asyncio.Event(), asyncio.Event()
        self.load_generator()
        self.register_worker()
        upkeep = asyncio.create_task(self.maintain(), name="seedq-maintenance")
        try:
            feeder = asyncio.create_task(self.feed(burst), name="seedq-feeder")
            stopper = asyncio.create_task(self._stop.wait())
            await asyncio.wait({feeder, stopper}, return_when=asyncio.FIRST_COMPLETED)
            self._stop.set()
            await feeder
        finally:
            self._stop.set()
            await self.drain()
            upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)
            self.unregister_worker()
        return self.completed

    def load_generator(self) -> None:
        t0 = time.perf_counter()
        self._pool = GeneratorPool(self.generator_factory(), self.name)
        log.info("worker %s: generator ready in %.1fs", self.name, time.perf_counter() - t0)

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

    # ---- the loop ------------------------------------------------------------------------

    async def feed(self, burst: bool) -> None:
        """Keep up to ``round_size`` trees running until stopped (or drained, in burst)."""
        backoff = 1.0
        while not self._stop.is_set():
            if len(self.running) >= self.round_size:
                await self.wait_for_slot()
                continue
            try:
                started = await self.take_jobs(block=not burst)
                backoff = 1.0
            except (redis.exceptions.RedisError, sa_exc.OperationalError) as exc:
                log.error(
                    "worker %s: cannot take jobs (%s), retrying in %.0fs", self.name, exc, backoff
                )
                await self.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            if started or not burst:
                continue
            if not await self.wait_in_burst():
                return

    async def take_jobs(self, *, block: bool) -> int:
        """Claim jobs in FCFS order until the round is full or the queue is empty; only the
        first claim blocks (up to ``dequeue_timeout``, off the event loop)."""
        started = 0
        while len(self.running) < self.round_size and not self._stop.is_set():
            if block and started == 0:
                rq_job = await asyncio.to_thread(q.claim_next, self.queue, self.dequeue_timeout)
            else:
                rq_job = q.claim_next(self.queue, None)
            if rq_job is None:
                break
            if self._stop.is_set():
                q.requeue_ids(self.queue, [rq_job.id], at_front=True)
                break
            if await self.start_job(rq_job):
                started += 1
            block = False
        return started

    async def start_job(self, rq_job: RQJob) -> bool:
        """Claim the job in the database, open its RQ execution and start its tree."""
        try:
            payload = q.payload_of(rq_job)
        except q.PayloadError as exc:
            self.rq_foreign(rq_job, str(exc))
            return False
        stale = utcnow() - timedelta(seconds=self.settings.heartbeat_ttl)
        claim = await asyncio.to_thread(
            repo.claim_job, self.db, payload["job_id"], self.name, stale
        )
        if isinstance(claim, ClaimRefused):
            self.rq_refused(rq_job, claim, recheck_seconds=self.settings.heartbeat_ttl)
            return False
        execution = self.prepare_execution(rq_job)
        self.prepare_job_execution(rq_job, remove_from_intermediate_queue=True)
        rq_job.started_at = now()
        run = Running(claim, rq_job, execution, time.perf_counter())
        with self._lock:
            self.running[run.job_id] = run
        run.task = asyncio.create_task(self.run_job(run), name=f"tree-{run.job_id}")
        log.info("worker %s: started %s (attempt %d)", self.name, run.job_id, claim.attempt)
        return True

    async def run_job(self, run: Running) -> None:
        """Build the tree, then record the outcome (see :mod:`seedq.service.finish`)."""
        try:
            timeout = float(self.settings.job_timeout)
            generator = self.generators.for_options(run.claim.engine)
            result = await build_tree(self.db, generator, run.claim, timeout=timeout)
        except asyncio.CancelledError:
            await finish.stopped(self, run)
        except Exception as exc:
            await finish.errored(self, run, exc)
        else:
            if await finish.succeeded(self, run, result):
                self.completed += 1
        finally:
            with self._lock:
                self.running.pop(run.job_id, None)
            self._slot_freed.set()
            if not self.running:
                with contextlib.suppress(redis.exceptions.RedisError):
                    self.set_state(WorkerStatus.IDLE)

    async def wait_for_slot(self) -> None:
        self._slot_freed.clear()
        await self.first_of(self._slot_freed.wait(), self._stop.wait())

    async def wait_in_burst(self) -> bool:
        """Burst mode found nothing to claim: wait for a running tree or a due retry.
        Returns False when there is nothing left to wait for."""
        if self.running:
            await self.wait_for_slot()
            return True
        due_in = q.next_retry_in(self.queue)
        if due_in is None:
            return q.pending_count(self.queue) > 0 and await self.sleep(0.2)
        await self.sleep(min(due_in + 0.05, self.settings.maintenance_seconds))
        q.enqueue_due(self.queue)
        return True

    async def drain(self) -> None:
        """After a stop: let running trees finish within the grace period, then checkpoint
        the rest (their nodes are stored; they go back to the front of the queue)."""
        tasks = [r.task for r in list(self.running.values()) if r.task is not None]
        if not tasks:
            return
        grace = self.settings.shutdown_grace_seconds
        log.warning(
            "worker %s: waiting up to %.0fs for %d running tree(s)", self.name, grace, len(tasks)
        )
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for run in list(self.running.values()):
            if run.task in pending:
                run.stop_reason = "shutdown"
                run.task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def maintain(self) -> None:
        """Every ``maintenance_seconds``: recover abandoned jobs, requeue due retries."""
        while True:
            try:
                report = await asyncio.to_thread(
                    Maintenance(self.services, self.queue, self.name).run
                )
                if report.due or report.requeued or report.orphans:
                    self._slot_freed.set()
            except Exception:
                log.warning("worker %s: maintenance failed", self.name, exc_info=True)
            await asyncio.sleep(self.settings.maintenance_seconds)

    async def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on stop; True when not stopped."""
        await self.first_of(asyncio.sleep(seconds), self._stop.wait())
        return not self._stop.is_set()

    @staticmethod
    async def first_of(*aws: Any) -> None:
        tasks = [asyncio.ensure_future(a) for a in aws]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- heartbeats and signals (called from other threads) ------------------------------

    def beat(self) -> set[str]:
        """Heartbeat thread: database first (it decides ownership), then RQ."""
        with self._lock:
            runs = list(self.running.values())
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
            if run is not None and run.task is not None and run.stop_reason is None:
                log.warning(
                    "worker %s: job %s was cancelled or taken over; stopping it", self.name, job_id
                )
                run.stop_reason = "lost"
                run.task.cancel()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_requested:
            log.warning("worker %s: second %s, exiting now", self.name, signal.Signals(signum).name)
            self.force_exit(128 + signum)
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
        """Put every running job back (Redis, then database), record death, exit now."""
        with self._lock:
            runs = list(self.running.values())
        helper = threading.Thread(target=finish.abandon_all, args=(self, runs), daemon=True)
        helper.start()
        helper.join(FORCE_EXIT_SECONDS)
        os._exit(code)
