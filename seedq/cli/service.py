"""Service commands: submit, worker, run, status, results, retry, cancel, workers."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import redis.exceptions

from seedq.cli import monitor
from seedq.cli.engine_flags import (
    ENGINE_OPTIONS,
    batch_engine_flags,
    engine_options,
    pop_batch_engine,
    pop_run_engine,
    run_engine_flags,
)
from seedq.cli.errors import ConfigError, remember
from seedq.cli.group import global_overrides
from seedq.cli.progress import TreeProgress
from seedq.cli.tree_flags import search_defaults, tree_flags
from seedq.report.terminal import next_steps
from seedq.service import control, present
from seedq.service.context import Services, open_services
from seedq.settings import Settings, SettingsError, mask_url
from seedq.store import reports
from seedq.store.db import StoreError
from seedq.store.rows import Rejection

SHOWN_REJECTIONS = 20


def settings_from(**overrides: Any) -> Settings:
    """SEEDQ_* settings, then the global options (--database-url ...), then ``overrides``."""
    given = {**global_overrides(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return remember(Settings.from_env().with_overrides(**given))
    except SettingsError as exc:
        raise ConfigError(str(exc)) from exc


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
        raise click.ClickException(
            f"cannot reach Redis at {mask_url(settings.redis_url)}: {exc}"
        ) from exc
    except (StoreError, control.ControlError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        services.close()


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@tree_flags
@click.option("--skip-invalid", is_flag=True, help="store bad lines as rejected, submit the rest")
@click.option("--wait", is_flag=True, help="show a progress bar until the batch is done")
@click.option("--queue", default=None, help="queue name (default SEEDQ_QUEUE)")
@batch_engine_flags
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
            echo_rejections(dataset, exc.rejections)
            raise click.ClickException(str(exc)) from exc
        echo_rejections(dataset, report.rejected, " (rejected)")
        click.echo(
            f"batch {report.batch_id}: {report.accepted} jobs queued on "
            f"{settings.queue}, {len(report.rejected)} rejected"
            + (f"; engine options {json.dumps(engine)}" if engine else ""),
            err=True,
        )
        click.echo(report.batch_id)
        if wait:
            monitor.wait_for(services, report.batch_id)


def echo_rejections(path: Path, rejections: list[Rejection], suffix: str = "") -> None:
    """The first :data:`SHOWN_REJECTIONS` bad lines, one per line, then how many more."""
    for rej in rejections[:SHOWN_REJECTIONS]:
        click.echo(f"{path}:{rej.message()}{suffix}", err=True)
    if len(rejections) > SHOWN_REJECTIONS:
        more = len(rejections) - SHOWN_REJECTIONS
        click.echo(f"{path}: ... and {more} more bad line(s)", err=True)


WATCH = click.option("--watch", is_flag=True, help="redraw every --interval seconds")
INTERVAL = click.option("--interval", type=click.FloatRange(min=0.1), default=2.0,
                        show_default=True, help="seconds between --watch frames")


@click.command()
@click.argument("batch", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--limit", type=click.IntRange(min=1), default=10, help="recent batches shown")
@WATCH
@INTERVAL
def status(batch: str | None, as_json: bool, limit: int, watch: bool, interval: float) -> None:
    """Counts per status, throughput and ETA of BATCH (default: the recent batches).
    BATCH --json is one object shaped like an OpenAI batch; --watch redraws until done."""
    if watch and as_json:
        raise click.UsageError("--watch redraws the table; leave out --json")
    settings = settings_from()
    with services_for(settings) as services:
        if as_json:
            click.echo(monitor.status_json(services, batch, limit))
        elif watch:
            def frame() -> tuple[str, bool]:
                table, notes, done = monitor.status_frame(services, batch, limit)
                return f"{table}\n{notes}", done

            monitor.watch(frame, interval)
        else:
            table, notes, _ = monitor.status_frame(services, batch, limit)
            click.echo(table)
            click.echo(notes, err=True)


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
@WATCH
@INTERVAL
def workers(as_json: bool, include_dead: bool, watch: bool, interval: float) -> None:
    """Live workers and the jobs they are running (--watch: redraw until Ctrl-C)."""
    if watch and as_json:
        raise click.UsageError("--watch redraws the table; leave out --json")
    settings = settings_from()
    with services_for(settings) as services:
        if watch:
            monitor.watch(lambda: (monitor.workers_frame(services, include_dead), False), interval)
            return
        infos = control.list_workers(services, include_dead=include_dead)
        if as_json:
            click.echo(json.dumps([w.to_json() for w in infos], indent=2))
        else:
            click.echo(present.workers_table(infos) if infos else "no live workers")


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
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="serve Prometheus metrics on this port (default SEEDQ_METRICS_PORT)")
@engine_options
def worker(
    burst: bool, round_size: int | None, queue: str | None, name: str | None,
    metrics_port: int | None, **engine: Any
) -> None:
    """Run a worker: load the models once, then build trees from the queue (one log line
    per job; -q for none, -v for more)."""
    from workers.gpu import run_worker

    settings = settings_from(queue=queue, metrics_port=metrics_port, **engine)
    try:
        done = run_worker(settings, burst=burst, round_size=round_size, name=name)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except redis.exceptions.ConnectionError as exc:
        raise click.ClickException(
            f"cannot reach Redis at {mask_url(settings.redis_url)}: {exc}"
        ) from exc
    click.echo(f"worker done: {done} job(s) completed", err=True)


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path), required=False)
@click.option("--demo", is_flag=True, help="a small bundled GSM8K batch with SmolLM2")
@tree_flags
@click.option("--skip-invalid", is_flag=True, help="store bad lines as rejected, run the rest")
@click.option("--round-size", type=click.IntRange(min=1), default=None, help="trees at once")
@run_engine_flags
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
    plan = oneshot.RunPlan(
        settings_from(**engine),
        dataset or oneshot.DEMO_FILE,
        task,
        search_defaults(options),
        limit,
        skip_invalid,
        round_size,
    )
    if demo:
        plan = oneshot.demo_plan(plan, engine)
    # the speculation flags become the batch's options, checked against the engine that runs
    plan = replace(plan, engine_options=pop_run_engine(options, plan.settings.engine))
    click.echo(f"running {plan.describe()}", err=True)
    try:
        with TreeProgress(None, "trees") as bar:  # drawn on a terminal only
            outcome = oneshot.run_file(
                plan, generator_factory(plan.settings), listeners=(bar.listener(),)
            )
    except SubmitError as exc:
        echo_rejections(plan.path, exc.rejections)
        raise click.ClickException(str(exc)) from exc
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(present.run_outcome(outcome))
    click.echo(next_steps(outcome.batch_id, _program()), err=True)


def _program() -> str:
    """How the user called seedq (``.venv/bin/seedq`` under ``make demo``)."""
    called = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("seedq")
    return str(called) if called.name == "seedq" else "seedq"


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def register(group: click.Group) -> None:
    """Add this module's commands to the ``seedq`` group."""
    for command in (submit, worker, run, status, results, retry, cancel, workers):
        group.add_command(command)
