"""Recording how a job's run ended, in the database and on RQ.

Order matters so that a crash or a lost connection at any point leaves the job recoverable:
an outcome is written to the database first (guarded by worker and attempt), then to RQ;
a job that goes back to the queue goes to Redis first, then the database. When a write
fails, the job is simply let go: its heartbeat stops and maintenance re-runs it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone

from seedq import queue as q
from seedq.reasoning.runner import TreeResult
from seedq.service.faults import FaultKind, classify, describe
from seedq.service.outcomes import OutcomeWorker, Running
from seedq.service.records import result_record
from seedq.store import repo
from seedq.store.models import JobStatus

log = logging.getLogger(__name__)


async def succeeded(worker: OutcomeWorker, run: Running, result: TreeResult) -> bool:
    wall = time.perf_counter() - run.started
    try:
        owned = await asyncio.to_thread(
            repo.complete_job,
            worker.db,
            run.job_id,
            worker.name,
            run.claim.attempt,
            result=result_record(result, run.usage.record(wall)),
            answer=result.answer,
            correct=result.correct,
            wall_seconds=wall,
        )
        if not owned:
            await _disowned(worker, run)
            return False
        summary = {
            "job_id": run.job_id,
            "answer": result.answer,
            "correct": result.correct,
            "nodes": len(result.tree.nodes),
            "wall_seconds": round(wall, 3),
        }
        worker.rq_finished(run, summary)
    except Exception:
        _let_go(worker, run, "recording its completion")
        return False
    log.debug("worker %s: completed %s in %.2fs", worker.name, run.job_id, wall)
    return True


async def errored(worker: OutcomeWorker, run: Running, exc: Exception) -> None:
    kind = classify(exc)
    error = describe(exc)
    attempt = run.claim.attempt
    try:
        if kind == FaultKind.TRANSIENT and run.claim.budget_used < worker.settings.max_attempts:
            await _retry_later(worker, run, error, attempt)
            return
        owned = await asyncio.to_thread(
            repo.fail_job, worker.db, run.job_id, worker.name, attempt, error=error, kind=kind.value
        )
        if not owned:
            await _disowned(worker, run)
            return
        worker.rq_failed(run, error)
        log.error(
            "worker %s: job %s failed (%s): %s",
            worker.name,
            run.job_id,
            kind.value,
            error.splitlines()[0],
        )
    except Exception:
        _let_go(worker, run, "recording its failure")


async def _retry_later(worker: OutcomeWorker, run: Running, error: str, attempt: int) -> None:
    delay = worker.settings.retry_delay(attempt)
    when = datetime.now(timezone.utc) + timedelta(seconds=delay)
    worker.rq_retry_at(run, when)
    await asyncio.to_thread(
        repo.release_job,
        worker.db,
        run.job_id,
        worker.name,
        attempt,
        note=error,
        kind=FaultKind.TRANSIENT.value,
        retry_at=when.replace(tzinfo=None),
    )
    log.warning(
        "worker %s: job %s hit a transient fault (attempt %d), retry in %.1fs: %s",
        worker.name,
        run.job_id,
        attempt,
        delay,
        error.splitlines()[0],
    )


async def stopped(worker: OutcomeWorker, run: Running) -> None:
    """The tree's task was cancelled: cancelled or taken over. A tree stopped at shutdown is
    checkpointed by the worker's drain, with the others (``recovery.checkpoint``)."""
    try:
        if run.stop_reason == "shutdown":
            return
        await _disowned(worker, run)
    except Exception:
        _let_go(worker, run, "recording its stop")


def _release_at_shutdown(worker: OutcomeWorker, run: Running, note: str) -> None:
    """Give a job back at shutdown without spending one of its attempts."""
    repo.release_job(worker.db, run.job_id, worker.name, run.claim.attempt, note=note,
                     kind="shutdown", refund_attempt=True)


async def _disowned(worker: OutcomeWorker, run: Running) -> None:
    """The database no longer gives this job to this worker: it was cancelled (recorded as
    such on RQ) or re-run elsewhere (only this worker's execution is dropped)."""
    status = await asyncio.to_thread(repo.job_status, worker.db, run.job_id)
    if status == JobStatus.CANCELLED.value:
        worker.rq_cancelled(run)
        log.info("worker %s: job %s cancelled", worker.name, run.job_id)
    else:
        worker.rq_forget(run)
        log.warning("worker %s: job %s was taken over (%s)", worker.name, run.job_id, status)


def abandon_all(worker: OutcomeWorker, runs: list[Running]) -> None:
    """Cold shutdown, from a helper thread: put each running job back, best effort."""
    ids = [r.job_id for r in runs]
    try:
        q.requeue_ids(worker.queue, ids, at_front=True, store=worker.services.store_id)
        for run in runs:
            _release_at_shutdown(worker, run, "requeued at a cold worker shutdown")
    except Exception:
        log.warning(
            "worker %s: cold shutdown could not requeue %s; maintenance will",
            worker.name,
            ids,
            exc_info=True,
        )
    try:
        worker.register_death()
    except Exception:
        log.debug("worker %s: could not register death", worker.name, exc_info=True)


def _let_go(worker: OutcomeWorker, run: Running, doing: str) -> None:
    log.error(
        "worker %s: failed %s for job %s; letting it go, maintenance will recover it",
        worker.name,
        doing,
        run.job_id,
        exc_info=True,
    )
