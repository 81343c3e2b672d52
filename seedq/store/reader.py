"""The PostgreSQL reader role of ``seedq query``: SELECT on seedq's tables, nothing else.

``seedq db upgrade`` creates the role when it is missing and the upgrading role may create
roles (``LOGIN`` without a password: it can log in only where ``pg_hba.conf`` trusts it, or
once an administrator gives it a password), then grants it ``USAGE`` on the schema and
``SELECT`` on seedq's tables, again after every upgrade (new tables included). Before each
query, :func:`refusal` checks that the connected role is a plain reader: no superuser, no
replication, no server-file or signal privileges, no write privilege on seedq's tables.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import Connection, text

from seedq.store.db import Database, StoreError

log = logging.getLogger(__name__)

SEEDQ_TABLES = ("batches", "jobs", "nodes", "generations")
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
PRIVILEGED_ROLES = (
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
)
_CREATE_ROLE = """
DO $$ BEGIN
  CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$
"""


@dataclass(frozen=True)
class ReaderStatus:
    """What ``seedq db upgrade`` did for the reader role, as one line."""

    role: str
    ready: bool
    message: str


def check_role_name(role: str) -> str:
    if not ROLE_NAME.match(role):
        raise StoreError(
            f"SEEDQ_QUERY_ROLE must be a plain lower-case PostgreSQL name, got {role!r}"
        )
    return role


def ensure_reader(db: Database, role: str) -> ReaderStatus:
    """Create (when missing and allowed) and grant the reader role; PostgreSQL only."""
    check_role_name(role)
    with db.engine.begin() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        if not _role_exists(conn, role):
            if not _may_create_roles(conn):
                return ReaderStatus(role, False, _missing_message(conn, role))
            conn.exec_driver_sql(_CREATE_ROLE.format(role=role))
        if _is_privileged(conn, role):
            return ReaderStatus(
                role, False, f"reader role {role} is a superuser or privileged: not granted"
            )
        quoted = '"' + str(schema).replace('"', '""') + '"'
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {quoted} TO {role}")
        tables = ", ".join(f"{quoted}.{t}" for t in SEEDQ_TABLES)
        conn.exec_driver_sql(f"GRANT SELECT ON {tables} TO {role}")
    return ReaderStatus(role, True, f"reader role {role}: SELECT on {', '.join(SEEDQ_TABLES)}")


def _role_exists(conn: Connection, role: str) -> bool:
    found = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    return found.first() is not None


def _may_create_roles(conn: Connection) -> bool:
    row = conn.execute(
        text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    ).scalar_one_or_none()
    return bool(row)


def _is_privileged(conn: Connection, role: str) -> bool:
    return refusal_reasons(conn, role, with_tables=False) != []


def _missing_message(conn: Connection, role: str) -> str:
    user = conn.execute(text("SELECT current_user")).scalar_one()
    return (
        f"reader role {role} does not exist and {user} may not create roles: run "
        f"`CREATE ROLE {role} LOGIN PASSWORD '...'` as an administrator, then "
        "`seedq db upgrade` again (docs/DEPLOY.md); `seedq query` refuses to run until then"
    )


ROLE_CHECK_SQL = """
SELECT r.rolsuper, r.rolreplication, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb,
       pg_has_role(r.oid, 'pg_read_server_files', 'MEMBER'),
       pg_has_role(r.oid, 'pg_write_server_files', 'MEMBER'),
       pg_has_role(r.oid, 'pg_execute_server_program', 'MEMBER'),
       pg_has_role(r.oid, 'pg_signal_backend', 'MEMBER'),
       COALESCE((SELECT bool_or(has_table_privilege(r.oid, c.oid,
                                                    'INSERT, UPDATE, DELETE, TRUNCATE'))
                 FROM unnest(ARRAY['batches', 'jobs', 'nodes', 'generations']) AS t(name)
                 JOIN pg_class c ON c.oid = to_regclass(t.name)), false)
FROM pg_roles r WHERE r.rolname = %(role)s
"""
ROLE_FLAGS = (
    "a superuser",
    "a replication role",
    "allowed to bypass row security",
    "allowed to create roles",
    "allowed to create databases",
    *(f"a member of {m}" for m in PRIVILEGED_ROLES),
    "allowed to write to seedq's tables",
)


def reasons_from_row(role: str, row: tuple[object, ...] | None) -> list[str]:
    """Why ``role`` (its :data:`ROLE_CHECK_SQL` row) is more than a reader; [] if it is not."""
    if row is None:
        return [f"role {role} does not exist"]
    return [f"{role} is {what}" for what, flag in zip(ROLE_FLAGS, row, strict=True) if flag]


def refusal_reasons(conn: Connection, role: str, *, with_tables: bool = True) -> list[str]:
    """Why ``role`` is more than a reader (empty: it is a plain reader)."""
    row = conn.exec_driver_sql(ROLE_CHECK_SQL, {"role": role}).first()
    reasons = reasons_from_row(role, tuple(row) if row is not None else None)
    if not with_tables:
        reasons = [r for r in reasons if not r.endswith("seedq's tables")]
    return reasons
