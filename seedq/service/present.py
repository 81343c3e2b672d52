"""Text output of the service commands: status tables, query results as table/CSV/JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Collection, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from seedq.service.control import WorkerInfo
from seedq.service.oneshot import RunOutcome
from seedq.store.models import JobStatus
from seedq.store.reports import BatchSummary

MAX_CELL = 60


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def status_table(
    summaries: Sequence[BatchSummary], listened: Collection[str] | None = None
) -> str:
    """One row per batch; ``listened``: the queues a live worker listens on (a batch whose
    queue has none shows ``no worker`` instead of an ETA)."""
    statuses = JobStatus.values()
    columns = ["batch", "task", "engine", *statuses, "jobs/s", "eta", "created", "finished"]
    rows = []
    for s in summaries:
        rate = f"{s.throughput:.2f}" if s.throughput is not None else "-"
        eta = "done" if s.done else seconds(s.eta_seconds)
        if not s.done and listened is not None and s.queue not in listened:
            eta = "no worker"
        task = ",".join(s.tasks) or "-"
        engine = str((s.engine_options or {}).get("engine") or "worker")
        counts = (s.counts.get(st, 0) for st in statuses)
        finished = _when(s.last_finished) if s.done else "-"
        rows.append((s.batch_id, task, engine, *counts, rate, eta, _when(s.created_at), finished))
    return table(columns, rows)


def workers_table(workers: Sequence[WorkerInfo]) -> str:
    columns = ["worker", "queues", "state", "alive", "last heartbeat", "ok", "failed", "jobs"]
    rows = []
    for w in workers:
        beat = w.last_heartbeat.strftime("%H:%M:%S") if w.last_heartbeat else "-"
        jobs = ", ".join(str(j["custom_id"] or j["job_id"]) for j in w.jobs) or "-"
        alive = "yes" if w.alive else "no"
        row = (w.name, ",".join(w.queues), w.state, alive, beat, w.successful, w.failed, jobs)
        rows.append(row)
    return table(columns, rows)


def _cell(value: Any) -> str:
    text = "" if value is None else str(_jsonable(value))
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


def as_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            [json.dumps(v) if isinstance(v, dict | list) else _jsonable(v) for v in row]
        )
    return out.getvalue()


def as_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    records = [{c: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]
    return json.dumps(records, indent=2, ensure_ascii=False, default=str)


def _speed(metrics: dict[str, Any]) -> str:
    """", 412 tokens at 9.8 tokens/s, 61% of drafted tokens accepted" from tree metrics."""
    total = metrics.get("total") or {}
    parts = []
    if total.get("new_tokens"):
        parts.append(f"{total['new_tokens']} tokens")
        if metrics.get("tokens_per_second"):
            parts[-1] += f" at {metrics['tokens_per_second']:.1f} tokens/s"
    if metrics.get("acceptance_rate") is not None:
        parts.append(f"{metrics['acceptance_rate']:.0%} of drafted tokens accepted")
    return "".join(", " + p for p in parts)


def run_outcome(outcome: RunOutcome) -> str:
    """What ``seedq run`` shows: each answer, the errors, the batch and where it is stored."""
    lines = []
    for r in outcome.results:
        mark = {True: "correct", False: "wrong", None: "-"}[r.get("correct")]
        nodes = len((r.get("tree") or {}).get("nodes") or [])
        lines.append(
            f"{r['custom_id']}: answer {r.get('answer')!r} ({mark}), {nodes} nodes, "
            f"{seconds(r.get('wall_seconds'))}{_speed(r.get('metrics') or {})}"
        )
    for e in outcome.errors:
        first = (e["error"] or "").splitlines()[0] if e["error"] else ""
        lines.append(f"{e['custom_id'] or 'line ' + str(e['line'])}: {e['status']}: {first}")
    if outcome.summary is not None:
        lines += ["", status_table([outcome.summary])]
    lines += [
        "",
        f"batch {outcome.batch_id} is stored in {outcome.database} (Redis: {outcome.redis}).",
        "Look closer with:",
        f"  seedq results {outcome.batch_id}",
        '  seedq query "SELECT depth, role, AVG(wall_seconds) FROM generations '
        'GROUP BY depth, role"',
        "  (docs/SQL.md has more)",
    ]
    return "\n".join(lines)
