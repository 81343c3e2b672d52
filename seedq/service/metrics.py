"""Prometheus metrics of one worker, served over HTTP when ``SEEDQ_METRICS_PORT`` is set.

Each worker has its own ``CollectorRegistry`` (not the process-wide default), so several
workers in one process (tests, ``seedq run``) never collide. The names (all ``seedq_``):

- ``jobs_started_total``, ``jobs_completed_total``, ``jobs_failed_total`` {task, engine}:
  attempts; a failed attempt that is retried later (transient fault) counts as failed too;
- ``job_seconds`` {task, engine}: histogram of the wall time of completed jobs;
- ``node_seconds`` {engine}: histogram of the time from one node of a tree to the next;
- ``tokens_total`` {engine, kind}: ``new`` (generated), ``drafted`` and ``accepted`` tokens;
- ``target_forwards_total`` {engine}: forward passes of the target model;
- ``target_busy_fraction`` {engine}: share of the last group's wall time the target model
  was computing (engines that measure it: ``seed``);
- ``queue_depth`` {queue}: jobs waiting on the worker's queue (read from Redis on scrape);
- ``round_size``, ``trees_running``: trees the worker runs at once, and runs now;
- ``worker_info`` {worker, queue}.

``deploy/grafana/seedq-dashboard.json`` charts them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from seedq.decoding.types import GroupResult
from seedq.service.events import JobEnd, JobStart, WorkerListener

log = logging.getLogger(__name__)

JOB_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600, float("inf"))
NODE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, float("inf"))
TOKEN_KINDS = ("new", "drafted", "accepted")


class MetricsError(RuntimeError):
    """The metrics endpoint cannot be served (port taken, bad address)."""


class WorkerMetrics(WorkerListener):
    """The metrics of one worker (see the module docstring) and, once served, its endpoint."""

    def __init__(self, worker: str, queue: str, round_size: int,
                 queue_depth: Callable[[], float], running: Callable[[], int]) -> None:
        self.registry = r = CollectorRegistry()
        labels = ["task", "engine"]
        self.started = Counter("seedq_jobs_started", "Job attempts started", labels, registry=r)
        self.completed = Counter("seedq_jobs_completed", "Jobs completed", labels, registry=r)
        self.failed = Counter("seedq_jobs_failed", "Job attempts that ended in an error",
                              labels, registry=r)
        self.job_seconds = Histogram("seedq_job_seconds", "Wall time of completed jobs",
                                     labels, buckets=JOB_BUCKETS, registry=r)
        self.node_seconds = Histogram("seedq_node_seconds", "Time from a node to the next",
                                      ["engine"], buckets=NODE_BUCKETS, registry=r)
        self.tokens = Counter("seedq_tokens", "Tokens: new, drafted, accepted",
                              ["engine", "kind"], registry=r)
        self.forwards = Counter("seedq_target_forwards", "Target model forward passes",
                                ["engine"], registry=r)
        self.busy = Gauge("seedq_target_busy_fraction",
                          "Share of the last group's wall time the target was computing",
                          ["engine"], registry=r)
        depth = Gauge("seedq_queue_depth", "Jobs waiting on the queue", ["queue"], registry=r)
        depth.labels(queue).set_function(queue_depth)
        Gauge("seedq_round_size", "Trees run at once", registry=r).set(round_size)
        Gauge("seedq_trees_running", "Trees running now", registry=r).set_function(running)
        Info("seedq_worker", "This worker", registry=r).info({"worker": worker, "queue": queue})
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # ---- listener hooks ------------------------------------------------------------------

    def job_started(self, job: JobStart) -> None:
        self.started.labels(job.task, job.engine).inc()
        self.completed.labels(job.task, job.engine)  # exported as 0 from now on
        self.failed.labels(job.task, job.engine)

    def job_ended(self, end: JobEnd) -> None:
        labels = (end.job.task, end.job.engine)
        if end.status == "completed":
            self.completed.labels(*labels).inc()
            self.job_seconds.labels(*labels).observe(end.seconds)
        elif end.status in ("failed", "retry"):
            self.failed.labels(*labels).inc()

    def group_done(self, engine: str, result: GroupResult) -> None:
        counts = dict.fromkeys(TOKEN_KINDS, 0)
        forwards = 0
        for seq in result.sequences:
            counts["new"] += seq.metrics.new_tokens
            counts["drafted"] += seq.metrics.drafted_tokens
            counts["accepted"] += seq.metrics.accepted_tokens
            forwards += seq.metrics.target_forwards
        for kind, n in counts.items():
            self.tokens.labels(engine, kind).inc(n)
        self.forwards.labels(engine).inc(forwards)
        busy = result.stats.get("target_busy_fraction")
        if busy is not None:
            self.busy.labels(engine).set(busy)

    def node_done(self, engine: str, seconds: float) -> None:
        self.node_seconds.labels(engine).observe(seconds)

    # ---- the endpoint --------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``addr:port`` (0: a free port) in a thread; the port."""
        try:
            self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}"
                               ) from exc
        self.port = int(self._server.server_port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def serve_worker_metrics(worker: Any) -> WorkerMetrics | None:
    """The metrics of a :class:`~seedq.service.worker.TreeWorker`, listening on its events and
    served on ``settings.metrics_port``; None when that is unset."""
    settings = worker.settings
    if settings.metrics_port is None:
        return None
    from seedq.queue import pending_count

    queue = worker.queue

    def depth() -> float:
        try:
            return float(pending_count(queue))
        except Exception:  # Redis away: the scrape still answers
            return float("nan")

    metrics = WorkerMetrics(worker.name, queue.name, worker.round_size, depth,
                            lambda: len(worker.running))
    port = metrics.serve(settings.metrics_port, settings.metrics_addr)
    worker.events.add(metrics)
    log.info("worker %s: metrics on http://%s:%d/metrics", worker.name, settings.metrics_addr, port)
    return metrics
