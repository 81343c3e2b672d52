"""Recovery paths: foreign RQ workers, Redis losing its data, duplicate queue entries, worker
names of dead workers, fault classification and settings."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq.worker import SimpleWorker
from sqlalchemy import exc as sa_exc

from seedq import queue as q
from seedq.decoding.factory import LocalGenerator
from seedq.decoding.options import DecodingOptions
from seedq.service import maintenance as maint
from seedq.service.context import Services
from seedq.service.faults import FaultKind, classify
from seedq.service.maintenance import Maintenance
from seedq.service.submit import submit_file
from seedq.service.worker import TreeWorker
from seedq.settings import Settings, SettingsError
from seedq.store import repo, reports
from seedq.store.models import utcnow
from seedq.store.rows import Claimed
from tests.service.helpers import SMALL, gsm8k_lines, run_burst, wait_until, write_jsonl
from workers.testing import CannedGenerator


def submit(services: Services, tmp_path: Path, n: int) -> str:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(n, search=SMALL))
    return submit_file(services, path).batch_id


def test_a_foreign_rq_worker_cannot_lose_a_job(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = submit(services, tmp_path, 1)
    rq_worker = SimpleWorker([services.queue()], connection=services.redis, serializer=q.SERIALIZER)
    rq_worker.work(burst=True)
    job = services.queue().failed_job_registry.get_job_ids()
    assert job == [q.job_id_for(batch, 1)]
    assert reports.summarize(services.db, [batch])[0].counts == {"queued": 1}
    monkeypatch.setattr(maint, "ORPHAN_AGE_SECONDS", 0)
    report = Maintenance(services, services.queue(), "m").run()
    assert report.orphans == [q.job_id_for(batch, 1)]
    run_burst(services)
    assert reports.summarize(services.db, [batch])[0].counts == {"completed": 1}


def test_queued_jobs_come_back_after_redis_lost_its_data(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = submit(services, tmp_path, 3)
    ids = [q.job_id_for(batch, n) for n in (1, 2, 3)]
    services.redis.delete(services.queue().key, *(f"rq:job:{i}" for i in ids))  # Redis lost it
    monkeypatch.setattr(maint, "ORPHAN_AGE_SECONDS", 0)
    assert len(Maintenance(services, services.queue(), "m").run().orphans) == 3
    run_burst(services)
    assert reports.summarize(services.db, [batch])[0].counts == {"completed": 3}


def test_a_job_running_elsewhere_is_parked_until_its_worker_dies(
    services: Services, tmp_path: Path
) -> None:
    batch = submit(services, tmp_path, 1)
    job_id = q.job_id_for(batch, 1)
    claim = repo.claim_job(services.db, job_id, "elsewhere", utcnow() - timedelta(seconds=60))
    assert isinstance(claim, Claimed)
    alive = threading.Event()
    alive.set()

    def elsewhere_heartbeats() -> None:
        while alive.is_set():
            repo.heartbeat(services.db, [job_id], "elsewhere")
            time.sleep(0.1)

    beating = threading.Thread(target=elsewhere_heartbeats, daemon=True)
    beating.start()
    worker = TreeWorker(services, lambda: CannedGenerator(0.005), install_signals=False)
    thread = threading.Thread(target=worker.work, kwargs={"burst": True}, daemon=True)
    thread.start()
    # the entry is dequeued, refused (running elsewhere) and parked for a later look
    wait_until(lambda: services.queue().scheduled_job_registry.get_job_ids() == [job_id])
    time.sleep(services.settings.heartbeat_ttl + 0.5)  # long enough to be stale, were it dead
    assert worker.completed == 0 and repo.job_status(services.db, job_id) == "running"
    alive.clear()  # "elsewhere" dies: after heartbeat_ttl the job is recovered and run here
    thread.join(20)
    assert worker.completed == 1
    assert reports.summarize(services.db, [batch])[0].counts == {"completed": 1}


def test_worker_name_of_a_dead_worker_is_taken_over(services: Services) -> None:
    name = f"fixed-{services.settings.queue}"
    first = TreeWorker(services, CannedGenerator, name=name, install_signals=False)
    first.register_birth()
    live = TreeWorker(services, CannedGenerator, name=name, install_signals=False)
    with pytest.raises(ValueError, match="active worker"):
        live.register_worker()
    stale = (utcnow() - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    services.redis.hset(first.key, "last_heartbeat", stale)
    again = TreeWorker(services, CannedGenerator, name=name, install_signals=False)
    again.register_worker()
    try:
        assert services.redis.hget(again.key, "death") is None
    finally:
        again.unregister_worker()


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (matched by name)."""


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (redis.exceptions.ConnectionError("gone"), FaultKind.TRANSIENT),
        (sa_exc.OperationalError("SELECT 1", {}, Exception("server closed")), FaultKind.TRANSIENT),
        (OutOfMemoryError("CUDA out of memory. Tried to allocate"), FaultKind.TRANSIENT),
        (RuntimeError("CUDA error: out of memory"), FaultKind.TRANSIENT),
        (TimeoutError(), FaultKind.TIMEOUT),
        (
            __import__("seedq.reasoning.errors").reasoning.errors.JobSpecError("task", "unknown"),
            FaultKind.INPUT,
        ),
        (__import__("seedq.decoding.types").decoding.types.DecodingError("top_p"), FaultKind.INPUT),
        (KeyError("bug"), FaultKind.INTERNAL),
    ],
)
def test_fault_classification(exc: BaseException, kind: FaultKind) -> None:
    assert classify(exc) == kind


