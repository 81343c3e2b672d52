"""Shared fixtures: real Redis and PostgreSQL (see scripts/services.sh), SQLite in tmp_path.

``database_url`` is parametrized over SQLite and PostgreSQL; each PostgreSQL test gets its own
schema (through ``search_path``) in the ``test`` database, dropped afterwards. Each test gets
a unique queue name, and the Redis keys of that queue and of its jobs are deleted afterwards.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import sqlalchemy as sa

from seedq.service.context import Services, open_services
from seedq.settings import Settings
from seedq.store import migrate
from seedq.store.db import Database

REDIS_URL = os.environ.get("SEEDQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("SEEDQ_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parents[1]


def _redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture(scope="session")
def redis_available() -> None:
    try:
        _redis_client().ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis does not answer at {REDIS_URL} (run scripts/services.sh): {exc}")


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL does not answer at {PG_URL} (run scripts/services.sh): {exc}")
    yield engine
    engine.dispose()


def pg_schema_url(schema: str) -> str:
    return f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_url(pg_engine: sa.Engine) -> Iterator[str]:
    """A fresh PostgreSQL schema, reached through search_path."""
    schema = f"seedq_t_{uuid.uuid4().hex[:12]}"
    with pg_engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield pg_schema_url(schema)
    with pg_engine.connect() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'seedq.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def queue_name(redis_available: None) -> Iterator[str]:
    """A queue name of this test alone; its Redis keys are removed afterwards."""
    name = f"seedq-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = _redis_client()
    keys = list(client.scan_iter(match=f"*{name}*", count=1000))
    if keys:
        client.delete(*keys)
    members = [m for m in client.smembers("rq:queues") if name.encode() in m]
    if members:
        client.srem("rq:queues", *members)


def fast_settings(database_url: str, queue: str, **overrides: object) -> Settings:
    """Settings with heartbeats, maintenance and backoff shrunk to test scale."""
    base = Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        queue=queue,
        round_size=4,
        heartbeat_seconds=0.2,
        heartbeat_ttl=4,  # tolerant of a loaded 2-core machine; the recovery tests wait it out
        maintenance_seconds=0.3,
        dequeue_timeout=1,
        max_attempts=3,
        retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=1.0,
        job_timeout=120,
        shutdown_grace_seconds=5.0,
        result_ttl=600,
    )
    return base.with_overrides(**overrides)


@pytest.fixture
def settings(database_url: str, queue_name: str) -> Settings:
    return fast_settings(database_url, queue_name)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    """Schema upgraded, database and Redis open; the Redis keys of its jobs are removed."""
    db = Database(settings.database_url)
    migrate.upgrade(db)
    db.close()
    svc = open_services(settings)
    yield svc
    _delete_job_keys(svc)
    svc.close()


def _delete_job_keys(svc: Services) -> None:
    try:
        with svc.db.engine.connect() as conn:
            ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM jobs")]
    except sa.exc.SQLAlchemyError:
        return
    client = _redis_client()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        keys = [f"rq:{kind}:{j}" for j in chunk for kind in ("job", "results", "executions")]
        client.delete(*keys)


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that should see ``settings``."""
    env = dict(os.environ)
    env.update(
        {
            "SEEDQ_REDIS_URL": settings.redis_url,
            "SEEDQ_DATABASE_URL": settings.database_url,
            "SEEDQ_QUEUE": settings.queue,
            "SEEDQ_ROUND_SIZE": str(settings.round_size),
            "SEEDQ_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
            "SEEDQ_HEARTBEAT_TTL": str(settings.heartbeat_ttl),
            "SEEDQ_MAINTENANCE_SECONDS": str(settings.maintenance_seconds),
            "SEEDQ_DEQUEUE_TIMEOUT": str(settings.dequeue_timeout),
            "SEEDQ_MAX_ATTEMPTS": str(settings.max_attempts),
            "SEEDQ_RETRY_BACKOFF": str(settings.retry_backoff_seconds),
            "SEEDQ_SHUTDOWN_GRACE": str(settings.shutdown_grace_seconds),
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(extra)
    return env


PYTHON = sys.executable
