"""``seedq show`` (a batch's trees in the terminal) and ``seedq report`` (one self-contained
HTML file). Both only read the SQL store; no Redis needed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from seedq.cli.service import settings_from
from seedq.store import migrate, reports
from seedq.store.db import Database, StoreError
from seedq.store.trees import DEFAULT_MAX_TREES, batch_trees

MAX_TREES = click.IntRange(min=1)


@contextmanager
def open_store() -> Iterator[Database]:
    """The configured database (``--database-url``, SEEDQ_DATABASE_URL), schema checked;
    store errors become one-line messages."""
    db = Database(settings_from().database_url)
    try:
        migrate.ensure_current(db)
        yield db
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.close()


def _need_batch(db: Database, batch: str) -> None:
    if not reports.batch_exists(db, batch):
        raise click.ClickException(f"no batch {batch!r}")


@click.command()
@click.argument("batch")
@click.argument("custom_id", required=False)
@click.option("--max-trees", type=MAX_TREES, default=DEFAULT_MAX_TREES, show_default=True,
              help="trees shown at most")
def show(batch: str, custom_id: str | None, max_trees: int) -> None:
    """The trees of BATCH (only CUSTOM_ID's when given) in the terminal, under the models
    that served it: node id, kept marker, score, failure, thought snippet, seconds, tokens
    and acceptance per node."""
    from seedq.report.terminal import models_line, print_trees
    from seedq.store.analytics import batch_models

    with open_store() as db:
        _need_batch(db, batch)
        found = batch_trees(db, batch, custom_id, max_trees=max_trees)
        models = batch_models(db, batch)
    if not found:
        raise click.ClickException(f"no job {custom_id!r} in batch {batch!r}")
    print_trees(found, header=models_line(batch, models))


@click.command()
@click.argument("batch")
@click.option("--vs", "others", multiple=True, metavar="BATCH",
              help="compare with this batch (repeatable); speedups are over BATCH")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("report.html"), show_default=True, help="the HTML file written")
@click.option("--max-trees", type=MAX_TREES, default=DEFAULT_MAX_TREES, show_default=True,
              help="trees of BATCH shown at most")
def report(batch: str, others: tuple[str, ...], output: Path, max_trees: int) -> None:
    """One self-contained HTML file (works offline) about BATCH: summary, plots, every tree
    as a collapsible view and, with --vs, the time per tree and speedup table."""
    from seedq.report.html import ReportError, write_report

    with open_store() as db:
        try:
            data = write_report(db, batch, output, others, max_trees=max_trees)
        except ReportError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {output} ({len(data.trees)} tree(s), {len(data.batch_ids)} batch(es))",
               err=True)


def register(group: click.Group) -> None:
    """Add this module's commands to the ``seedq`` group."""
    group.add_command(show)
    group.add_command(report)
