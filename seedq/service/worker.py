"""The seedq worker: one long-running process per GPU.

It loads its generator (target + draft) once and never forks. Its loop, like RQ's, is a series
of named steps: :meth:`TreeWorker.take_jobs` claims up to ``round_size`` jobs in FCFS order
(RQ's ``dequeue_any``: an atomic LMOVE/BLMOVE into the queue's intermediate list), each job's
tree runs as an asyncio task through the generator of its batch's engine options (the
worker's own, or one derived over the same models per distinct option set, see
:mod:`seedq.service.engines`), shared by all trees of those options (and the one SeeD
scheduler of the target sees the seed groups of every option set), and a freed slot is
refilled at once. A heartbeat thread, periodic
maintenance and signal handling (first SIGTERM: stop taking jobs, finish or checkpoint;
second: requeue and exit at once; see :mod:`seedq.service.liveness`) keep every job
recoverable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import uuid4

import redis.exceptions
from rq.job import Job as RQJob
from rq.utils import now
from rq.worker import WorkerStatus
from sqlalchemy import exc as sa_exc

from seedq import queue as q
from seedq.decoding.types import GroupGenerator
from seedq.service import finish
from seedq.service.context import Services
from seedq.service.engines import GeneratorPool
from seedq.service.events import JobEnd, JobLog, JobStart, Listeners, WorkerListener, error_status
from seedq.service.guards import JobLimits
from seedq.service.jobrun import EngineTap, build_tree
from seedq.service.liveness import WorkerLiveness
from seedq.service.maintenance import Maintenance
from seedq.service.metrics import WorkerMetrics, serve_worker_metrics
from seedq.service.outcomes import Running
from seedq.service.recovery import (
    ForeignStoreJob,
    StoreGuard,
    abandoned_left,
    checkpoint,
    maintenance_delay,
)
from seedq.store import repo
from seedq.store.models import utcnow
from seedq.store.rows import ClaimRefused

log = logging.getLogger(__name__)
GeneratorFactory = Callable[[], GroupGenerator]


def worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{uuid4().hex[:6]}"


class TreeWorker(WorkerLiveness):
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
        listeners: tuple[WorkerListener, ...] = (),
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
        self.limits = JobLimits.from_settings(s)  # prompt tokens, memory budget per job
        self.install_signals = install_signals
        self.events = Listeners([JobLog(), *listeners])  # job log, metrics, progress
        self.metrics: WorkerMetrics | None = None
        self.running: dict[str, Running] = {}
        self.completed = 0
        self._lock = threading.Lock()
        self._pool = None
        self.store_guard = StoreGuard(services.store_id, self.name)
        self._heartbeat = None
        self._loop = None
        self._cold_exit = None
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
        try:
            return asyncio.run(self.work_async(burst)) > 0
        finally:
            self.await_cold_exit()

    async def work_async(self, burst: bool = False) -> int:
        self._loop = asyncio.get_running_loop()
        self._stop, self._slot_freed = asyncio.Event(), asyncio.Event()
        self.load_generator()
        self.metrics = serve_worker_metrics(self)
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
            if self.metrics is not None:
                self.metrics.close()
        return self.completed

    def load_generator(self) -> None:
        t0 = time.perf_counter()
        self._pool = GeneratorPool(self.generator_factory(), self.name)
        log.info("worker %s: generator ready in %.1fs", self.name, time.perf_counter() - t0)

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
            except ForeignStoreJob:  # left at the front of the queue; warned once
                if burst or not await self.sleep(self.dequeue_timeout):
                    return
                continue
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
        if not self.store_guard.accepts(payload):
            q.push_back(self.queue, rq_job.id)
            raise ForeignStoreJob(rq_job.id)
        stale = utcnow() - timedelta(seconds=self.settings.heartbeat_ttl)
        try:
            claim = await asyncio.to_thread(
                repo.claim_job, self.db, payload["job_id"], self.name, stale
            )
        except Exception:  # the database cannot record it: back to the front at once
            q.push_back(self.queue, rq_job.id)
            raise
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
        log.debug("worker %s: started %s (attempt %d)", self.name, run.job_id, claim.attempt)
        self.events.job_started(JobStart.of(claim, self.settings.engine))
        return True

    async def run_job(self, run: Running) -> None:
        """Build the tree, then record the outcome (see :mod:`seedq.service.finish`)."""
        status, result, error = "lost", None, None
        try:
            timeout = float(self.settings.job_timeout)
            generator = self.generators.for_options(run.claim.engine)
            result = await build_tree(
                self.db,
                generator,
                run.claim,
                timeout=timeout,
                listener=self.events,
                limits=self.limits,
                usage=run.usage,
            )
        except asyncio.CancelledError:
            status = "stopped" if run.stop_reason == "shutdown" else "lost"
            await finish.stopped(self, run)
        except Exception as exc:
            error = exc
            status = error_status(exc, run.claim.budget_used, self.settings.max_attempts)
            run.finishing = True
            await finish.errored(self, run, exc)
        else:
            run.finishing = True
            if await finish.succeeded(self, run, result):
                self.completed += 1
                status = "completed"
        finally:
            self.limits.memory.release(run.job_id)
            wall = time.perf_counter() - run.started
            job = JobStart.of(run.claim, self.settings.engine)
            self.events.job_ended(JobEnd.of(job, status, wall, result, error))
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
            if q.pending_count(self.queue) > 0:
                return await self.sleep(0.2)
            return await self.recover_abandoned()
        await self.sleep(min(due_in + 0.05, self.settings.maintenance_seconds))
        q.enqueue_due(self.queue)
        return True

    async def recover_abandoned(self) -> bool:
        """Burst mode, nothing to claim: before exiting, wait out the heartbeat TTL of workers
        that stopped beating and put their jobs back. False when there are none."""
        if not await abandoned_left(self):
            return False
        if not await self.sleep(
            await asyncio.to_thread(maintenance_delay, self.services, self.queue.name)
        ):
            return False
        await asyncio.to_thread(Maintenance(self.services, self.queue, self.name).run)
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
        stopping = [r for r in list(self.running.values())
                    if r.task in pending and not r.finishing]  # those let their write end
        for run in stopping:
            run.stop_reason = "shutdown"
            run.task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        try:  # all together, so that they keep their FCFS order at the front of the queue
            await asyncio.to_thread(checkpoint, self, stopping)
        except Exception:
            log.error("worker %s: checkpoint failed; maintenance will recover %s", self.name,
                      [r.job_id for r in stopping], exc_info=True)

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
            await asyncio.sleep(
                await asyncio.to_thread(maintenance_delay, self.services, self.queue.name)
            )

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
