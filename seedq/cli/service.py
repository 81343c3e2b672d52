"""Service commands: submit, worker, run, status, results, retry, cancel, workers, query, db."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import click
import redis.exceptions

from seedq.cli.engine_flags import (
    ENGINE_OPTIONS,
    batch_engine_flags,
    engine_options,
    pop_batch_engine,
    pop_run_engine,
    speculation_flags,
)
from seedq.queue import pending_count
from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.params import SearchParams
from seedq.service import control, present
from seedq.service.context import Services, open_services
from seedq.settings import Settings, SettingsError
from seedq.store import migrate, readonly, reports
from seedq.store.db import Database, StoreError

F = TypeVar("F", bound=Callable[..., Any])
SEARCH_FIELDS = {f.name: f.default for f in fields(SearchParams)}


def search_options(func: F) -> F:
    """One ``--<name>`` option per SearchParams field: defaults for every line of the file."""
    for name, default in reversed(list(SEARCH_FIELDS.items())):
        kind = type(default) if isinstance(default, str | float) else int
        flag = "--" + name.replace("_", "-")
        func = click.option(
            flag, name, type=kind, default=None, help=f"search default {name} (built-in: {default})"
        )(func)
    return func


def search_defaults(options: dict[str, Any]) -> SearchParams | None:
    given = {k: v for k, v in options.items() if k in SEARCH_FIELDS and v is not None}
    if not given:
        return None
    try:
        return SearchParams().updated(given)
    except JobSpecError as exc:
        flag = "--" + exc.field.removeprefix("search.").replace("_", "-")
        raise click.BadParameter(exc.reason, param_hint=flag) from exc


def settings_from(**overrides: Any) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def services_for(settings: Settings, *, check_schema: bool = True) -> Iterator[Services]:
    """Open the database and Redis, turning their errors into clear messages."""
    try:
        services = open_services(settings, check_schema=check_schema)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield services
    except redis.exceptions.ConnectionError as exc:
        raise click.ClickException(f"cannot reach Redis at {settings.redis_url}: {exc}") from exc
    except (StoreError, control.ControlError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        services.close()


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--task", default=None, help="task of lines without a 'task' field")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="first K lines only")
@click.option("--skip-invalid", is_flag=True, help="store bad lines as rejected, submit the rest")
@click.option("--wait", is_flag=True, help="show a progress bar until the batch is done")
@click.option("--queue", default=None, help="queue name (default SEEDQ_QUEUE)")
@batch_engine_flags
@search_options
def submit(
    dataset: Path,
    task: str | None,
    limit: int | None,
    skip_invalid: bool,
    wait: bool,
    queue: str | None,
    **options: Any,
) -> None:
    """Validate every line of DATASET (JSONL), store it as a batch and enqueue its jobs."""
    from seedq.service.submit import SubmitError, submit_file

    settings = settings_from(queue=queue)
    engine = pop_batch_engine(options)
    defaults = search_defaults(options)
    with services_for(settings) as services:
        try:
            report = submit_file(
                services,
                dataset,
                task=task,
                defaults=defaults,
                limit=limit,
                skip_invalid=skip_invalid,
                engine=engine,
            )
        except SubmitError as exc:
            for rej in exc.rejections:
                click.echo(f"{dataset}:{rej.message()}", err=True)
            raise click.ClickException(str(exc)) from exc
        for rej in report.rejected:
            click.echo(f"{dataset}:{rej.message()} (rejected)", err=True)
        click.echo(
            f"batch {report.batch_id}: {report.accepted} jobs queued on "
            f"{settings.queue}, {len(report.rejected)} rejected"
            + (f"; engine options {json.dumps(engine)}" if engine else ""),
            err=True,
        )
        click.echo(report.batch_id)
        if wait:
            wait_for(services, report.batch_id)


def wait_for(services: Services, batch_id: str, poll: float = 1.0) -> None:
    """A progress bar over finished jobs until the batch is done."""
    summary = reports.summarize(services.db, [batch_id])[0]
    total = summary.total - summary.counts.get("rejected", 0)
    with click.progressbar(length=total, label=batch_id, file=sys.stderr) as bar:
        shown = 0
        while True:
            summary = reports.summarize(services.db, [batch_id])[0]
            finished = total - summary.remaining
            bar.update(finished - shown)
            shown = finished
            if summary.done:
                break
            time.sleep(poll)
    click.echo(present.status_table([summary]), err=True)


@click.command()
@click.argument("batch", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--limit", type=click.IntRange(min=1), default=10, help="recent batches shown")
def status(batch: str | None, as_json: bool, limit: int) -> None:
    """Counts per status, throughput and ETA of BATCH (default: the recent batches)."""
    settings = settings_from()
    with services_for(settings) as services:
        ids = [batch] if batch else reports.recent_batch_ids(services.db, limit)
        summaries = reports.summarize(services.db, ids)
        if batch and not summaries:
            raise click.ClickException(f"no batch {batch!r}")
        if as_json:
            click.echo(json.dumps([s.to_json() for s in summaries], indent=2))
            return
        click.echo(present.status_table(summaries) if summaries else "no batches yet")
        for name in sorted({s.queue for s in summaries} or {settings.queue}):
            waiting = pending_count(services.queue(name))
            click.echo(f"queue {name}: {waiting} waiting", err=True)
        alive = control.list_workers(services)
        click.echo(f"{len(alive)} live worker(s)", err=True)


@click.command()
@click.argument("batch")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="write to FILE instead of stdout",
)
@click.option("--errors", is_flag=True, help="failed, cancelled and rejected jobs instead")
def results(batch: str, output: Path | None, errors: bool) -> None:
    """One JSON line per job of BATCH, keyed by custom_id, with its tree."""
    settings = settings_from()
    with services_for(settings) as services:
        if not reports.batch_exists(services.db, batch):
            raise click.ClickException(f"no batch {batch!r}")
        out = output.open("w", encoding="utf-8") if output else sys.stdout
        try:
            n = 0
            for record in reports.iter_results(services.db, batch, errors=errors):
                out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                n += 1
        finally:
            if output:
                out.close()
        click.echo(f"{n} {'error' if errors else 'result'} line(s)", err=True)


@click.command()
@click.argument("batch", required=False)
@click.option("--job", "job_id", default=None, help="retry this one job instead")
def retry(batch: str | None, job_id: str | None) -> None:
    """Queue the failed and cancelled jobs of BATCH (or --job ID) again."""
    if (batch is None) == (job_id is None):
        raise click.UsageError("give a BATCH or --job ID (not both)")
    settings = settings_from()
    with services_for(settings) as services:
        n = control.retry(services, batch_id=batch, job_id=job_id)
        click.echo(f"{n} job(s) queued again")


@click.command()
@click.argument("batch")
def cancel(batch: str) -> None:
    """Cancel the queued and running jobs of BATCH."""
    settings = settings_from()
    with services_for(settings) as services:
        n = control.cancel_batch(services, batch)
        click.echo(f"{n} job(s) cancelled (running ones stop at their next heartbeat)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--all", "include_dead", is_flag=True, help="include workers that stopped beating")
def workers(as_json: bool, include_dead: bool) -> None:
    """Live workers and the jobs they are running."""
    settings = settings_from()
    with services_for(settings) as services:
        infos = control.list_workers(services, include_dead=include_dead)
        if as_json:
            click.echo(json.dumps([w.to_json() for w in infos], indent=2))
        else:
            click.echo(present.workers_table(infos) if infos else "no live workers")


@click.command()
@click.argument("sql")
@click.option("--csv", "fmt", flag_value="csv", help="CSV output")
@click.option("--json", "fmt", flag_value="json", help="JSON output")
@click.option("--max-rows", type=click.IntRange(min=1), default=10_000)
def query(sql: str, fmt: str | None, max_rows: int) -> None:
    """Run one read-only SQL statement (writes are refused by the database)."""
    settings = settings_from()
    try:
        res = readonly.run_readonly(settings.database_url, sql, max_rows=max_rows)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if fmt == "csv":
        click.echo(present.as_csv(res.columns, res.rows), nl=False)
    elif fmt == "json":
        click.echo(present.as_json(res.columns, res.rows))
    else:
        click.echo(present.table(res.columns, res.rows))
    if res.truncated:
        click.echo(f"(first {max_rows} rows only)", err=True)


@click.group()
def db() -> None:
    """Database schema."""


@db.command()
def upgrade() -> None:
    """Create or migrate the database schema to the latest revision."""
    settings = settings_from()
    database = Database(settings.database_url)
    try:
        revision = migrate.upgrade(database)
        click.echo(f"{database.describe()}: schema at revision {revision}")
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        database.close()


@db.command()
def current() -> None:
    """Show the schema revision of the database and the one this seedq needs."""
    settings = settings_from()
    database = Database(settings.database_url)
    try:
        click.echo(
            f"{database.describe()}: at {migrate.current_revision(database)}, "
            f"needs {migrate.head_revision()}"
        )
    finally:
        database.close()


@click.command()
@click.option("--burst", is_flag=True, help="exit when the queue is empty")
@click.option(
    "--round-size",
    type=click.IntRange(min=1),
    default=None,
    help="trees run at once (default SEEDQ_ROUND_SIZE)",
)
@click.option("--queue", default=None, help="queue name (default SEEDQ_QUEUE)")
@click.option("--name", default=None, help="worker name (default host.pid.random)")
@engine_options
def worker(
    burst: bool, round_size: int | None, queue: str | None, name: str | None, **engine: Any
) -> None:
    """Run a worker: load the models once, then build trees from the queue."""
    from workers.gpu import run_worker

    settings = settings_from(queue=queue, **engine)
    try:
        done = run_worker(settings, burst=burst, round_size=round_size, name=name)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except redis.exceptions.ConnectionError as exc:
        raise click.ClickException(f"cannot reach Redis at {settings.redis_url}: {exc}") from exc
    click.echo(f"worker done: {done} job(s) completed", err=True)


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path), required=False)
@click.option("--demo", is_flag=True, help="a small bundled GSM8K batch with SmolLM2")
@click.option("--task", default=None, help="task of lines without a 'task' field")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="first K lines only")
@click.option("--skip-invalid", is_flag=True, help="store bad lines as rejected, run the rest")
@click.option("--round-size", type=click.IntRange(min=1), default=None, help="trees at once")
@engine_options
@speculation_flags
@search_options
def run(
    dataset: Path | None,
    demo: bool,
    task: str | None,
    limit: int | None,
    skip_invalid: bool,
    round_size: int | None,
    **options: Any,
) -> None:
    """Submit DATASET and work it off in this process, then show the results."""
    from seedq.service import oneshot
    from seedq.service.submit import SubmitError
    from workers.gpu import generator_factory

    if demo == (dataset is not None):
        raise click.UsageError("give a DATASET or --demo")
    engine = _given({k: options.pop(k) for k in ENGINE_OPTIONS})
    batch_engine = pop_run_engine(options, engine.get("engine"))
    plan = oneshot.RunPlan(
        settings_from(**engine),
        dataset or oneshot.DEMO_FILE,
        task,
        search_defaults(options),
        limit,
        skip_invalid,
        round_size,
        batch_engine,
    )
    if demo:
        plan = oneshot.demo_plan(plan, engine)
    click.echo(f"running {plan.describe()}", err=True)
    try:
        outcome = oneshot.run_file(plan, generator_factory(plan.settings))
    except SubmitError as exc:
        for rej in exc.rejections:
            click.echo(f"{plan.path}:{rej.message()}", err=True)
        raise click.ClickException(str(exc)) from exc
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(present.run_outcome(outcome))


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def register(group: click.Group) -> None:
    """Add this module's commands to the ``seedq`` group."""
    for command in (submit, worker, run, status, results, retry, cancel, workers, query, db):
        group.add_command(command)
