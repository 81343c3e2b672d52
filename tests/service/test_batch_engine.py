"""Engine options per batch: stored at submit, refused when bad (naming the flag), served by
one worker over its own tiny models (derived generators), or failed without retries by a
worker that lacks the draft model they need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from seedq.cli import main
from seedq.decoding.config import EngineConfig
from seedq.decoding.engines.seed import SeedScheduler
from seedq.decoding.factory import load_generator
from seedq.decoding.types import DecodingError
from seedq.service.context import Services
from seedq.service.engines import EngineUnavailable, GeneratorPool
from seedq.service.submit import SubmitError, submit_file
from seedq.service.worker import TreeWorker
from seedq.store import reports
from tests.conftest import REDIS_URL, env_for
from tests.service.helpers import gsm8k_lines, rows, scalar, write_jsonl
from workers.gpu import generator_factory
from workers.testing import TEST_GENERATOR_ENV, CannedGenerator

TINY = {"breadth": 2, "depth": 1, "beam": 1, "max_new_tokens": 6, "eval_max_new_tokens": 3}


def _file(tmp_path: Path, name: str, n: int) -> Path:
    return write_jsonl(tmp_path / name, gsm8k_lines(n, prefix=name[:2], search=TINY))


def _stored_engine(services: Services, batch: str) -> Any:
    value = scalar(services, "SELECT engine FROM batches WHERE id = :b", b=batch)
    return json.loads(value) if isinstance(value, str) else value


def test_submit_stores_engine_options(services: Services, tmp_path: Path) -> None:
    env = env_for(services.settings)
    path = _file(tmp_path, "in.jsonl", 2)
    flags = ["--engine", "seed", "--verify-batch", "2", "--k-config", "2,1,1", "--draft-batch", "3"]
    res = CliRunner().invoke(main, ["submit", str(path), *flags], env=env)
    assert res.exit_code == 0, res.output
    batch = res.output.strip().splitlines()[-1]
    want = {"engine": "seed", "k_config": [2, 1, 1], "verify_batch": 2, "draft_batch": 3}
    assert f"engine options {json.dumps(want)}" in res.output
    assert _stored_engine(services, batch) == want
    res = CliRunner().invoke(main, ["status", batch, "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["engine_options"] == want
    plain = submit_file(services, path).batch_id  # no options: SQL NULL, the workers' engine
    assert scalar(services, "SELECT COUNT(*) FROM batches WHERE engine IS NULL") == 1
    assert reports.summarize(services.db, [plain])[0].engine_options is None
    with pytest.raises(SubmitError, match="--draft-model: not an engine option"):
        submit_file(services, path, engine={"draft_model": "other"})


@pytest.mark.parametrize(
    ("flags", "flag", "words"),
    [
        (["--engine", "fast"], "--engine", "'fast' is not one of 'ar', 'batch'"),
        (["--k-config", "2,0"], "--k-config", "each >= 1"),
        (["--k-config", "two"], "--k-config", "expected integers"),
        (["--verify-batch", "0"], "--verify-batch", "must be in 1..256"),
        (["--engine", "mcsd", "--mcsd-rule", "maybe"], "--mcsd-rule", "is not one of 'with'"),
        (["--engine", "ar", "--gamma", "4"], "--gamma", "does not apply to engine 'ar'"),
        (["--engine", "sd", "--verify-batch", "2"], "--verify-batch", "only to seed"),
        (["--gamma", "3"], "--gamma", "give --engine too"),
        (["--engine", "seed", "--gamma", "3", "--k-config", "2,1"], "--gamma",
         "cannot be given together with --k-config"),
    ],
)
def test_bad_engine_options_are_refused_naming_the_flag(
    services: Services, tmp_path: Path, flags: list[str], flag: str, words: str
) -> None:
    path = _file(tmp_path, "in.jsonl", 1)
    res = CliRunner().invoke(main, ["submit", str(path), *flags], env=env_for(services.settings))
    assert res.exit_code == 2, res.output
    assert flag in res.output and words in res.output
    assert scalar(services, "SELECT COUNT(*) FROM batches") == 0


def _generations(services: Services, batch: str) -> list[Any]:
    return rows(
        services,
        "SELECT g.engine, g.drafted_tokens, g.new_tokens FROM generations g"
        " JOIN jobs j ON j.id = g.job_id WHERE j.batch_id = :b",
        b=batch,
    )


def tiny_worker(services: Services, monkeypatch: pytest.MonkeyPatch, **models: str) -> TreeWorker:
    """A burst worker loading real tiny models through the worker settings (engine ``ar``)."""
    monkeypatch.delenv(TEST_GENERATOR_ENV, raising=False)
    settings = services.settings.with_overrides(engine="ar", **models)
    worker = TreeWorker(
        services, generator_factory(settings), install_signals=False, round_size=5
    )
    worker.work(burst=True)
    return worker


def test_one_worker_serves_the_engine_of_each_batch(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = submit_file(services, _file(tmp_path, "sd.jsonl", 2), engine={"engine": "sd"})
    seed = submit_file(
        services, _file(tmp_path, "seed.jsonl", 2), engine={"engine": "seed", "verify_batch": 2}
    )
    plain = submit_file(services, _file(tmp_path, "ar.jsonl", 1))
    worker = tiny_worker(services, monkeypatch, target_model="tiny", draft_model="tiny-draft")
    for report, engine in ((sd, "sd"), (seed, "seed"), (plain, "ar")):
        summary = reports.summarize(services.db, [report.batch_id])[0]
        assert summary.counts == {"completed": report.accepted}, engine
        gens = _generations(services, report.batch_id)
        assert gens and {g[0] for g in gens} == {engine}
        assert all(g[2] >= 1 for g in gens)
        assert (sum(g[1] for g in gens) > 0) == (engine != "ar"), engine
        (record, *_) = reports.iter_results(services.db, report.batch_id, errors=False)
        assert record["metrics"]["engine"] == engine
    derived = {c.engine: c for c in worker.generators.derived}
    assert set(derived) == {"sd", "seed"} and derived["seed"].verify_batch == 2
    scheduler = worker.generators.derived[derived["seed"]].inner.engine  # type: ignore[attr-defined]
    assert isinstance(scheduler, SeedScheduler)
    assert not any(t.is_alive() for t in scheduler._threads)  # closed at shutdown


def test_worker_without_draft_fails_sd_batch_clearly(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = submit_file(services, _file(tmp_path, "sd.jsonl", 2), engine={"engine": "sd"})
    tiny_worker(services, monkeypatch, target_model="tiny")
    summary = reports.summarize(services.db, [report.batch_id])[0]
    assert summary.counts == {"failed": 2}
    errors = list(reports.iter_results(services.db, report.batch_id, errors=True))
    for record in errors:
        assert record["attempts"] == 1 and record["error_kind"] == "input"
        first = record["error"].splitlines()[0]
        assert "EngineUnavailable" in first and "'sd' needs a draft model" in first
        assert "SEEDQ_DRAFT_MODEL" in first and "--queue" in first and "no draft model" in first
    assert scalar(services, "SELECT COUNT(*) FROM generations") == 0


def test_run_gives_the_batch_its_speculation_flags(tmp_path: Path, queue_name: str) -> None:
    database = tmp_path / "run.sqlite"
    env = {
        "SEEDQ_DATABASE_URL": f"sqlite:///{database}",
        "SEEDQ_REDIS_URL": REDIS_URL,
        "SEEDQ_QUEUE": queue_name,
        "SEEDQ_TARGET_MODEL": "tiny",
        "SEEDQ_DRAFT_MODEL": "tiny-draft",
        TEST_GENERATOR_ENV: "",  # the real tiny models
    }
    path = _file(tmp_path, "in.jsonl", 1)
    flags = ["--engine", "sd", "--gamma", "2"]
    res = CliRunner().invoke(main, ["run", str(path), *flags], env=env)
    assert res.exit_code == 0, res.output
    with sa.create_engine(f"sqlite:///{database}").connect() as conn:
        (engine,) = conn.exec_driver_sql("SELECT engine FROM batches").scalars().all()
        gens = conn.exec_driver_sql("SELECT engine, drafted_tokens FROM generations").all()
    assert json.loads(engine) == {"engine": "sd", "gamma": 2}
    assert {g[0] for g in gens} == {"sd"} and sum(g[1] for g in gens) > 0
    res = CliRunner().invoke(main, ["run", str(path), "--gamma", "0"], env=env)
    assert res.exit_code == 2 and "--gamma" in res.output


def test_generator_pool_shares_one_generator_per_config() -> None:
    base = load_generator(EngineConfig(engine="ar", target="tiny", draft="tiny-draft"))
    pool = GeneratorPool(base, "w1")
    try:
        assert pool.for_options(None) is pool.base is pool.for_options({"engine": "ar"})
        seed = pool.for_options({"engine": "seed", "verify_batch": 2})
        assert pool.for_options({"verify_batch": 2, "engine": "seed"}) is seed
        assert pool.for_options({"engine": "mcsd", "k_config": [2, 1]}) is not seed
        assert len(pool.derived) == 2
        with pytest.raises(DecodingError, match="unknown engine options: draft") as info:
            pool.for_options({"draft": "other"})  # a batch never names models
        assert not isinstance(info.value, EngineUnavailable)
    finally:
        pool.close()
    canned = GeneratorPool(CannedGenerator(0.0), "w2")
    with pytest.raises(EngineUnavailable, match="cannot switch engines"):
        canned.for_options({"engine": "sd"})
