"""Command-line conventions: --version, -h, -v/-q after the command, global URLs, a default
database at an absolute path, query from a file or stdin, and one-line errors with exit code 2
for what is wrong around seedq (database, Redis, schema, model, settings)."""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from seedq.cli import main
from seedq.settings import Settings
from seedq.store import migrate
from seedq.store.db import Database
from tests.conftest import PYTHON, REDIS_URL, REPO

CLOSED_PORT = 1  # nothing listens there
NO_REDIS = f"redis://127.0.0.1:{CLOSED_PORT}/0"


@pytest.fixture(autouse=True)
def _keep_root_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def sqlite_url(tmp_path: Path, upgraded: bool = True) -> str:
    url = f"sqlite:///{tmp_path / 'db' / 'seedq.sqlite'}"
    if upgraded:
        db = Database(url)
        migrate.upgrade(db)
        db.close()
    return url


def invoke(args: list[str], **env: str) -> Result:
    return CliRunner().invoke(main, args, env={"SEEDQ_REDIS_URL": REDIS_URL, **env})


def one_line_error(res: Result, *fragments: str) -> str:
    """Exit code 2, exactly one line on stderr, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_version_and_short_help() -> None:
    res = invoke(["--version"])
    assert res.exit_code == 0 and re.match(r"seedq, version \d+\.\d+", res.output)
    assert invoke(["-h"]).output == invoke(["--help"]).output
    res = invoke(["status", "-h"])
    assert res.exit_code == 0 and "--watch" in res.output and "--json" in res.output


def test_top_level_help_shows_whole_descriptions() -> None:
    res = invoke(["--help"])
    flat = " ".join(res.output.split())
    for name, command in main.commands.items():
        first = " ".join(command.get_short_help_str(limit=1000).split())
        assert f"{name} {first}" in flat, name
    commands = res.output.split("Commands:")[1]
    assert "..." not in commands and "_SEEDQ_COMPLETE=bash_source seedq" in flat


@pytest.mark.parametrize(
    ("args", "level"),
    [
        (["db", "current", "-v"], logging.INFO),
        (["db", "current", "-vv"], logging.DEBUG),
        (["-v", "db", "current"], logging.INFO),
        (["db", "current", "-q"], logging.ERROR),
        (["db", "current"], logging.WARNING),
    ],
)
def test_verbosity_before_or_after_the_command(tmp_path: Path, args: list[str], level: int
                                               ) -> None:
    res = invoke(args, SEEDQ_DATABASE_URL=sqlite_url(tmp_path))
    assert res.exit_code == 0, res.output
    assert logging.getLogger().level == level


def test_global_urls_and_the_default_database(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    res = invoke(["--database-url", url, "--redis-url", REDIS_URL, "status"],
                 SEEDQ_DATABASE_URL="postgresql://nobody@127.0.0.1:1/x", SEEDQ_REDIS_URL=NO_REDIS)
    assert res.exit_code == 0, res.output
    assert "no batches yet" in res.output
    default = Settings.from_env({"HOME": str(tmp_path)}).sqlite_path()
    assert default is not None and default.is_absolute() and default.name == "seedq.sqlite"


def test_query_from_a_file_stdin_or_an_argument_with_a_leading_comment(tmp_path: Path) -> None:
    env = {"SEEDQ_DATABASE_URL": sqlite_url(tmp_path)}
    sql = "-- how many jobs\nSELECT COUNT(*) AS n FROM jobs\n"
    path = tmp_path / "my.sql"
    path.write_text(sql)
    for args, stdin in ((["query", "-f", str(path)], None), (["query"], sql),
                        (["query", "-"], sql), (["query", sql], None)):
        res = CliRunner().invoke(main, [*args, "--csv"], input=stdin, env=env)
        assert res.exit_code == 0, (args, res.output)
        assert res.stdout == "n\n0\n", args
    res = CliRunner().invoke(main, ["query", "-f", str(path), "SELECT 1"], env=env)
    assert res.exit_code == 2 and "not both" in res.output


def test_unreachable_postgresql_is_one_line_without_password() -> None:
    """Through the real entry point: no traceback reaches stderr."""
    env = {"SEEDQ_DATABASE_URL": f"postgresql://postgres:s3cr3tpw@127.0.0.1:{CLOSED_PORT}/x",
           "SEEDQ_REDIS_URL": REDIS_URL, "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [PYTHON, "-c", "import sys; from seedq.cli import main; sys.exit(main())", "status"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: cannot open the database at postgresql://postgres:***@")
    assert "s3cr3tpw" not in proc.stderr


def test_missing_sqlite_database_is_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nowhere' / 'seedq.sqlite'}"
    one_line_error(invoke(["status"], SEEDQ_DATABASE_URL=url), "no database at",
                   "seedq db upgrade")
    assert not (tmp_path / "nowhere").exists()


def test_redis_down_is_one_line(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    res = invoke(["status"], SEEDQ_DATABASE_URL=url, SEEDQ_REDIS_URL=NO_REDIS)
    one_line_error(res, f"cannot reach Redis at {NO_REDIS}")
    path = tmp_path / "in.jsonl"
    path.write_text('{"custom_id": "a", "task": "gsm8k", "question": "1+1?", "answer": "2"}\n')
    res = invoke(["submit", str(path)], SEEDQ_DATABASE_URL=url, SEEDQ_REDIS_URL=NO_REDIS)
    one_line_error(res, f"cannot reach Redis at {NO_REDIS}", "nothing was submitted")


def test_schema_missing_or_behind_is_one_line(pg_url: str) -> None:
    one_line_error(invoke(["status"], SEEDQ_DATABASE_URL=pg_url), "no seedq schema yet",
                   "seedq db upgrade")
    db = Database(pg_url)
    try:
        migrate.upgrade(db)
        with db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'old0'"))
    finally:
        db.close()
    one_line_error(invoke(["results", "b1"], SEEDQ_DATABASE_URL=pg_url), "revision old0")


def test_bad_settings_and_unknown_model_are_one_line(tmp_path: Path, queue_name: str) -> None:
    url = sqlite_url(tmp_path)
    one_line_error(invoke(["status"], SEEDQ_DATABASE_URL=url, SEEDQ_ROUND_SIZE="many"),
                   "SEEDQ_ROUND_SIZE must be an integer")
    res = invoke(["worker", "--burst", "--queue", queue_name], SEEDQ_DATABASE_URL=url,
                 SEEDQ_TARGET_MODEL=str(tmp_path / "no-such-model"), HF_HUB_OFFLINE="1")
    one_line_error(res, "no-such-model")
