"""The function RQ records for every seedq job (``seedq.queue.JOB_FUNC``).

seedq workers never call it: they read the payload and run the tree themselves, with the
models they loaded once, their heartbeats and their database claim. A job picked up by some
other RQ worker (``rq worker`` on a seedq queue) lands here and fails on the RQ side with a
clear message, without touching the database: the job stays queued there, and the
maintenance of a seedq worker re-enqueues it.
"""

from __future__ import annotations

from typing import Any


class ForeignWorkerError(RuntimeError):
    """A seedq job was dequeued by a worker that is not ``seedq worker``."""


def run_tree_job(payload: dict[str, Any]) -> dict[str, Any]:
    job_id = payload.get("job_id") if isinstance(payload, dict) else None
    raise ForeignWorkerError(
        f"seedq job {job_id!r} must be run by `seedq worker` (it loads the models once and "
        "keeps the job's heartbeat); this RQ worker cannot run it"
    )
