"""``seedq run``: submit a file and work it off in this process (a burst worker).

Uses the configured Redis when it answers, else a private one (see
:mod:`seedq.service.embedded`), and brings the database schema up to date itself, so that
``seedq run --demo`` works on a fresh machine.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from redis import Redis

from seedq.reasoning.params import SearchParams
from seedq.service.context import open_services
from seedq.service.embedded import EmbeddedRedis, redis_answers
from seedq.service.events import WorkerListener
from seedq.service.submit import submit_file
from seedq.service.worker import GeneratorFactory, TreeWorker
from seedq.settings import Settings, mask_url
from seedq.store import migrate, reports
from seedq.store.db import Database
from seedq.store.reports import BatchSummary

log = logging.getLogger(__name__)

DEMO_FILE = Path(__file__).resolve().parents[1] / "data" / "samples" / "gsm8k_demo.jsonl"
DEMO_TASK = "gsm8k"
DEMO_LIMIT = 3
# Small trees: 2 thoughts per step, 2 steps, short generations; greedy judgements.
DEMO_SEARCH = {
    "breadth": 2,
    "depth": 2,
    "beam": 1,
    "max_new_tokens": 80,
    "eval_max_new_tokens": 12,
    "temperature": 0.7,
}
# SmolLM2-135M as the target, its int8 dynamically quantized copy drafting (on this CPU the
# best measured draft, see docs/BENCHMARKS.md), scheduled by SeeD.
DEMO_ENGINE = {"engine": "seed", "target_model": "smollm2", "draft_model": "smollm2-int8"}


@dataclass
class RunOutcome:
    batch_id: str
    queue: str
    redis: str
    database: str
    rejected: int
    summary: BatchSummary | None
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def demo_settings(settings: Settings) -> Settings:
    return settings.with_overrides(**DEMO_ENGINE)


def demo_defaults() -> SearchParams:
    return SearchParams().updated(DEMO_SEARCH)


@dataclass(frozen=True)
class RunPlan:
    """What ``seedq run`` runs: a file, its task and search defaults, on these settings."""

    settings: Settings
    path: Path
    task: str | None = None
    defaults: SearchParams | None = None
    limit: int | None = None
    skip_invalid: bool = False
    round_size: int | None = None
    engine_options: dict[str, Any] | None = None  # the batch's (seedq.service.engines)

    def describe(self) -> str:
        s = self.settings
        draft = f" + {s.draft_model}" if s.draft_model else ""
        lines = self.limit or "all"
        extra = f" {self.engine_options}" if self.engine_options else ""
        return f"{self.path} ({lines} lines), engine {s.engine}{extra} ({s.target_model}{draft})"


def demo_plan(plan: RunPlan, engine: dict[str, Any]) -> RunPlan:
    """The bundled demo, keeping whatever the user set explicitly."""
    settings = plan.settings.with_overrides(**{**DEMO_ENGINE, **engine})
    return replace(
        plan,
        settings=settings,
        path=DEMO_FILE,
        task=plan.task or DEMO_TASK,
        defaults=plan.defaults or demo_defaults(),
        limit=plan.limit or DEMO_LIMIT,
    )


def _redis(stack: ExitStack, settings: Settings, prefer_server: bool) -> tuple[Redis | None, str]:
    if redis_answers(settings.redis_url):
        return None, settings.redis_url
    embedded = stack.enter_context(EmbeddedRedis(prefer_server))
    where = f"private {embedded.kind} ({embedded.url or 'in memory'})"
    log.warning("no Redis at %s: using a %s", mask_url(settings.redis_url), where)
    return embedded.client, where


def _upgrade(settings: Settings) -> None:
    db = Database(settings.database_url)
    try:
        migrate.upgrade(db, reader_role=settings.query_role)
    finally:
        db.close()


def run_file(
    plan: RunPlan,
    factory: GeneratorFactory,
    *,
    prefer_server: bool = True,
    listeners: tuple[WorkerListener, ...] = (),
) -> RunOutcome:
    """Submit the plan's file on a private queue and run a burst worker on it until done;
    ``listeners`` hear the worker's events (the progress bar of ``seedq run``)."""
    settings = plan.settings
    with ExitStack() as stack:
        client, where = _redis(stack, settings, prefer_server)
        _upgrade(settings)
        services = open_services(settings, redis=client)
        stack.callback(services.close)
        queue_name = f"{settings.queue}-run-{secrets.token_hex(3)}"
        report = submit_file(
            services,
            plan.path,
            task=plan.task,
            defaults=plan.defaults,
            limit=plan.limit,
            skip_invalid=plan.skip_invalid,
            queue_name=queue_name,
            engine=plan.engine_options,
        )
        worker = TreeWorker(
            services, factory, queue_name=queue_name, round_size=plan.round_size,
            listeners=listeners,
        )
        worker.events.jobs_expected(report.accepted)
        worker.work(burst=True)
        db, batch = services.db, report.batch_id
        summary = reports.summarize(db, [batch])
        if summary and summary[0].done:
            services.queue(queue_name).delete(delete_jobs=False)  # the private queue is spent
        return RunOutcome(
            batch_id=batch,
            queue=queue_name,
            redis=where,
            database=db.describe(),
            rejected=len(report.rejected),
            summary=summary[0] if summary else None,
            results=list(reports.iter_results(db, batch, errors=False)),
            errors=list(reports.iter_results(db, batch, errors=True)),
        )
