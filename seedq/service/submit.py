"""``seedq submit``: validate every line, store the batch, enqueue its jobs.

Nothing is stored or enqueued when any line is bad, unless ``skip_invalid`` (then the bad
lines are stored as ``rejected`` jobs and the good ones go on).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from seedq import queue as q
from seedq.reasoning.jobs import TASK_NAMES, JobSpec, JobSpecError, SearchParams, parse_job
from seedq.service import engines, intake
from seedq.service.context import Services
from seedq.store import repo
from seedq.store.rows import NewJob, Rejection

log = logging.getLogger(__name__)


class SubmitError(ValueError):
    """Nothing was submitted; ``rejections`` lists the bad lines when that is the reason."""

    def __init__(self, message: str, rejections: list[Rejection] | None = None) -> None:
        super().__init__(message)
        self.rejections = rejections or []


@dataclass
class SubmitReport:
    batch_id: str
    accepted: int
    rejected: list[Rejection] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def read_lines(
    path: Path, limit: int | None = None, limits: intake.Limits | None = None
) -> list[tuple[int, str | intake.LineProblem]]:
    """The non-blank lines of a JSONL file with their 1-based numbers, read line by line
    with a size cap (:mod:`seedq.service.intake`); file-level problems (missing,
    unreadable, binary, not UTF-8, empty) raise :class:`SubmitError`."""
    try:
        return list(intake.iter_lines(path, limits or intake.Limits(), limit))
    except intake.FileProblem as exc:
        raise SubmitError(str(exc)) from exc


def _parse_line(
    line_no: int,
    text: str | intake.LineProblem,
    task: str | None,
    defaults: SearchParams | None,
    limits: intake.Limits,
) -> JobSpec | Rejection:
    if isinstance(text, intake.LineProblem):
        return Rejection(line_no, None, text.reason, text.raw)
    try:
        obj = intake.load_line(text, limits)
    except json.JSONDecodeError as exc:
        return Rejection(line_no, None, f"invalid JSON: {exc.msg} at column {exc.colno}", text)
    except (ValueError, RecursionError) as exc:
        return Rejection(line_no, None, str(exc), text)
    try:
        return parse_job(obj, default_task=task, defaults=defaults)
    except JobSpecError as exc:
        return Rejection(line_no, exc.field, exc.reason, text)
    except Exception as exc:  # a malformed value the task did not anticipate: still one line
        return Rejection(line_no, None, f"invalid job: {type(exc).__name__}: {exc}", text)


def _shape_rejection(
    line_no: int, spec: JobSpec, text: str, shape: tuple[int, int]
) -> Rejection | None:
    problem = intake.shape_problem(spec.search, *shape)
    return Rejection(line_no, "search", problem, text) if problem else None


def validate_lines(
    lines: list[tuple[int, str | intake.LineProblem]],
    *,
    task: str | None,
    defaults: SearchParams | None,
    limits: intake.Limits | None = None,
    shape: tuple[int, int] = (1, 2**62),
) -> tuple[list[tuple[int, JobSpec]], list[Rejection]]:
    """Parse every line; duplicate custom ids and trees over the size limit (``shape``:
    draft tree nodes, most tree nodes) are bad lines too. Jobs without a custom id get
    ``line-<n>`` (made unique against the ids the file gives)."""
    specs: list[tuple[int, JobSpec]] = []
    bad: list[Rejection] = []
    first_seen: dict[str, int] = {}
    for line_no, text in lines:
        parsed = _parse_line(line_no, text, task, defaults, limits or intake.Limits())
        if isinstance(parsed, JobSpec) and isinstance(text, str):
            parsed = _shape_rejection(line_no, parsed, text, shape) or parsed
        if isinstance(parsed, Rejection):
            bad.append(parsed)
            continue
        cid = parsed.custom_id
        if cid is not None and cid in first_seen:
            reason = f"duplicate custom_id {cid!r} (first on line {first_seen[cid]})"
            bad.append(Rejection(line_no, "custom_id", reason, str(text)))
            continue
        if cid is not None:
            first_seen[cid] = line_no
        specs.append((line_no, parsed))
    accepted = [(n, _with_custom_id(n, s, first_seen)) for n, s in specs]
    return accepted, _keep_custom_ids(bad, set(first_seen))


CUSTOM_ID_MAX = 256  # jobs.custom_id


def _keep_custom_ids(bad: list[Rejection], taken: set[str]) -> list[Rejection]:
    """Rejected lines keep the custom_id they give, unless a job (or an earlier rejected
    line) of the batch already has it: ``seedq results --errors`` names them by it."""
    out = []
    for rej in bad:
        try:
            obj = json.loads(rej.raw)
        except (ValueError, RecursionError):
            obj = None
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        if (
            isinstance(cid, str)
            and cid
            and len(cid) <= CUSTOM_ID_MAX
            and cid not in taken
            and intake.unstorable(cid) is None  # no NUL or lone surrogate reaches the store
        ):
            taken.add(cid)
            rej = replace(rej, custom_id=cid)
        out.append(rej)
    return out


def _with_custom_id(line_no: int, spec: JobSpec, taken: dict[str, int]) -> JobSpec:
    if spec.custom_id is not None:
        return spec
    candidate, k = f"line-{line_no}", 1
    while candidate in taken:
        k += 1
        candidate = f"line-{line_no}-{k}"
    taken[candidate] = line_no
    return replace(spec, custom_id=candidate)


def _new_jobs(batch_id: str, specs: list[tuple[int, JobSpec]]) -> Iterator[NewJob]:
    for line_no, spec in specs:
        assert spec.custom_id is not None
        yield NewJob(
            q.job_id_for(batch_id, line_no), line_no, spec.custom_id, spec.task, spec.to_json()
        )


def submit_file(
    services: Services,
    path: Path,
    *,
    task: str | None = None,
    defaults: SearchParams | None = None,
    limit: int | None = None,
    skip_invalid: bool = False,
    queue_name: str | None = None,
    engine: dict[str, Any] | None = None,
) -> SubmitReport:
    """Validate ``path``, then store and enqueue it as one batch; see the module docstring.
    ``engine``: the batch's engine options, as :func:`seedq.service.engines.normalize`
    returns them (None: the workers' own engine)."""
    t0 = time.perf_counter()
    settings = services.settings
    engine = _checked_options(task, engine, settings.max_draft_tree)
    limits = intake.Limits(settings.max_line_bytes, settings.max_json_depth)
    specs, bad = validate_lines(
        read_lines(path, limit, limits),
        task=task,
        defaults=defaults,
        limits=limits,
        shape=(intake.draft_tree_nodes(engine), settings.max_tree_nodes),
    )
    t1 = time.perf_counter()
    if bad and not skip_invalid:
        raise SubmitError(
            f"{path}: {len(bad)} bad line(s), first {bad[0].message()}; nothing was submitted",
            bad,
        )
    if not specs:
        raise SubmitError(f"{path}: no valid lines; nothing was submitted", bad)
    queue = services.queue(queue_name)
    stored = _store(services, path, queue.name, specs, bad, (task, defaults, limit), engine)
    batch_id, jobs = stored
    t2 = time.perf_counter()
    _enqueue_or_undo(services, queue.name, batch_id, jobs)
    t3 = time.perf_counter()
    log.info(
        "batch %s: %d jobs enqueued on %s, %d rejected", batch_id, len(jobs), queue.name, len(bad)
    )
    timings = {"validate": t1 - t0, "store": t2 - t1, "enqueue": t3 - t2, "total": t3 - t0}
    return SubmitReport(batch_id, len(jobs), bad, timings)


def _checked_options(
    task: str | None, engine: dict[str, Any] | None, max_draft_tree: int
) -> dict[str, Any] | None:
    """The batch's engine options, normalized, once the options that apply to the whole file
    are checked (one error, not one per line)."""
    try:
        normalized = engines.normalize(engine or {})
    except engines.EngineOptionError as exc:
        raise SubmitError(f"{exc}; nothing was submitted") from exc
    if task is not None and task not in TASK_NAMES:
        known = ", ".join(TASK_NAMES)
        raise SubmitError(f"unknown task {task!r} (known: {known}); nothing was submitted")
    too_big = intake.engine_problem(normalized, max_draft_tree)
    if too_big:
        raise SubmitError(f"{too_big}; nothing was submitted")
    return normalized


def _store(
    services: Services,
    path: Path,
    queue_name: str,
    specs: list[tuple[int, JobSpec]],
    bad: list[Rejection],
    given: tuple[str | None, SearchParams | None, int | None],
    engine: dict[str, Any] | None,
) -> tuple[str, list[NewJob]]:
    task, defaults, limit = given
    batch_id = q.new_batch_id()
    jobs = list(_new_jobs(batch_id, specs))
    options = {"task": task, "defaults": defaults.to_json() if defaults else None, "limit": limit}
    repo.create_batch(
        services.db,
        batch_id=batch_id,
        source=str(path),
        task=task,
        queue=queue_name,
        options=options,
        jobs=jobs,
        rejected=bad,
        engine=engine,
    )
    return batch_id, jobs


def _enqueue_or_undo(
    services: Services, queue_name: str, batch_id: str, jobs: list[NewJob]
) -> None:
    settings = services.settings
    payloads = [q.make_payload(j.id, batch_id, services.store_id) for j in jobs]
    try:
        q.enqueue_jobs(
            services.queue(queue_name),
            payloads,
            job_timeout=settings.job_timeout,
            result_ttl=settings.result_ttl,
        )
    except Exception as exc:
        repo.delete_batch(services.db, batch_id)  # ids left in Redis find no job and are dropped
        raise SubmitError(f"could not enqueue on Redis ({exc}); nothing was submitted") from exc
