"""`seedq query` refuses every write at the database level, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from seedq.cli import main
from seedq.store import migrate
from seedq.store.db import Database
from seedq.store.readonly import QueryError, ReadOnlyViolation, run_readonly

WRITES = [
    "INSERT INTO batches (id, created_at, queue, total, rejected, options) "
    "VALUES ('x', CURRENT_TIMESTAMP, 'q', 0, 0, '{}')",
    "UPDATE batches SET total = 99",
    "DELETE FROM batches",
    "DROP TABLE jobs",
    "CREATE TABLE evil (a INTEGER)",
]


@pytest.fixture
def url(database_url: str) -> str:
    db = Database(database_url)
    migrate.upgrade(db)
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO batches (id, created_at, queue, total, rejected, options) "
                "VALUES ('b1', CURRENT_TIMESTAMP, 'q', 3, 0, '{}')"
            )
        )
    db.close()
    return database_url


def count_batches(url: str) -> tuple[int, int]:
    res = run_readonly(url, "SELECT COUNT(*), MAX(total) FROM batches")
    return res.rows[0]


@pytest.mark.parametrize("sql", WRITES)
def test_writes_are_refused(url: str, sql: str) -> None:
    with pytest.raises(ReadOnlyViolation, match="read-only"):
        run_readonly(url, sql)
    assert count_batches(url) == (1, 3)


@pytest.mark.parametrize("sql", ["COMMIT; DELETE FROM batches", "SELECT 1; DELETE FROM batches"])
def test_a_second_statement_is_never_run(url: str, sql: str) -> None:
    with pytest.raises((ReadOnlyViolation, QueryError)):
        run_readonly(url, sql)
    assert count_batches(url) == (1, 3)


def test_dialect_escapes_are_refused(url: str) -> None:
    if url.startswith("sqlite"):
        for sql in ("PRAGMA query_only = OFF", "ATTACH DATABASE ':memory:' AS other"):
            with pytest.raises(ReadOnlyViolation):
                run_readonly(url, sql)
    else:
        with pytest.raises(QueryError, match="before any query"):
            run_readonly(url, "SET TRANSACTION READ WRITE")
        with pytest.raises(ReadOnlyViolation):
            run_readonly(url, "SELECT nextval(pg_get_serial_sequence('generations', 'id'))")
    assert count_batches(url) == (1, 3)


def test_cli_query_formats_and_refusal(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEEDQ_DATABASE_URL", url)
    runner = CliRunner()
    ok = runner.invoke(main, ["query", "--csv", "SELECT id, total FROM batches"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines() == ["id,total", "b1,3"]
    js = runner.invoke(main, ["query", "--json", "SELECT id FROM batches"])
    assert '"id": "b1"' in js.output
    bad = runner.invoke(main, ["query", "DELETE FROM batches"])
    assert bad.exit_code == 1 and "read-only" in bad.output
    assert count_batches(url) == (1, 3)
