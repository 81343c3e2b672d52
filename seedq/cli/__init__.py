"""The ``seedq`` command line. Each submodule registers its own commands."""

from __future__ import annotations

import logging

import click

from seedq.cli import generate, service, solve


@click.group()
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """seedq: reasoning trees built fast with SeeD scheduled speculative decoding."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _module in (generate, solve, service):
    _module.register(main)
