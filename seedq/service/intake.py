"""Bounded, line-by-line reading of a submitted JSONL file.

The file is read in binary, one capped ``readline`` at a time, so neither a huge line nor an
endless stream (``/dev/zero``) can exhaust memory. Each line is checked before and while it
is parsed: its size (``SEEDQ_MAX_LINE_BYTES``), its nesting depth (``SEEDQ_MAX_JSON_DEPTH``,
counted before ``json.loads`` so that no RecursionError can happen), the size of its numbers
(63-bit integers, finite floats, no NaN/Infinity) and its text (no NUL character and no lone
UTF-16 surrogate: PostgreSQL cannot store them and SQLite would keep what PostgreSQL refuses,
so both refuse them alike). A bad line becomes a :class:`LineProblem`, never an exception.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20
MAX_INT_DIGITS = 19
INT_LIMIT = 2**63
SKIP_FACTOR = 64  # an over-long line longer than this many caps ends the reading
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.?)*(?:"|$)')  # never backtracks: linear
_BRACKETS = re.compile(rb"[\[\]{}]")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


class FileProblem(ValueError):
    """The file as a whole cannot be read as JSONL (the message names the line)."""


@dataclass(frozen=True)
class LineProblem:
    """A line refused before validation: its number, why, and (a prefix of) its text."""

    line_no: int
    reason: str
    raw: str


@dataclass(frozen=True)
class Limits:
    max_line_bytes: int = 1_048_576
    max_json_depth: int = 32


def iter_lines(
    path: Path, limits: Limits, limit: int | None = None
) -> Iterator[tuple[int, str | LineProblem]]:
    """The non-blank lines of ``path`` with their 1-based numbers, as text, or as a
    :class:`LineProblem` when too long. Raises :class:`FileProblem` for a missing,
    unreadable, binary (NUL byte) or non-UTF-8 file, and when nothing is in it."""
    try:
        handle = path.open("rb")
    except FileNotFoundError as exc:
        raise FileProblem(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise FileProblem(f"{path}: is a directory, not a JSONL file") from exc
    except OSError as exc:
        raise FileProblem(f"{path}: cannot read ({exc.strerror or exc})") from exc
    with handle:
        yield from _lines(path, handle, limits, limit)


def _lines(
    path: Path, handle: IO[bytes], limits: Limits, limit: int | None
) -> Iterator[tuple[int, str | LineProblem]]:
    head = handle.peek(8192)[:8192] if isinstance(handle, io.BufferedReader) else b""
    if b"\x00" in head:  # a binary file fails as such, whatever comes first
        where = head.count(b"\n", 0, head.index(0)) + 1
        raise FileProblem(f"{path}: binary file (NUL byte on line {where}), expected JSONL text")
    cap, seen, line_no = limits.max_line_bytes, 0, 0
    while limit is None or seen < limit:
        try:
            data = handle.readline(cap + 1)
        except OSError as exc:
            raise FileProblem(f"{path}: cannot read ({exc.strerror or exc})") from exc
        if not data:
            break
        line_no += 1
        if b"\x00" in data:
            raise FileProblem(
                f"{path}: binary file (NUL byte on line {line_no}), expected JSONL text"
            )
        if len(data) > cap and not data.endswith(b"\n"):
            _skip_rest(path, handle, cap, line_no)
            seen += 1
            yield line_no, LineProblem(
                line_no, f"line longer than {cap} bytes (SEEDQ_MAX_LINE_BYTES)", ""
            )
            continue
        text = _decode(path, data, line_no)
        if text.strip():
            seen += 1
            yield line_no, text.rstrip("\r\n")
    if line_no == 0 or seen == 0:
        raise FileProblem(f"{path}: empty file, no jobs to submit")


def _skip_rest(path: Path, handle: IO[bytes], cap: int, line_no: int) -> None:
    skipped = cap
    while True:
        chunk = handle.readline(CHUNK)
        if not chunk or chunk.endswith(b"\n"):
            return
        if b"\x00" in chunk:
            raise FileProblem(
                f"{path}: binary file (NUL byte on line {line_no}), expected JSONL text"
            )
        skipped += len(chunk)
        if skipped > SKIP_FACTOR * cap:
            raise FileProblem(
                f"{path}: line {line_no} runs past {SKIP_FACTOR * cap} bytes without a "
                "newline; not a JSONL file"
            )


def _decode(path: Path, data: bytes, line_no: int) -> str:
    try:
        return data.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"{path}: not UTF-8 text (bad byte on line {line_no})") from exc


# ---- one line ----------------------------------------------------------------------------


class _Refused(ValueError):
    pass


def json_depth(data: bytes) -> int:
    """The deepest bracket nesting of a JSON text (strings ignored), without parsing it."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b'""', data)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS or not -INT_LIMIT < int(text) < INT_LIMIT:
        shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"
        raise _Refused(f"integer {shown} is out of range (63-bit integers at most)")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 24 else f"{text[:20]}..."
        raise _Refused(f"number {shown} is out of range (a 64-bit float at most)")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def load_line(text: str, limits: Limits) -> Any:
    """``json.loads`` with the checks of the module docstring; raises ``ValueError`` with a
    clear reason (``json.JSONDecodeError`` for malformed JSON)."""
    depth = json_depth(text.encode("utf-8", "surrogatepass"))
    if depth > limits.max_json_depth:
        raise _Refused(
            f"JSON nested {depth} levels deep, more than {limits.max_json_depth} "
            "(SEEDQ_MAX_JSON_DEPTH)"
        )
    try:
        obj = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
        )
    except RecursionError as exc:  # cannot happen after the depth check; kept as a guard
        raise _Refused("JSON nested too deeply") from exc
    bad = unstorable(obj)
    if bad is not None:
        raise _Refused(bad)
    return obj


