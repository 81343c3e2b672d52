"""Where ``seedq query`` reads its statement: the argument, ``-f FILE`` or stdin.

``seedq query "$(cat my.sql)"`` works even when the file starts with a ``--`` comment (the
command takes unknown option-like words as the statement), and so do ``seedq query -f my.sql``,
``seedq query - < my.sql`` and ``cat my.sql | seedq query``.
"""

from __future__ import annotations

import sys
from typing import TextIO

import click

QUERY_CONTEXT = {"ignore_unknown_options": True}  # "-- comment\nSELECT ..." is the SQL


def read_sql(sql: str | None, file: TextIO | None) -> str:
    """The statement to run; a usage error when none or two are given."""
    if file is not None and sql is not None:
        raise click.UsageError("give the SQL as an argument or with -f FILE, not both")
    if file is not None:
        return file.read()
    if sql == "-" or (sql is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    if sql is None:
        raise click.UsageError("give the SQL as an argument, with -f FILE, or on stdin")
    return sql
