"""The ``seedq`` command line. Each submodule registers its own commands."""

from __future__ import annotations

import click

from seedq import __version__, redact
from seedq.cli import database, generate, service, show, solve
from seedq.cli.group import OVERRIDES_KEY, SeedqGroup, start_logging


@click.group(cls=SeedqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="seedq")
@click.option("-v", "--verbose", count=True, help="More logging (also after the command).")
@click.option("-q", "--quiet", count=True, help="Less logging (also after the command).")
@click.option("--database-url", default=None, metavar="URL",
              help="The database (default SEEDQ_DATABASE_URL, else a per-user SQLite file).")
@click.option("--redis-url", default=None, metavar="URL",
              help="The Redis of the queue (default SEEDQ_REDIS_URL).")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int, database_url: str | None,
         redis_url: str | None) -> None:
    """seedq: reasoning trees built fast with SeeD scheduled speculative decoding.

    Shell completion: eval "$(_SEEDQ_COMPLETE=bash_source seedq)" (zsh_source, fish_source).
    """
    redact.install([database_url, redis_url])  # no URL password in any message or log
    start_logging(ctx, verbose, quiet)  # workers: one INFO line per job; others: warnings
    ctx.meta[OVERRIDES_KEY] = {"database_url": database_url, "redis_url": redis_url}


for _module in (generate, solve, service, database, show):
    _module.register(main)
