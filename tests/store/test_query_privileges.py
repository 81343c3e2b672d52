"""`seedq query` runs as a plain reader: on PostgreSQL server files, programs, other sessions,
replication and the configuration are out of reach, a superuser login is refused; both
databases stop a statement at its time limit; rows stream with bounded memory."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from seedq.cli import main
from seedq.store import migrate
from seedq.store.db import Database
from seedq.store.readonly import (
    QueryError,
    QueryRefused,
    QueryTimeout,
    ReadOnlyViolation,
    run_readonly,
    stream_readonly,
)
from tests.conftest import PG_URL, REPO

ENDLESS_SQLITE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"


@pytest.fixture
def pg(pg_url: str) -> str:
    db = Database(pg_url)
    migrate.upgrade(db)  # creates seedq_reader (LOGIN, no password) and grants it SELECT
    db.close()
    return pg_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'q.sqlite'}"
    db = Database(url)
    migrate.upgrade(db)
    db.close()
    return url


@pytest.fixture
def other_session() -> Iterator[int]:
    """A second PostgreSQL session (as postgres) that the reader must not be able to end."""
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        yield int(pid[0])
        assert c.execute("SELECT 1").fetchone() == (1,)  # still alive


def test_reader_reads_but_reaches_nothing_else(pg: str, other_session: int) -> None:
    assert run_readonly(pg, "SELECT COUNT(*) FROM jobs").rows == [(0,)]
    assert run_readonly(pg, "SELECT current_user").rows == [("seedq_reader",)]
    slot = f"seedq_t_{uuid.uuid4().hex[:8]}"
    refused = [
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_ls_dir('.')",
        "COPY (SELECT 1) TO PROGRAM 'touch /tmp/seedq_pwned'",
        "COPY (SELECT 1) TO '/tmp/seedq_pwned'",
        f"SELECT pg_terminate_backend({other_session})",
        f"SELECT pg_create_physical_replication_slot('{slot}')",
        "SELECT pg_reload_conf()",
        "DELETE FROM jobs",
    ]
    for sql in refused:
        with pytest.raises(ReadOnlyViolation, match="refused"):
            run_readonly(pg, sql)
    with pytest.raises(QueryError, match="multiple commands"):
        run_readonly(pg, "SELECT COUNT(*) FROM jobs; DELETE FROM jobs")
    assert not Path("/tmp/seedq_pwned").exists()
    engine = sa.create_engine(PG_URL)
    with engine.connect() as conn:
        slots = conn.execute(sa.text("SELECT COUNT(*) FROM pg_replication_slots "
                                     "WHERE slot_name = :s"), {"s": slot}).scalar()
    engine.dispose()
    assert slots == 0


def test_superuser_and_writer_logins_are_refused(
    pg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(QueryRefused, match="superuser"):
        run_readonly(pg, "SELECT 1", query_url=PG_URL)
    writer = "seedq_test_writer"
    engine = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(
            f"DO $$ BEGIN CREATE ROLE {writer} LOGIN; EXCEPTION WHEN duplicate_object "
            "OR unique_violation THEN NULL; END $$"
        )
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {writer}")
        conn.exec_driver_sql(f"GRANT SELECT, INSERT ON jobs TO {writer}")
    engine.dispose()
    with pytest.raises(QueryRefused, match="write to seedq's tables"):
        run_readonly(pg, "SELECT 1", role=writer)
    monkeypatch.setenv("SEEDQ_DATABASE_URL", pg)
    monkeypatch.setenv("SEEDQ_QUERY_DATABASE_URL", PG_URL)
    res = CliRunner().invoke(main, ["query", "SELECT pg_read_file('/etc/passwd')"])
    assert res.exit_code != 0 and "refuses to run as postgres" in res.output
    assert "root:" not in res.output and len(res.output.strip().splitlines()) == 1


def test_db_upgrade_reports_the_reader_role(pg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEEDQ_DATABASE_URL", pg)
    res = CliRunner().invoke(main, ["db", "upgrade"])
    assert res.exit_code == 0, res.output
    assert "reader role seedq_reader: SELECT on batches, jobs, nodes, generations" in res.output


def test_statement_timeout_on_both_databases(pg: str, sqlite_url: str) -> None:
    for url, sql in ((pg, "SELECT pg_sleep(30)"), (sqlite_url, f"SELECT MAX(x) FROM "
                                                                 f"({ENDLESS_SQLITE})")):
        t0 = time.monotonic()
        with pytest.raises(QueryTimeout, match=r"time limit of 0\.5s"):
            run_readonly(url, sql, timeout=0.5)
        assert time.monotonic() - t0 < 10


def test_cli_timeout_option(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEEDQ_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("SEEDQ_QUERY_TIMEOUT", "0.3")
    res = CliRunner().invoke(main, ["query", f"SELECT COUNT(*) FROM ({ENDLESS_SQLITE})"])
    assert res.exit_code == 1 and "time limit of 0.3s" in res.output


def test_rows_stream(pg: str, sqlite_url: str) -> None:
    """Only what is read is fetched: an endless result gives its first rows at once."""
    for url, sql in ((pg, "SELECT generate_series(1, 2000000000) AS x"),
                     (sqlite_url, ENDLESS_SQLITE)):
        t0 = time.monotonic()
        with stream_readonly(url, sql, timeout=20) as res:
            assert res.columns == ["x"] and [next(res.rows) for _ in range(3)] == [
                (1,), (2,), (3,)
            ]
        assert time.monotonic() - t0 < 5
        res2 = run_readonly(url, sql, max_rows=5, timeout=20)
        assert res2.truncated and len(res2.rows) == 5


def _cap_memory() -> None:
    cap = 200 << 20  # a `seedq query` process needs about 105 MB of address space
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_big_result_streams_to_the_output_in_bounded_memory(pg: str) -> None:
    """400k rows as CSV under a 200 MB address-space cap (loading them whole takes 260)."""
    script = (
        "import sys; from seedq.cli import main; "
        "main(['query', '--csv', '--max-rows', '4000000', "
        "'SELECT x, x * 2 AS y, repeat(chr(97), 40) AS s "
        "FROM generate_series(1, 400000) x'])"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SEEDQ_DATABASE_URL": pg}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
        preexec_fn=_cap_memory, timeout=300, check=False,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr[-2000:]
    assert proc.stdout.count(b"\n") == 400_001
