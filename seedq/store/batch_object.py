"""``seedq status --json``: a batch in the shape of the OpenAI Batch object where it fits.

``id``, ``object`` (``"batch"``), ``input_file_id`` (the submitted file), ``status``, the
unix-second timestamps ``created_at``, ``in_progress_at``, ``completed_at``,
``cancelled_at``, ``failed_at`` (null until they apply), ``request_counts`` {total,
completed, failed} (failed counts rejected lines too) and ``metadata``; then seedq's own:
``batch_id``, ``queue``, ``tasks``, ``engine``, ``engine_options``, ``counts`` per job status,
``done``, ``throughput_jobs_per_s``, ``eta_seconds`` and ``workers_listening`` (whether a live
worker listens on its queue; null when unknown).

``status`` is ``queued`` (nothing started yet), ``in_progress``, ``cancelling``,
``completed``, ``cancelled`` (done, nothing completed, some cancelled) or ``failed`` (every
line was rejected).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from seedq.store.reports import BatchSummary


def unix(value: datetime | None) -> int | None:
    """Seconds since the epoch of a stored (naive UTC) time."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp())


def batch_status(s: BatchSummary) -> str:
    count = s.counts.get
    if s.total and count("rejected", 0) == s.total:
        return "failed"
    if s.done:
        cancelled_only = count("cancelled", 0) and not count("completed", 0)
        return "cancelled" if cancelled_only else "completed"
    if count("cancelled", 0):
        return "cancelling"
    return "queued" if s.first_started is None else "in_progress"


def batch_object(s: BatchSummary, *, workers_listening: bool | None = None) -> dict[str, Any]:
    """See the module docstring."""
    status = batch_status(s)
    finished = unix(s.last_finished) if s.done else None
    count = s.counts.get
    return {
        "id": s.batch_id,
        "object": "batch",
        "input_file_id": s.source,
        "status": status,
        "created_at": unix(s.created_at),
        "in_progress_at": unix(s.first_started),
        "completed_at": finished if status == "completed" else None,
        "cancelled_at": finished if status == "cancelled" else None,
        "failed_at": unix(s.created_at) if status == "failed" else None,
        "request_counts": {
            "total": s.total,
            "completed": count("completed", 0),
            "failed": count("failed", 0) + count("rejected", 0),
        },
        "metadata": None,
        "batch_id": s.batch_id,
        "queue": s.queue,
        "tasks": list(s.tasks),
        "engine": engine_name(s),
        "engine_options": s.engine_options,
        "counts": s.to_json()["counts"],
        "done": s.done,
        "throughput_jobs_per_s": s.throughput,
        "eta_seconds": s.eta_seconds,
        "workers_listening": workers_listening,
    }


def engine_name(s: BatchSummary) -> str:
    """The batch's engine option, or ``worker`` (each worker's own ``SEEDQ_ENGINE``)."""
    return str((s.engine_options or {}).get("engine") or "worker")
