"""Engines and sessions for SQLite (default) and PostgreSQL.

SQLite files get WAL mode, a busy timeout and ``BEGIN IMMEDIATE`` write transactions so that
several worker processes can share one file; PostgreSQL goes through psycopg 3.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from seedq.redact import redact
from seedq.settings import mask_url

log = logging.getLogger(__name__)

SQLITE_BUSY_MS = 30_000


class StoreError(RuntimeError):
    """The database cannot be used as asked (bad URL, out-of-date schema, ...)."""


def normalize_url(url: str) -> URL:
    """Parse a database URL; plain ``postgresql://`` / ``postgres://`` use psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends
        raise StoreError(f"invalid database URL {mask_url(url)!r}: {redact(str(exc))}") from exc
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
        )
    return parsed


def sqlite_file(url: URL) -> Path | None:
    """The file behind an SQLite URL (None for in-memory databases)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below start transactions
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """A read-write engine for ``url``; creates the SQLite file's directory when needed."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000}
        }
        if path is None:
            kwargs["poolclass"] = NullPool
        engine = create_engine(parsed, **kwargs)
        _install_sqlite_hooks(engine)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10)


class Database:
    """An engine plus its session factory; the one handle the rest of seedq passes around."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self.sessions.begin() as session:
            yield session

    def describe(self) -> str:
        """The URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()
