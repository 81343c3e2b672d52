"""Database commands: query (read-only SQL as the reader role) and db (the schema)."""

from __future__ import annotations

import os
import sys
from typing import TextIO

import click

from seedq.cli.query_in import QUERY_CONTEXT, read_sql
from seedq.cli.service import settings_from
from seedq.store import migrate, reader, readonly
from seedq.store.db import Database, StoreError


@click.command(context_settings=QUERY_CONTEXT)
@click.argument("sql", required=False)
@click.option("-f", "--file", "sql_file", type=click.File("r", encoding="utf-8"), default=None,
              help="read the SQL from FILE ('-': stdin; also read when piped)")
@click.option("--csv", "fmt", flag_value="csv", help="CSV output")
@click.option("--json", "fmt", flag_value="json", help="JSON output")
@click.option("--max-rows", type=click.IntRange(min=1), default=10_000, help="rows shown")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.001),
    default=None,
    help="seconds before the statement is stopped (default SEEDQ_QUERY_TIMEOUT)",
)
def query(
    sql: str | None, sql_file: TextIO | None, fmt: str | None, max_rows: int,
    timeout: float | None,
) -> None:
    """Run one read-only SQL statement as the reader role (writes, server files, programs
    and admin functions are refused by the database); rows stream to the output."""
    from seedq.cli.query_out import write_rows

    sql = read_sql(sql, sql_file)
    settings = settings_from()
    try:
        with readonly.stream_readonly(
            settings.database_url,
            sql,
            query_url=settings.query_database_url,
            role=settings.query_role,
            timeout=timeout or settings.query_timeout,
        ) as res:
            out = sys.stdout
            truncated = write_rows(out, fmt, res.columns, res.rows, max_rows)
            out.flush()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except BrokenPipeError:  # `seedq query ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if truncated:
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
        revision = migrate.upgrade(database, reader_role=None)
        click.echo(f"{database.describe()}: schema at revision {revision}")
        if database.dialect == "postgresql":
            status = reader.ensure_reader(database, settings.query_role)
            click.echo(status.message, err=not status.ready)
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


def register(group: click.Group) -> None:
    """Add this module's commands to the ``seedq`` group."""
    for command in (query, db):
        group.add_command(command)
