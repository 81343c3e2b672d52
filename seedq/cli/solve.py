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

from seedq.decoding.config import DTYPES, ENGINES, EngineConfig
from seedq.decoding.types import DecodingError, GroupGenerator
from seedq.reasoning import TASK_NAMES, JobSpec, JobSpecError, TreeResult, parse_job, run_tree
from seedq.reasoning.params import EVALUATORS, GENERATORS, SEARCHES

SEARCH_OPTIONS = ("breadth", "depth", "beam", "search", "generator", "evaluator",
                  "max_new_tokens", "temperature")


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
    return load_generator(config)


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


async def run_jobs(jobs: list[LineJob], generator: GroupGenerator, as_json: bool) -> int:
    """Run the trees one after another, printing each result; the number that failed."""
    failed = 0
    try:
        for job in jobs:
            try:
                result = await run_tree(job.spec, generator)
            except Exception as exc:  # one broken tree must not stop the others
                failed += 1
                click.echo(f"line {job.number}: tree failed: {type(exc).__name__}: {exc}", err=True)
                continue
            click.echo(json.dumps(result.to_json(), ensure_ascii=False) if as_json
                       else summary(job.number, result))
    finally:
        await close_generator(generator)
    return failed


def _engine_config(options: dict[str, Any]) -> EngineConfig:
    k_config: tuple[int, ...] = ()
    if options["k_config"]:
        try:
            k_config = tuple(int(k) for k in options["k_config"].split(","))
        except ValueError:
            raise click.BadParameter("must be integers separated by commas, e.g. 2,1,1",
                                     param_hint="--k-config") from None
    try:
        return EngineConfig(
            engine=options["engine"], target=options["target"], draft=options["draft"],
            device=options["device"], dtype=options["dtype"], gamma=options["gamma"],
            k_config=k_config, verify_batch=options["verify_batch"],
        )
    except DecodingError as exc:
        raise click.UsageError(str(exc)) from exc


@click.command("solve")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", type=click.Choice(TASK_NAMES), help="Task of lines without 'task'.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first K lines.")
@click.option("--engine", type=click.Choice(ENGINES), default="ar", show_default=True)
@click.option("--target", default="smollm2", show_default=True, help="Target model.")
@click.option("--draft", default=None, help="Draft model (sd, mcsd, seed).")
@click.option("--gamma", type=int, default=4, show_default=True, help="Chain draft length.")
@click.option("--k-config", default="", help="Tree draft, e.g. 2,1,1.")
@click.option("--verify-batch", type=int, default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--breadth", type=int, help="Thoughts per expanded node.")
@click.option("--depth", type=int, help="Steps of the tree.")
@click.option("--beam", type=int, help="States kept per depth (bfs).")
@click.option("--search", type=click.Choice(SEARCHES))
@click.option("--generator", type=click.Choice(GENERATORS))
@click.option("--evaluator", type=click.Choice(EVALUATORS))
@click.option("--max-new-tokens", type=int, help="Token budget of a thought.")
@click.option("--temperature", type=float, help="Sampling temperature of thoughts and votes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tree.")
def solve(file: Path, task: str | None, limit: int | None, as_json: bool,
          **options: Any) -> None:
    """Build one reasoning tree per line of FILE (JSONL) and print the results.

    Bad lines are reported on stderr with their line number and field; the other lines
    still run, and the exit code is 1 at the end.
    """
    search = {name: options.pop(name) for name in SEARCH_OPTIONS}
    search = {name: value for name, value in search.items() if value is not None}
    with file.open(encoding="utf-8") as handle:
        items = list(read_jobs(handle, task, search, limit))
    errors = [item for item in items if isinstance(item, str)]
    jobs = [item for item in items if isinstance(item, LineJob)]
    for message in errors:
        click.echo(message, err=True)
    failed = 0
    if jobs:
        generator = open_generator(_engine_config(options))
        failed = asyncio.run(run_jobs(jobs, generator, as_json))
    if errors or failed:
        raise click.exceptions.Exit(1)


def register(group: click.Group) -> None:
    """Add this module's commands to the ``seedq`` group."""
    group.add_command(solve)
