"""No command ever prints a URL's password: failing commands (Redis down or refusing the
password, PostgreSQL down or refusing the login, a malformed URL) say so in one line, with
the password masked, and no traceback; the worker's logs too."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from seedq import redact
from seedq.settings import mask_url
from seedq.store import migrate
from seedq.store.db import Database
from tests.conftest import PYTHON, REDIS_URL, REPO

PASSWORD = "Xy7SeCrEtPw"
REDIS_DOWN = f"redis://:{PASSWORD}@127.0.0.1:1/0"
REDIS_BAD_PASSWORD = REDIS_URL.replace("redis://", f"redis://nobody:{PASSWORD}@", 1)
PG_DOWN = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test"
PG_NO_SUCH_USER = f"postgresql://seedq_nobody:{PASSWORD}@127.0.0.1:5432/test"
PG_BAD_URL = f"postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/test"
JOB = '{"task": "gsm8k", "question": "What is 1+1?", "answer": "2"}\n'

# (name, environment overrides, arguments); {file}: a one-line job file
CASES = [
    ("status-redis-down", {"SEEDQ_REDIS_URL": REDIS_DOWN}, ["status"]),
    ("workers-redis-down", {"SEEDQ_REDIS_URL": REDIS_DOWN}, ["workers"]),
    ("worker-redis-down", {"SEEDQ_REDIS_URL": REDIS_DOWN}, ["worker", "--burst"]),
    ("submit-redis-down", {"SEEDQ_REDIS_URL": REDIS_DOWN}, ["submit", "{file}"]),
    ("status-redis-password", {"SEEDQ_REDIS_URL": REDIS_BAD_PASSWORD}, ["status"]),
    ("worker-redis-password", {"SEEDQ_REDIS_URL": REDIS_BAD_PASSWORD}, ["worker", "--burst"]),
    ("status-pg-down", {"SEEDQ_DATABASE_URL": PG_DOWN}, ["status"]),
    ("results-pg-down", {"SEEDQ_DATABASE_URL": PG_DOWN}, ["results", "b1"]),
    ("upgrade-pg-down", {"SEEDQ_DATABASE_URL": PG_DOWN}, ["db", "upgrade"]),
    ("query-pg-down", {"SEEDQ_DATABASE_URL": PG_DOWN}, ["query", "SELECT 1"]),
    ("submit-pg-down", {"SEEDQ_DATABASE_URL": PG_DOWN}, ["submit", "{file}"]),
    ("worker-pg-down", {"SEEDQ_DATABASE_URL": PG_DOWN}, ["worker", "--burst"]),
    ("status-pg-user", {"SEEDQ_DATABASE_URL": PG_NO_SUCH_USER}, ["status"]),
    ("query-reader-down", {"SEEDQ_QUERY_DATABASE_URL": PG_DOWN,
                           "SEEDQ_DATABASE_URL": PG_NO_SUCH_USER}, ["query", "SELECT 1"]),
    ("status-bad-url", {"SEEDQ_DATABASE_URL": PG_BAD_URL}, ["status"]),
    ("results-url-option", {}, ["--database-url", PG_NO_SUCH_USER, "results", "b1"]),
    ("status-redis-option", {}, ["--redis-url", REDIS_DOWN, "status"]),
]


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('secrets') / 'ok.sqlite'}"
    db = Database(url)
    migrate.upgrade(db)
    db.close()
    return url


def _start(name: str, env: dict[str, str], args: list[str], sqlite_url: str, job: Path
           ) -> subprocess.Popen[str]:
    full_env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "SEEDQ_REDIS_URL": REDIS_URL,
        "SEEDQ_DATABASE_URL": sqlite_url,
        "SEEDQ_QUEUE": f"seedq-secrets-{name}",
        "SEEDQ_TEST_GENERATOR": "canned",  # a worker without models
        "SEEDQ_DEQUEUE_TIMEOUT": "1",
        **env,
    }
    argv = [a.replace("{file}", str(job)) for a in args]
    return subprocess.Popen(
        [PYTHON, "-c", "from seedq.cli import main; main()", "-v", *argv],
        cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_failing_commands_never_print_the_password(sqlite_url: str, tmp_path: Path) -> None:
    """Every case at once (4 processes at a time): each fails in one line, masked."""
    job = tmp_path / "in.jsonl"
    job.write_text(JOB)
    failures = []
    for start in range(0, len(CASES), 4):
        procs = [(c[0], _start(*c, sqlite_url, job)) for c in CASES[start : start + 4]]
        for name, proc in procs:
            out, err = proc.communicate(timeout=120)
            output = out + err
            errors = [ln for ln in err.splitlines() if ln.startswith("Error:")]
            if (
                proc.returncode == 0
                or PASSWORD in output
                or "Traceback" in output
                or len(errors) != 1
            ):
                failures.append(f"--- {name} (exit {proc.returncode}):\n{output[-3000:]}")
    assert not failures, "\n".join(failures)


def test_mask_and_redact() -> None:
    assert mask_url(REDIS_DOWN) == "redis://:***@127.0.0.1:1/0"
    assert mask_url(PG_DOWN) == "postgresql://postgres:***@127.0.0.1:1/test"
    assert mask_url("redis://h:6379/0?password=abc&db=1") == "redis://h:6379/0?password=***&db=1"
    text = f"failed for {PG_DOWN} (password={PASSWORD}) and {PASSWORD} again"
    cleaned = redact.redact(text, redact.secrets_of([PG_DOWN]))
    assert PASSWORD not in cleaned and "postgres:***@" in cleaned
