"""Queue names, Redis keys and the job payload, plus the RQ calls seedq makes with them.

Every Redis name seedq uses is defined here. Jobs are RQ jobs serialized with
``rq.serializers.JSONSerializer`` (never pickle) whose only argument is a :class:`JobPayload`;
the job id is deterministic (``<batch id>-<line number>``), so enqueueing or retrying a job
twice can never create two copies of it. The payload names the SQL store the job lives in
(``store``: the id :mod:`seedq.store.identity` keeps in the database), so a worker connected
to another database leaves the job where it is.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, TypedDict

from redis import Redis
from rq import Queue
from rq.job import Job as RQJob
from rq.job import JobStatus as RQStatus
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

DEFAULT_QUEUE = "seedq"
KEY_PREFIX = "seedq"
JOB_FUNC = "seedq.service.tasks.run_tree_job"  # what RQ records as each job's function
PAYLOAD_VERSION = 1
ENQUEUE_CHUNK = 2000
DEFAULT_JOB_TIMEOUT = 3600
DEFAULT_RESULT_TTL = 86400
SERIALIZER = JSONSerializer


class PayloadError(ValueError):
    """An RQ job on a seedq queue does not carry a valid seedq payload."""


class JobPayload(TypedDict):
    """The JSON argument of every seedq RQ job; the job itself lives in the database.
    ``store`` is the id of that database (None in payloads enqueued before it existed)."""

    v: int
    job_id: str
    batch_id: str
    store: str | None


def make_payload(job_id: str, batch_id: str, store: str | None = None) -> JobPayload:
    return {"v": PAYLOAD_VERSION, "job_id": job_id, "batch_id": batch_id, "store": store}


def payload_of(job: RQJob) -> JobPayload:
    """The payload of a dequeued RQ job; raises :class:`PayloadError` when it is not one."""
    if job.func_name != JOB_FUNC:
        raise PayloadError(f"RQ job {job.id} runs {job.func_name!r}, not {JOB_FUNC}")
    args = job.args
    if len(args) != 1 or not isinstance(args[0], dict):
        raise PayloadError(f"RQ job {job.id} has no seedq payload")
    raw = args[0]
    if raw.get("v") != PAYLOAD_VERSION:
        raise PayloadError(f"RQ job {job.id}: payload version {raw.get('v')!r} is not supported")
    job_id, batch_id, store = raw.get("job_id"), raw.get("batch_id"), raw.get("store")
    if not isinstance(job_id, str) or not isinstance(batch_id, str):
        raise PayloadError(f"RQ job {job.id}: payload needs string job_id and batch_id")
    if store is not None and not isinstance(store, str):
        raise PayloadError(f"RQ job {job.id}: payload store must be a string")
    return make_payload(job_id, batch_id, store)


def new_batch_id() -> str:
    """Time-ordered and unique: ``b20250101T120000-1a2b3c``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"b{stamp}-{secrets.token_hex(3)}"


def job_id_for(batch_id: str, line_no: int) -> str:
    """The deterministic job id (database and RQ) of line ``line_no`` of a batch."""
    return f"{batch_id}-{line_no:06d}"


def batch_of(job_id: str) -> str:
    """The batch id of a job id made by :func:`job_id_for`."""
    batch_id, sep, line = job_id.rpartition("-")
    if not sep or not line.isdigit():
        raise PayloadError(f"{job_id!r} is not a seedq job id")
    return batch_id


def maintenance_lock_key(queue_name: str) -> str:
    """Held by the one worker that looks for abandoned jobs of ``queue_name`` right now."""
    return f"{KEY_PREFIX}:{queue_name}:maintenance"


def redis_marker_key(queue_name: str) -> str:
    """Set by maintenance and never expiring: when it is gone, Redis lost its data."""
    return f"{KEY_PREFIX}:{queue_name}:marker"


def missing_ids(queue: Queue, job_ids: Sequence[str]) -> list[str]:
    """The ids among ``job_ids`` that have no RQ record (Redis lost them)."""
    with queue.connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(RQJob.key_for(job_id))
        found = pipe.execute()
    return [j for j, present in zip(job_ids, found, strict=True) if not present]


