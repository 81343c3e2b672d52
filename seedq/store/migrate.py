"""Alembic glue: upgrade a database to the latest schema, and refuse an out-of-date one."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from seedq.store import reader
from seedq.store.db import Database, StoreError

log = logging.getLogger(__name__)
DEFAULT_READER_ROLE = "seedq_reader"

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
MIGRATIONS = REPO_ROOT / "migrations"


class SchemaOutOfDate(StoreError):
    """The database schema is not the one this seedq expects."""


def alembic_config() -> Config:
    """The Alembic configuration of this checkout (``alembic.ini`` + ``migrations/``)."""
    if not MIGRATIONS.is_dir():
        raise StoreError(f"migrations not found at {MIGRATIONS}: run seedq from its checkout")
    cfg = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.is_file() else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError("no migrations found")
    return head


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(
    db: Database, revision: str = "head", *, reader_role: str | None = DEFAULT_READER_ROLE
) -> str | None:
    """Bring ``db`` to ``revision`` (the latest by default); returns the new revision.
    On PostgreSQL, ``reader_role`` (``seedq query``'s role) is then created when missing
    and granted SELECT on seedq's tables (None: leave roles alone)."""
    cfg = alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    if reader_role is not None and db.dialect == "postgresql":
        status = reader.ensure_reader(db, reader_role)
        (log.info if status.ready else log.warning)("%s", status.message)
    return current_revision(db)


def ensure_current(db: Database) -> None:
    """Raise :class:`SchemaOutOfDate` unless ``db`` is at the latest revision."""
    current = current_revision(db)
    head = head_revision()
    if current == head:
        return
    where = db.describe()
    if current is None:
        raise SchemaOutOfDate(
            f"the database {where} has no seedq schema yet: run `seedq db upgrade` first"
        )
    raise SchemaOutOfDate(
        f"the database {where} is at schema revision {current} but this seedq needs {head}: "
        "run `seedq db upgrade`"
    )
