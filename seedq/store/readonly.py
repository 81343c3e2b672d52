"""``seedq query``: run one SQL statement that cannot write, enforced by the database itself.

SQLite: the file is opened ``mode=ro`` with ``PRAGMA query_only`` and an authorizer that only
allows reads; a progress handler stops the statement at its deadline.

PostgreSQL: the query logs in as a reader role, never as the service's own role: the login of
``SEEDQ_QUERY_DATABASE_URL``, else the database URL with its user replaced by
``SEEDQ_QUERY_ROLE`` (``seedq_reader``, created and granted SELECT by ``seedq db upgrade``)
and no password. A role that could do more than read (superuser, replication, server-file or
signal privileges, writes on seedq's tables) is refused before anything runs: server-side
files and programs, other sessions and the configuration stay out of reach whatever the SQL.
The statement runs in a ``READ ONLY`` transaction with a statement timeout, as one prepared
statement (so ``COMMIT; DROP ...`` cannot smuggle in a second command).

Both stream their rows: the caller iterates :attr:`QueryStream.rows` and memory stays bounded
whatever the size of the result.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy.engine import URL

from seedq.store.db import StoreError, normalize_url, sqlite_file
from seedq.store.reader import ROLE_CHECK_SQL, check_role_name, reasons_from_row

ALLOWED_SQLITE_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
DEFAULT_TIMEOUT = 60.0
DEFAULT_ROLE = "seedq_reader"
SQLITE_PROGRESS_STEPS = 10_000
STREAM_CHUNK = 500


class ReadOnlyViolation(StoreError):
    """The statement tried to change something; nothing was changed."""


class QueryError(StoreError):
    """The statement is not valid SQL for this database (the database's message follows)."""


class QueryTimeout(QueryError):
    """The statement ran past its time limit and was stopped."""


class QueryRefused(StoreError):
    """The query would run as a role that can do more than read: nothing was run."""


@dataclass
class QueryStream:
    columns: list[str]
    rows: Iterator[tuple[Any, ...]]


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    truncated: bool = False


@contextmanager
def stream_readonly(
    database_url: str,
    sql: str,
    *,
    query_url: str | None = None,
    role: str = DEFAULT_ROLE,
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[QueryStream]:
    """Open ``sql`` for reading; rows come as the caller iterates (see the module docstring).
    Raises :class:`ReadOnlyViolation`, :class:`QueryError`, :class:`QueryTimeout` (also while
    iterating) and :class:`QueryRefused`."""
    if not sql.strip():
        raise QueryError("empty query")
    url = normalize_url(database_url)
    if url.get_backend_name() == "sqlite":
        with _sqlite_stream(url, sql, timeout) as stream:
            yield stream
        return
    with _pg_stream(reader_url(url, query_url, role), sql, timeout, role) as stream:
        yield stream


def run_readonly(
    database_url: str,
    sql: str,
    *,
    max_rows: int = 10_000,
    query_url: str | None = None,
    role: str = DEFAULT_ROLE,
    timeout: float = DEFAULT_TIMEOUT,
) -> QueryResult:
    """:func:`stream_readonly`, keeping the first ``max_rows`` rows."""
    with stream_readonly(
        database_url, sql, query_url=query_url, role=role, timeout=timeout
    ) as stream:
        rows = list(itertools.islice(stream.rows, max_rows + 1))
    return QueryResult(stream.columns, rows[:max_rows], len(rows) > max_rows)


def reader_url(database_url: URL, query_url: str | None, role: str) -> URL:
    """The URL ``seedq query`` logs in with on PostgreSQL."""
    if query_url:
        url = normalize_url(query_url)
        if url.get_backend_name() != "postgresql":
            raise StoreError("SEEDQ_QUERY_DATABASE_URL must be a postgresql:// URL")
        return url
    return database_url.set(username=check_role_name(role), password=None)


# ---- SQLite ------------------------------------------------------------------------------


def _sqlite_authorizer(action: int, *_args: Any) -> int:
    return sqlite3.SQLITE_OK if action in ALLOWED_SQLITE_ACTIONS else sqlite3.SQLITE_DENY


@contextmanager
def _sqlite_stream(url: URL, sql: str, timeout: float) -> Iterator[QueryStream]:
    path = sqlite_file(url)
    if path is None or not path.exists():
        raise StoreError(f"no SQLite database at {url.database!r}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    deadline = time.monotonic() + timeout
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.set_authorizer(_sqlite_authorizer)
        conn.set_progress_handler(
            lambda: 1 if time.monotonic() > deadline else 0, SQLITE_PROGRESS_STEPS
        )
        with _sqlite_errors(timeout):
            cur = conn.execute(sql)
            first = cur.fetchone()
        columns = [d[0] for d in cur.description] if cur.description else []
        yield QueryStream(columns, _sqlite_rows(first, cur, timeout))
    finally:
        conn.close()


def _sqlite_rows(first: Any, cur: sqlite3.Cursor, timeout: float) -> Iterator[tuple[Any, ...]]:
    if first is None:
        return
    yield tuple(first)
    with _sqlite_errors(timeout):
        while chunk := cur.fetchmany(STREAM_CHUNK):
            yield from (tuple(r) for r in chunk)


@contextmanager
def _sqlite_errors(timeout: float) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise _timeout(timeout) from exc
        raise _sqlite_error(exc) from exc
    except sqlite3.DatabaseError as exc:
        raise _sqlite_error(exc) from exc
    except sqlite3.ProgrammingError as exc:  # e.g. several statements at once
        raise QueryError(str(exc)) from exc


def _sqlite_error(exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "not authorized" in text or "readonly" in text or "query_only" in text:
        return ReadOnlyViolation(f"refused: queries are read-only ({text})")
    return QueryError(text)


def _timeout(timeout: float) -> QueryTimeout:
    return QueryTimeout(
        f"query stopped after its time limit of {timeout:g}s (--timeout, SEEDQ_QUERY_TIMEOUT)"
    )


# ---- PostgreSQL --------------------------------------------------------------------------


def _pg_conninfo(url: URL, timeout: float) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
        "connect_timeout": 10,
    }
    ms = max(1, int(timeout * 1000))
    options = f"-c default_transaction_read_only=on -c statement_timeout={ms}"
    extra = url.query.get("options")
    if isinstance(extra, str):
        options = f"{extra} {options}"
    info["options"] = options
    return {k: v for k, v in info.items() if v is not None}


def _connect(url: URL, timeout: float) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(**_pg_conninfo(url, timeout), autocommit=False)
    except psycopg.Error as exc:
        reason = _one_line(exc)
        hint = ""
        if "does not exist" in reason or "authentication" in reason:
            hint = (
                ": set SEEDQ_QUERY_DATABASE_URL to the reader's login (docs/DEPLOY.md), or "
                "run `seedq db upgrade` to create the reader role"
            )
        raise StoreError(
            f"seedq query cannot connect to PostgreSQL as {url.username!r} ({reason}){hint}"
        ) from exc


def _refuse_privileged(conn: psycopg.Connection[Any], role: str) -> None:
    cur = conn.cursor()
    user = cur.execute("SELECT session_user").fetchone()
    name = str(user[0]) if user else "?"
    row = cur.execute(ROLE_CHECK_SQL, {"role": name}).fetchone()
    conn.rollback()
    reasons = reasons_from_row(name, tuple(row) if row is not None else None)
    if reasons:
        more = f" (and {len(reasons) - 1} more privileges)" if len(reasons) > 1 else ""
        raise QueryRefused(
            f"seedq query refuses to run as {name}: {reasons[0]}{more}. Point "
            f"SEEDQ_QUERY_DATABASE_URL at a login with SELECT on seedq's tables only (the "
            f"{role} role that `seedq db upgrade` creates, docs/DEPLOY.md)"
        )


@contextmanager
def _pg_stream(url: URL, sql: str, timeout: float, role: str) -> Iterator[QueryStream]:
    with _connect(url, timeout) as conn:
        rows: Iterator[Any] | None = None
        try:
            _refuse_privileged(conn, role)
            cur = conn.cursor()
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute("SELECT 1")  # take the snapshot: READ WRITE can no longer be set
            columns = _pg_columns(conn, sql)
            chunk = STREAM_CHUNK if pq.version() >= 170000 else 1  # chunked rows: libpq 17+
            rows = cur.stream(sql.encode(), size=chunk)
            with _pg_errors(timeout):
                first = next(rows, None)
            yield QueryStream(columns, _pg_rows(first, rows, timeout))
        except psycopg.OperationalError as exc:
            raise StoreError(f"PostgreSQL: {_one_line(exc)}") from exc
        finally:
            _close_stream(conn, rows)


def _close_stream(conn: psycopg.Connection[Any], rows: Iterator[Any] | None) -> None:
    """Stop a result not read to the end (psycopg cancels it), then end the transaction."""
    if conn.closed:
        return
    try:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
        conn.rollback()
    except psycopg.Error:
        conn.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _pg_columns(conn: psycopg.Connection[Any], sql: str) -> list[str]:
    """The result columns, from describing the statement without running it (this also
    refuses a text of several statements)."""
    pgconn = conn.pgconn
    res = pgconn.prepare(b"", sql.encode())
    if res.status != pq.ExecStatus.COMMAND_OK:
        raise QueryError(_pq_message(res))
    desc = pgconn.describe_prepared(b"")
    if desc.status != pq.ExecStatus.COMMAND_OK:
        raise QueryError(_pq_message(desc))
    return [(desc.fname(i) or b"?").decode() for i in range(desc.nfields)]


def _pq_message(res: pq.abc.PGresult) -> str:
    text = res.error_message.decode(errors="replace").strip()
    return text.removeprefix("ERROR:").strip()


def _pg_rows(first: Any, rows: Iterator[Any], timeout: float) -> Iterator[tuple[Any, ...]]:
    if first is None:
        return
    yield tuple(first)
    with _pg_errors(timeout):
        for row in rows:
            yield tuple(row)


@contextmanager
def _pg_errors(timeout: float) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise ReadOnlyViolation(f"refused: queries are read-only ({_one_line(exc)})") from exc
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ReadOnlyViolation(
            f"refused: the query role may only read seedq's tables ({_one_line(exc)})"
        ) from exc
    except psycopg.errors.QueryCanceled as exc:
        raise _timeout(timeout) from exc
    except psycopg.Error as exc:
        raise QueryError(_one_line(exc)) from exc
