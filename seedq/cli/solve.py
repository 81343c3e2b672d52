"""``seedq solve``: build reasoning trees for a JSONL file in-process."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from seedq.cli.engine_flags import local_decoding_options, local_engine_config, local_engine_flags
from seedq.cli.progress import TreeProgress
from seedq.cli.tree_flags import take_search, tree_flags
from seedq.decoding.config import EngineConfig
from seedq.decoding.types import GroupGenerator
from seedq.reasoning import JobSpec, JobSpecError, TreeResult, parse_job, run_tree
from seedq.report.terminal import show_result


@dataclass(frozen=True)
class LineJob:
    number: int
    spec: JobSpec


def read_jobs(handle: TextIO, task: str | None, search: dict[str, Any], limit: int | None
              ) -> Iterator[LineJob | str]:
    """Parsed jobs, or an error message naming the line (and field) for each bad line.
    ``search`` holds the command's search options: a line's own ``search`` overrides them."""
    seen = 0
    for number, raw in enumerate(handle, 1):
        if not raw.strip():
            continue
        seen += 1
        if limit is not None and seen > limit:
            return
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield f"line {number}: invalid JSON: {exc.msg} (column {exc.colno})"
            continue
        if search and isinstance(line, dict) and isinstance(line.get("search", {}), dict):
            line = {**line, "search": {**search, **line.get("search", {})}}
        try:
            yield LineJob(number, parse_job(line, default_task=task))
        except JobSpecError as exc:
            yield f"line {number}: {exc}"


def open_generator(config: EngineConfig) -> GroupGenerator:
    """The engine of ``config`` (kept apart so tests can substitute a scripted one)."""
    try:
        from seedq.decoding.factory import load_generator
    except ImportError as exc:
        raise click.ClickException(f"the decoding engines are not available: {exc}") from exc
    return load_generator(config, local_decoding_options())


async def close_generator(generator: GroupGenerator) -> None:
    close = getattr(generator, "close", None)
    if callable(close):
        result = close()
        if inspect.isawaitable(result):
            await result


def summary(number: int, result: TreeResult) -> str:
    name = result.custom_id or f"line {number}"
    wall = result.metrics.get("wall_seconds", 0.0)
    return (f"{name}\t{result.task}\tanswer={result.answer!r}\tcorrect={result.correct}\t"
            f"nodes={len(result.tree.nodes)}\t{wall:.1f}s")


async def run_jobs(jobs: list[LineJob], generator: GroupGenerator, as_json: bool,
                   show: bool = False) -> int:
    """Run the trees one after another, printing each result (and with ``show`` its tree,
    on stderr under ``--json``); the number that failed."""
    failed = 0
    bar = TreeProgress(len(jobs), "trees").start()  # drawn on a terminal only
    counted = bar.counting(generator)
    try:
        for job in jobs:
            try:
                result = await run_tree(job.spec, counted)
            except Exception as exc:  # one broken tree must not stop the others
                failed += 1
                click.echo(f"line {job.number}: tree failed: {type(exc).__name__}: {exc}", err=True)
                continue
            finally:
                bar.advance()
            bar.echo(json.dumps(result.to_json(), ensure_ascii=False) if as_json
                     else summary(job.number, result))
            if show:
                show_result(result.to_json(), err=as_json)
    finally:
        bar.stop()
        await close_generator(generator)
    return failed


@click.command("solve")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@tree_flags
@local_engine_flags
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tree.")
@click.option("--show", is_flag=True,
              help="Also draw each tree in the terminal (as `seedq show` does).")
def solve(file: Path, task: str | None, limit: int | None, as_json: bool, show: bool,
          **options: Any) -> None:
    """Build one reasoning tree per line of FILE (JSONL) and print the results.

    Bad lines are reported on stderr with their line number and field; the other lines
    still run, and the exit code is 1 at the end.
    """
    search = take_search(options)
    config = local_engine_config(options)  # checked before any line runs
    with file.open(encoding="utf-8") as handle:
        items = list(read_jobs(handle, task, search, limit))
    errors = [item for item in items if isinstance(item, str)]
    jobs = [item for item in items if isinstance(item, LineJob)]
    for message in errors:
        click.echo(message, err=True)
    failed = 0
    if jobs:
        generator = open_generator(config)
        failed = asyncio.run(run_jobs(jobs, generator, as_json, show))
    if errors or failed:
        raise click.exceptions.Exit(1)


def register(group: click.Group) -> None:
    """Add this module's commands to the ``seedq`` group."""
    group.add_command(solve)