def connect(url: str) -> Redis:
    """A Redis client for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
    return Redis.from_url(url, health_check_interval=30)


def rq_queue(connection: Redis, name: str = DEFAULT_QUEUE) -> Queue:
    return Queue(name, connection=connection, serializer=SERIALIZER)


def enqueue_jobs(
    queue: Queue,
    payloads: Sequence[JobPayload],
    *,
    job_timeout: int,
    result_ttl: int,
    at_front: bool = False,
) -> int:
    """Enqueue one RQ job per payload with ``Queue.enqueue_many`` and pipelines; they are
    taken in the order given (also ``at_front``)."""
    if at_front:
        payloads = list(reversed(payloads))
    for start in range(0, len(payloads), ENQUEUE_CHUNK):
        chunk = payloads[start : start + ENQUEUE_CHUNK]
        datas = [
            Queue.prepare_data(
                JOB_FUNC,
                args=[dict(p)],
                job_id=p["job_id"],
                timeout=job_timeout,
                result_ttl=result_ttl,
                description=f"seedq job {p['job_id']}",
                at_front=at_front,
            )
            for p in chunk
        ]
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(datas, pipeline=pipe)
            pipe.execute()
    return len(payloads)


def claim_next(queue: Queue, timeout: int | None) -> RQJob | None:
    """Atomically move the oldest job id into the queue's intermediate list (LMOVE, or BLMOVE
    blocking up to ``timeout`` seconds) and fetch it; None when the queue stays empty."""
    from rq.exceptions import DequeueTimeout

    try:
        result = Queue.dequeue_any(
            [queue], timeout, connection=queue.connection, serializer=SERIALIZER
        )
    except DequeueTimeout:
        return None
    return None if result is None else result[0]


def requeue_ids(
    queue: Queue,
    job_ids: Sequence[str],
    *,
    at_front: bool = True,
    job_timeout: int = DEFAULT_JOB_TIMEOUT,
    result_ttl: int = DEFAULT_RESULT_TTL,
    store: str | None = None,
) -> None:
    """Put jobs back on the queue exactly once, wherever they were before (queue, claim
    list, end or scheduled registries), in the order given. Jobs whose RQ record is gone
    (Redis lost its data) are enqueued afresh under the same id, for ``store``."""
    if not job_ids:
        return
    conn = queue.connection
    with conn.pipeline() as pipe:
        for job_id in job_ids:
            pipe.exists(RQJob.key_for(job_id))
        present = [j for j, found in zip(job_ids, pipe.execute(), strict=True) if found]
    missing = [j for j in job_ids if j not in set(present)]
    if present:
        with conn.pipeline() as pipe:
            for job_id in present:
                pipe.lrem(queue.key, 0, job_id)
                pipe.lrem(queue.intermediate_queue_key, 0, job_id)
                for registry in (*_end_registries(queue), queue.scheduled_job_registry):
                    pipe.zrem(registry.key, job_id)
                pipe.hset(RQJob.key_for(job_id), mapping={"status": RQStatus.QUEUED.value})
            ordered = list(reversed(present)) if at_front else list(present)
            (pipe.lpush if at_front else pipe.rpush)(queue.key, *ordered)
            pipe.execute()
    if missing:
        payloads = [make_payload(j, batch_of(j), store) for j in missing]
        enqueue_jobs(
            queue, payloads, job_timeout=job_timeout, result_ttl=result_ttl, at_front=at_front
        )


def push_back(queue: Queue, job_id: str) -> None:
    """Return a job this worker claimed (LMOVE) but will not run to the front of the queue,
    atomically (MULTI): it keeps its place in FCFS order."""
    with queue.connection.pipeline(transaction=True) as pipe:
        pipe.lrem(queue.intermediate_queue_key, 0, job_id)
        pipe.lpush(queue.key, job_id)
        pipe.execute()


# One pass over the queue list (atomic: no worker claims meanwhile): drop the ids that start
# with ARGV[1], keep the others in order, return the dropped ones.
_REMOVE_PREFIX = """
local prefix = ARGV[1]
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local keep, removed = {}, {}
for _, id in ipairs(items) do
  if string.sub(id, 1, #prefix) == prefix then
    removed[#removed + 1] = id
  else
    keep[#keep + 1] = id
  end
end
if #removed > 0 then
  redis.call('DEL', KEYS[1])
  for i = 1, #keep, 5000 do
    redis.call('RPUSH', KEYS[1], unpack(keep, i, math.min(i + 4999, #keep)))
  end
end
return removed
"""


def remove_batch(queue: Queue, batch_id: str) -> list[str]:
    """Remove every waiting job of a batch from the queue and the retry schedule, with their
    RQ records, in bulk; returns the removed job ids. Jobs being claimed right now are left
    to their worker (the database refuses them)."""
    prefix = job_id_for(batch_id, 0)[: -len("000000")]
    conn = queue.connection
    removed = [as_str(j) for j in conn.eval(_REMOVE_PREFIX, 1, queue.key, prefix)]
    scheduled = queue.scheduled_job_registry
    parked = [
        as_str(j) for j in conn.zrange(scheduled.key, 0, -1) if as_str(j).startswith(prefix)
    ]
    ids = removed + parked
    for start in range(0, len(ids), ENQUEUE_CHUNK):
        chunk = ids[start : start + ENQUEUE_CHUNK]
        with conn.pipeline(transaction=False) as pipe:
            if parked:
                pipe.zrem(scheduled.key, *chunk)
            pipe.unlink(*(RQJob.key_for(j) for j in chunk))
            pipe.execute()
    return ids


def as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def reenqueue(
    queue: Queue, payloads: Sequence[JobPayload], *, job_timeout: int, result_ttl: int
) -> int:
    """Retry jobs: forget their previous RQ record, then enqueue them again under the same id."""
    if not payloads:
        return 0
    with queue.connection.pipeline() as pipe:
        for p in payloads:
            pipe.lrem(queue.key, 0, p["job_id"])
            pipe.lrem(queue.intermediate_queue_key, 0, p["job_id"])
            for registry in _end_registries(queue):
                pipe.zrem(registry.key, p["job_id"])
            pipe.zrem(queue.scheduled_job_registry.key, p["job_id"])
            pipe.delete(RQJob.key_for(p["job_id"]))
        pipe.execute()
    return enqueue_jobs(queue, payloads, job_timeout=job_timeout, result_ttl=result_ttl)


def _end_registries(queue: Queue) -> list[Any]:
    conn, name = queue.connection, queue.name
    return [
        FailedJobRegistry(name, conn, serializer=SERIALIZER),
        CanceledJobRegistry(name, conn, serializer=SERIALIZER),
        FinishedJobRegistry(name, conn, serializer=SERIALIZER),
    ]


def enqueue_due(queue: Queue, now: float | None = None) -> list[str]:
    """Move jobs whose retry time has come from the scheduled registry to the queue front."""
    registry = queue.scheduled_job_registry
    due = [
        str(j) for j in registry.get_jobs_to_schedule(int(now if now is not None else time.time()))
    ]
    if not due:
        return []
    with queue.connection.pipeline() as pipe:
        for job_id in due:
            registry.remove(job_id, pipeline=pipe)
        pipe.execute()
    requeue_ids(queue, due, at_front=True)
    return due


def next_retry_in(queue: Queue) -> float | None:
    """Seconds until the earliest scheduled retry of this queue, or None when there is none."""
    first = queue.connection.zrange(queue.scheduled_job_registry.key, 0, 0, withscores=True)
    if not first:
        return None
    return max(0.0, float(first[0][1]) - time.time())


def pending_count(queue: Queue) -> int:
    """Jobs waiting on the queue, claimed but not started, or scheduled for a retry."""
    conn = queue.connection
    with conn.pipeline() as pipe:
        pipe.llen(queue.key)
        pipe.llen(queue.intermediate_queue_key)
        pipe.zcard(queue.scheduled_job_registry.key)
        counts = pipe.execute()
    return int(sum(counts))
