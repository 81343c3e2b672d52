"""One real tiny-model batch pair per database, shared by every report test.

The same two job lines (a GSM8K problem and a custom task) are submitted twice: once with
``--engine ar``, once with ``--engine seed``; one in-process burst worker with the random
2-layer ``tiny`` target and ``tiny-draft`` draft works both off. Redis is fakeredis (the
report only reads SQL); the database is SQLite, then a fresh PostgreSQL schema.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import pytest
import sqlalchemy as sa

from seedq.service.context import open_services
from seedq.service.submit import submit_file
from seedq.service.worker import TreeWorker
from seedq.store import migrate
from seedq.store.db import Database
from tests.conftest import REPO, fast_settings, pg_schema_url

SAMPLES = REPO / "seedq" / "data" / "samples"
SEARCH = {"breadth": 2, "depth": 2, "max_new_tokens": 6, "eval_max_new_tokens": 3}
LINES = (("gsm8k_demo.jsonl", "gsm8k"), ("custom_demo.jsonl", "custom"))


@dataclass(frozen=True)
class Batches:
    url: str
    ar: str  # the baseline
    seed: str
    custom_ids: tuple[str, ...]


def job_file(path: Path) -> Path:
    lines = []
    for name, task in LINES:
        with (SAMPLES / name).open(encoding="utf-8") as handle:
            line = json.loads(handle.readline())
        lines.append({**line, "task": task, "search": {**line.get("search", {}), **SEARCH}})
    path.write_text("".join(json.dumps(ln) + "\n" for ln in lines), encoding="utf-8")
    return path


def run_pair(url: str, folder: Path) -> Batches:
    from seedq.decoding.config import EngineConfig
    from seedq.decoding.factory import load_generator

    db = Database(url)
    migrate.upgrade(db)
    db.close()
    settings = fast_settings(url, f"seedq-report-{uuid.uuid4().hex[:8]}")
    services = open_services(settings, redis=fakeredis.FakeRedis())
    try:
        path = job_file(folder / "jobs.jsonl")
        ar = submit_file(services, path, engine={"engine": "ar"}).batch_id
        seed = submit_file(services, path, engine={"engine": "seed"}).batch_id
        generator = load_generator(EngineConfig(engine="seed", target="tiny", draft="tiny-draft"))
        TreeWorker(services, lambda: generator, install_signals=False).work(burst=True)
    finally:
        services.close()
    ids = tuple(_custom_id(json.loads(ln)) for ln in path.read_text().splitlines())
    return Batches(url, ar, seed, ids)


def _custom_id(line: dict[str, str]) -> str:
    return line.get("custom_id") or line["id"]


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def batches(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Batches]:
    folder = tmp_path_factory.mktemp("report")
    if request.param == "sqlite":
        yield run_pair(f"sqlite:///{folder / 'seedq.sqlite'}", folder)
        return
    engine: sa.Engine = request.getfixturevalue("pg_engine")
    schema = f"seedq_t_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield run_pair(pg_schema_url(schema), folder)
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def db(batches: Batches) -> Iterator[Database]:
    database = Database(batches.url)
    yield database
    database.close()