def unstorable(value: Any, where: str = "") -> str | None:
    """Why ``value`` holds text a database cannot keep (NUL, lone surrogate), else None."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where or 'text'}: contains a NUL character (\\u0000), which cannot be stored"
        if _LONE_SURROGATE.search(value):
            return f"{where or 'text'}: contains a lone UTF-16 surrogate, which is not valid text"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unstorable(key, where or "key") or unstorable(item, _join(where, key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unstorable(item, f"{where}[{index}]")
            if found:
                return found
    return None


def _join(where: str, key: str) -> str:
    shown = key if len(key) <= 40 and unstorable(key) is None else "?"
    return f"{where}.{shown}" if where else shown


# ---- tree shape --------------------------------------------------------------------------


def draft_tree_nodes(engine: dict[str, Any] | None) -> int:
    """Tokens drafted per sequence and verify step by a batch's engine options (1: none)."""
    engine = engine or {}
    k_config = engine.get("k_config")
    if k_config:
        total, width = 0, 1
        for k in k_config:
            width *= int(k)
            total += width
        return total
    return int(engine.get("gamma") or 1)


def engine_problem(engine: dict[str, Any] | None, max_draft_tree: int) -> str | None:
    """Why a batch's draft tree is too large to run, else None."""
    nodes = draft_tree_nodes(engine)
    if engine and engine.get("k_config") and nodes > max_draft_tree:
        shown = ",".join(str(k) for k in engine["k_config"])
        size = str(nodes) if nodes < 10**12 else f"about 10^{len(str(nodes)) - 1}"
        return (
            f"--k-config {shown}: a draft tree of {size} nodes, more than {max_draft_tree} "
            "(SEEDQ_MAX_DRAFT_TREE)"
        )
    return None


def shape_problem(search: Any, draft_nodes: int, max_nodes: int) -> str | None:
    """Why a tree (breadth x beam x depth thoughts, each drafting ``draft_nodes``) is too
    large, else None."""
    product = search.breadth * search.beam * search.depth * draft_nodes
    if product <= max_nodes:
        return None
    return (
        f"tree too large: breadth {search.breadth} x beam {search.beam} x depth "
        f"{search.depth} x draft tree {draft_nodes} = {product}, more than {max_nodes} "
        "(SEEDQ_MAX_TREE_NODES)"
    )
