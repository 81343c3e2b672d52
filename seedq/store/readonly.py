"""``seedq query``: run one SQL statement that cannot write, enforced by the database itself.

SQLite: the file is opened ``mode=ro`` with ``PRAGMA query_only`` and an authorizer that only
allows reads. PostgreSQL: a dedicated connection whose transactions default to read only, a
``SET TRANSACTION READ ONLY`` transaction with a snapshot already taken, and the statement sent
as a prepared statement (so ``COMMIT; DROP ...`` cannot smuggle in a second command).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from seedq.store.db import StoreError, normalize_url, sqlite_file

ALLOWED_SQLITE_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}
STATEMENT_TIMEOUT_MS = 60_000


class ReadOnlyViolation(StoreError):
    """The statement tried to change something; nothing was changed."""


class QueryError(StoreError):
    """The statement is not valid SQL for this database (the database's message follows)."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    truncated: bool = False


def run_readonly(database_url: str, sql: str, *, max_rows: int = 10_000) -> QueryResult:
    """Run ``sql`` without any possibility of writing; raise on writes and on SQL errors."""
    if not sql.strip():
        raise QueryError("empty query")
    url = normalize_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _run_sqlite(url, sql, max_rows)
    return _run_postgres(url, sql, max_rows)


def _sqlite_authorizer(action: int, *_args: Any) -> int:
    return sqlite3.SQLITE_OK if action in ALLOWED_SQLITE_ACTIONS else sqlite3.SQLITE_DENY


def _run_sqlite(url: URL, sql: str, max_rows: int) -> QueryResult:
    path = sqlite_file(url)
    if path is None or not path.exists():
        raise StoreError(f"no SQLite database at {url.database!r}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.set_authorizer(_sqlite_authorizer)
        try:
            cur = conn.execute(sql)
            return _fetch(cur.description, cur.fetchmany(max_rows + 1), max_rows)
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "not authorized" in text or "readonly" in text or "query_only" in text:
                raise ReadOnlyViolation(f"refused: queries are read-only ({text})") from exc
            raise QueryError(text) from exc
        except sqlite3.ProgrammingError as exc:  # e.g. several statements at once
            raise QueryError(str(exc)) from exc
    finally:
        conn.close()


def _pg_conninfo(url: URL) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    options = f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    extra = url.query.get("options")
    if isinstance(extra, str):
        options = f"{extra} {options}"
    info["options"] = options
    return {k: v for k, v in info.items() if v is not None}


def _run_postgres(url: URL, sql: str, max_rows: int) -> QueryResult:
    with psycopg.connect(**_pg_conninfo(url), autocommit=False) as conn:
        cur = conn.cursor()
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute("SELECT 1")  # take the snapshot: READ WRITE can no longer be set
        try:
            cur.execute(sql.encode(), prepare=True)  # type: ignore[call-overload]
            rows = cur.fetchmany(max_rows + 1) if cur.description else []
            return _fetch(cur.description, rows, max_rows)
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise ReadOnlyViolation(f"refused: queries are read-only ({exc})") from exc
        except psycopg.Error as exc:
            raise QueryError(str(exc).strip()) from exc
        finally:
            conn.rollback()


def _fetch(description: Any, rows: list[Any], max_rows: int) -> QueryResult:
    columns = [d[0] for d in description] if description else []
    truncated = len(rows) > max_rows
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows]], truncated)