def test_settings_from_env() -> None:
    s = Settings.from_env({"XDG_DATA_HOME": "/data"})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.sqlite_path() == Path("/data/seedq/seedq.sqlite")  # absolute, per user
    s = Settings.from_env(
        {
            "SEEDQ_QUEUE": "gpu",
            "SEEDQ_ROUND_SIZE": "8",
            "SEEDQ_HEARTBEAT_SECONDS": "10",
            "SEEDQ_DRAFT_MODEL": "ngram",
            "SEEDQ_DATABASE_URL": "postgresql://u:secret@h/db",
        }
    )
    assert (s.queue, s.round_size, s.draft_model) == ("gpu", 8, "ngram")
    assert s.heartbeat_ttl > s.heartbeat_seconds and s.sqlite_path() is None
    assert "secret" not in str(s.describe())
    assert s.retry_delay(1) == 10.0 and s.retry_delay(3) == 40.0
    with pytest.raises(SettingsError, match="SEEDQ_ROUND_SIZE"):
        Settings.from_env({"SEEDQ_ROUND_SIZE": "zero"})
    with pytest.raises(SettingsError, match="SEEDQ_HEARTBEAT_TTL"):
        Settings.from_env({"SEEDQ_HEARTBEAT_SECONDS": "5", "SEEDQ_HEARTBEAT_TTL": "5"})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SEEDQ_PREFIX_CACHE_MB", "lots", "SEEDQ_PREFIX_CACHE_MB must be a number"),
    ("SEEDQ_PREFIX_CACHE_MB", "-1", "SEEDQ_PREFIX_CACHE_MB must be >= 0"),
    ("SEEDQ_ROUND_TOKEN_BUDGET", "0", "SEEDQ_ROUND_TOKEN_BUDGET must be >= 1"),
    ("SEEDQ_ROUND_KV_MB", "1GB", "SEEDQ_ROUND_KV_MB must be a number"),
    ("SEEDQ_PREFILL_CHUNK", "-5", "SEEDQ_PREFILL_CHUNK must be >= 0"),
    ("SEEDQ_ROUND_KV", "paged", "SEEDQ_ROUND_KV must be one of slots, dynamic"),
    ("SEEDQ_ROUND_BATCHER", "yes", "SEEDQ_ROUND_BATCHER must be one of 0, 1"),
    ("SEEDQ_PREFILL_MIX", "on", "SEEDQ_PREFILL_MIX must be one of 0, 1"),
    ("SEEDQ_ROUND_SIZE", "six", "SEEDQ_ROUND_SIZE must be an integer, got 'six'"),
    ("SEEDQ_HEARTBEAT_SECONDS", "1s", "SEEDQ_HEARTBEAT_SECONDS must be a number, got '1s'"),
    ("SEEDQ_HEARTBEAT_SECONDS", "0.01", "SEEDQ_HEARTBEAT_SECONDS must be >= 0.05, got 0.01"),
    ("SEEDQ_SEED_THREADS", "2", "SEEDQ_SEED_THREADS must be VERIFIER,DRAFTER"),
    ("SEEDQ_ATTENTION", "flash", "SEEDQ_ATTENTION must be one of packed, sdpa"),
])
def test_decoding_variables_are_checked_with_the_settings(name: str, value: str,
                                                          message: str) -> None:
    """Read once with the settings (a bad value names its variable at start)."""
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({name: value})


def test_decoding_variables_reach_the_settings_once() -> None:
    good = {"SEEDQ_PREFIX_CACHE_MB": "64", "SEEDQ_ROUND_TOKEN_BUDGET": "32",
            "SEEDQ_ROUND_KV_MB": "0.5", "SEEDQ_ROUND_KV": "Dynamic", "SEEDQ_PREFILL_CHUNK": "0",
            "SEEDQ_ROUND_BATCHER": "0", "SEEDQ_SEED_THREADS": "1,1", "SEEDQ_ATTENTION": "sdpa",
            "SEEDQ_CACHE_DIR": "/models", "SEEDQ_PREFILL_MIX": "0"}
    decoding = Settings.from_env(good).decoding
    assert decoding == DecodingOptions(
        prefix_cache_mb=64, round_token_budget=32, round_kv_mb=0.5, round_kv="dynamic",
        prefill_chunk=0, round_batcher=False, seed_threads=(1, 1), attention="sdpa",
        cache_dir="/models", prefill_mix=False)
    assert (decoding.prefix_cache_bytes, decoding.round_kv_bytes) == (64 << 20, 1 << 19)
    assert decoding.model_cache_dir == Path("/models")
    defaults = Settings.from_env({"XDG_CACHE_HOME": "/cache"})
    assert defaults.decoding == DecodingOptions(cache_dir="/cache/seedq")
    assert Settings.from_env({}).decoding.model_cache_dir == Path.home() / ".cache" / "seedq"
    assert Settings.from_env({}).describe()["decoding"]["round_token_budget"] == 64


def test_the_worker_builds_its_generator_with_the_settings_decoding_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The options travel from the settings to the round batcher and the prefix caches; the
    environment is not read again (a variable set afterwards changes nothing)."""
    from workers import gpu, testing

    monkeypatch.delenv(testing.TEST_GENERATOR_ENV, raising=False)
    settings = Settings(engine="batch", target_model="tiny",
                        decoding=DecodingOptions(round_token_budget=5, prefix_cache_mb=1))
    monkeypatch.setenv("SEEDQ_ROUND_TOKEN_BUDGET", "9")
    generator = gpu.generator_factory(settings)()
    assert isinstance(generator, LocalGenerator)
    try:
        assert generator.rounds is not None and generator.rounds.budget == 5
        assert generator.runtime.prefix.target.limit_bytes == 1 << 20
    finally:
        generator.close()
