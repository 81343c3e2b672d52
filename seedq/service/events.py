"""What a worker reports while it runs: jobs started and ended, generations, nodes.

:class:`~seedq.service.worker.TreeWorker` calls one :class:`Listeners` fan-out; the listeners
are the one-line job log (:class:`JobLog`, at INFO, like ``rq worker``), the Prometheus
metrics (:mod:`seedq.service.metrics`) and the progress bar of ``seedq run``. A listener that
raises is logged and ignored: reporting never breaks a job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from seedq.decoding.types import GroupResult
from seedq.store.rows import Claimed

log = logging.getLogger(__name__)
job_log = logging.getLogger("seedq.jobs")


@dataclass(frozen=True)
class JobStart:
    """A job (attempt) a worker just started."""

    job_id: str
    custom_id: str | None
    task: str
    engine: str
    attempt: int

    @classmethod
    def of(cls, claim: Claimed, default_engine: str) -> JobStart:
        """From a claim; the engine is the batch's option, else the worker's own."""
        payload = claim.payload or {}
        engine = (claim.engine or {}).get("engine") or default_engine
        return cls(
            claim.job_id,
            payload.get("custom_id"),
            str(payload.get("task") or "unknown"),
            str(engine),
            claim.attempt,
        )


@dataclass(frozen=True)
class JobEnd:
    """How an attempt ended: ``completed``, ``failed``, ``retry`` (a transient fault, queued
    again later), ``stopped`` (checkpointed at shutdown) or ``lost`` (cancelled, taken over)."""

    job: JobStart
    status: str
    seconds: float
    nodes: int = 0
    new_tokens: int = 0
    tokens_per_second: float | None = None
    error: str | None = None

    @classmethod
    def of(cls, job: JobStart, status: str, seconds: float, result: Any = None,
           error: BaseException | None = None) -> JobEnd:
        """From a ``TreeResult`` (completed jobs) or the exception that ended the attempt."""
        if result is None:
            first = str(error).splitlines()[0] if error is not None and str(error) else None
            text = f"{type(error).__name__}: {first}" if first else None
            return cls(job, status, seconds, error=text if error is not None else None)
        metrics = result.metrics or {}
        total = metrics.get("total") or {}
        return cls(job, status, seconds, len(result.tree.nodes),
                   int(total.get("new_tokens") or 0), metrics.get("tokens_per_second"))

    def line(self) -> str:
        """``job ID (CUSTOM_ID) completed: 7 nodes, 3.21s, 45.2 tokens/s``."""
        rate = f"{self.tokens_per_second:.1f}" if self.tokens_per_second else "-"
        text = (f"job {self.job.job_id} ({self.job.custom_id or '-'}) {self.status}: "
                f"{self.nodes} nodes, {self.seconds:.2f}s, {rate} tokens/s")
        return text + (f" ({self.error})" if self.error else "")


class WorkerListener:
    """Every hook a worker calls; override the ones you need (all run on the worker's loop)."""

    def jobs_expected(self, total: int) -> None:
        """``total`` jobs are about to be worked off (``seedq run``)."""

    def job_started(self, job: JobStart) -> None:
        """An attempt started."""

    def job_ended(self, end: JobEnd) -> None:
        """An attempt ended (see :class:`JobEnd` for the statuses)."""

    def group_done(self, engine: str, result: GroupResult) -> None:
        """One group of sequences came back from the generator."""

    def node_done(self, engine: str, seconds: float) -> None:
        """A tree node became final ``seconds`` after the previous one of its tree."""


class Listeners(WorkerListener):
    """Calls each listener in turn, logging (not raising) what one of them raises."""

    def __init__(self, listeners: Iterable[WorkerListener] = ()) -> None:
        self.listeners = list(listeners)

    def add(self, listener: WorkerListener) -> None:
        self.listeners.append(listener)

    def _each(self, hook: str, *args: Any) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, hook)(*args)
            except Exception:
                log.warning("listener %s failed in %s", type(listener).__name__, hook,
                            exc_info=True)

    def jobs_expected(self, total: int) -> None:
        self._each("jobs_expected", total)

    def job_started(self, job: JobStart) -> None:
        self._each("job_started", job)

    def job_ended(self, end: JobEnd) -> None:
        self._each("job_ended", end)

    def group_done(self, engine: str, result: GroupResult) -> None:
        self._each("group_done", engine, result)

    def node_done(self, engine: str, seconds: float) -> None:
        self._each("node_done", engine, seconds)


class JobLog(WorkerListener):
    """One INFO line per ended attempt on the ``seedq.jobs`` logger."""

    def job_ended(self, end: JobEnd) -> None:
        job_log.info("%s", end.line())


def error_status(exc: BaseException, used: int, max_attempts: int) -> str:
    """``retry`` when :mod:`seedq.service.finish` queues the job again (a transient fault,
    ``used`` attempts of ``max_attempts``), else ``failed``."""
    from seedq.service.faults import FaultKind, classify

    return "retry" if classify(exc) == FaultKind.TRANSIENT and used < max_attempts else "failed"
