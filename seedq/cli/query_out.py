"""``seedq query`` output, written as the rows arrive (bounded memory, any result size).

CSV and JSON stream row by row. The table aligns its columns on the first
:data:`TABLE_WINDOW` rows and keeps those widths for the rest (a wider cell just pushes its
line to the right), so it streams too.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from seedq.service.present import _cell, _jsonable

TABLE_WINDOW = 1000


def write_rows(
    out: TextIO, fmt: str | None, columns: list[str], rows: Iterator[Sequence[Any]], limit: int
) -> bool:
    """Write at most ``limit`` rows in ``fmt`` (csv, json, else a table); True when more
    rows were left unread."""
    head = itertools.islice(rows, limit)
    if fmt == "csv":
        _csv(out, columns, head)
    elif fmt == "json":
        _json(out, columns, head)
    else:
        _table(out, columns, head)
    return next(rows, None) is not None


def _csv(out: TextIO, columns: list[str], rows: Iterator[Sequence[Any]]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            [json.dumps(v) if isinstance(v, dict | list) else _jsonable(v) for v in row]
        )


def _json(out: TextIO, columns: list[str], rows: Iterator[Sequence[Any]]) -> None:
    first = True
    for row in rows:
        record = {c: _jsonable(v) for c, v in zip(columns, row, strict=True)}
        text = json.dumps(record, indent=2, ensure_ascii=False, default=str)
        out.write(("[\n" if first else ",\n") + "\n".join("  " + ln for ln in text.splitlines()))
        first = False
    out.write("[]\n" if first else "\n]\n")


def _table(out: TextIO, columns: list[str], rows: Iterator[Sequence[Any]]) -> None:
    window = [[_cell(v) for v in row] for row in itertools.islice(rows, TABLE_WINDOW)]
    widths = [len(c) for c in columns]
    for cells in window:
        widths = [max(w, len(v)) for w, v in zip(widths, cells, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() + "\n"

    out.write(line(columns))
    out.write("  ".join("-" * w for w in widths) + "\n")
    for cells in window:
        out.write(line(cells))
    for row in rows:
        out.write(line([_cell(v) for v in row]))
