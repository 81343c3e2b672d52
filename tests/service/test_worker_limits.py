"""The worker's per-job limits: a prompt over SEEDQ_MAX_PROMPT_TOKENS (or the model's context)
and a job that pushes the worker past its memory budget fail alone, at once, never retried;
the worker goes on with the next job."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from seedq.decoding.types import GroupRequest, GroupResult
from seedq.service.context import Services
from seedq.service.guards import MB, JobTooLarge, MemoryGuard, current_rss
from seedq.service.submit import submit_file
from seedq.service.worker import TreeWorker
from seedq.settings import Settings
from seedq.store import reports
from tests.conftest import fast_settings
from tests.service.helpers import run_burst, write_jsonl
from workers.gpu import generator_factory
from workers.testing import TEST_GENERATOR_ENV, CannedGenerator

SHORT = {"breadth": 2, "depth": 1, "max_new_tokens": 4, "eval_max_new_tokens": 2}
HOG_BYTES = 400 * MB


@pytest.fixture
def settings(database_url: str, queue_name: str) -> Settings:
    return fast_settings(database_url, queue_name, max_attempts=3)


def _line(cid: str, question: str) -> dict[str, Any]:
    return {"custom_id": cid, "task": "gsm8k", "question": question, "answer": "2",
            "search": SHORT}


def _outcomes(services: Services, batch: str) -> dict[str, tuple[str, int, str | None, str]]:
    out = {}
    for kind in (False, True):
        for r in reports.iter_results(services.db, batch, errors=kind):
            first = (r.get("error") or "").splitlines()[:1]
            out[r["custom_id"]] = (r["status"], r["attempts"], r.get("error_kind"),
                                   first[0] if first else "")
    return out


def test_prompt_over_the_token_limit_fails_alone_without_retry(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [
        _line("long", "What is 1 + 1? " + "Think hard. " * 400),
        _line("short", "What is 1 + 1?"),
    ])
    batch = submit_file(services, path).batch_id
    monkeypatch.delenv(TEST_GENERATOR_ENV, raising=False)
    limited = services.settings.with_overrides(
        engine="ar", target_model="tiny", max_prompt_tokens=2000
    )
    svc = replace(services, settings=limited)
    TreeWorker(svc, generator_factory(limited), install_signals=False, round_size=1).work(
        burst=True
    )
    got = _outcomes(services, batch)
    assert got["short"][0] == "completed"
    status, attempts, kind, error = got["long"]
    assert (status, attempts, kind) == ("failed", 1, "input"), got["long"]
    assert "JobTooLarge" in error and "SEEDQ_MAX_PROMPT_TOKENS 2000" in error


class HogGenerator(CannedGenerator):
    """Answers a prompt that mentions HOG with a 400 MB thought (real, resident memory)."""

    async def generate(self, request: GroupRequest) -> GroupResult:
        result = await super().generate(request)
        if any("HOG" in p for p in request.prompts):
            huge = "x" * HOG_BYTES
            result.sequences[0] = type(result.sequences[0])(
                huge, [1], "eos", result.sequences[0].metrics
            )
        return result


def test_memory_budget_fails_the_hog_alone_and_the_worker_goes_on(
    services: Services, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [
        _line("hog", "HOG: What is 1 + 1?"),
        _line("after", "What is 1 + 1?"),
    ])
    batch = submit_file(services, path).batch_id
    budget_mb = current_rss() // MB + HOG_BYTES // MB // 2
    limited = services.settings.with_overrides(worker_memory_budget_mb=budget_mb)
    svc = replace(services, settings=limited)
    worker = run_burst(svc, HogGenerator(0.001), round_size=1)
    got = _outcomes(services, batch)
    assert got["after"][0] == "completed", got
    status, attempts, kind, error = got["hog"]
    assert (status, attempts, kind) == ("failed", 1, "input"), got["hog"]
    assert "SEEDQ_WORKER_MEMORY_BUDGET_MB" in error
    assert worker.limits.memory.victim is None


def test_memory_guard_trims_the_heap_before_failing_a_job() -> None:
    """Over the budget only by freed pages the allocator kept: after the trim the worker is
    under it, so no job fails; truly over it, the job fails (and trims stay rate-limited)."""
    rss, trims = [10 * MB], []

    def trim() -> None:
        trims.append(1)
        rss[0] = 2 * MB  # what was in use

    guard = MemoryGuard(5 * MB, rss=lambda: rss[0], trim=trim)
    guard.check("a")
    assert len(trims) == 1 and guard.victim is None
    rss[0] = 10 * MB
    with pytest.raises(JobTooLarge):  # within the interval: no second trim; over -> fails
        guard.check("a")
    assert len(trims) == 1 and guard.victim == "a"
    guard.release("a")  # its memory is to be reclaimed: the next check trims at once
    guard.check("b")
    assert len(trims) == 2 and guard.victim is None


def test_memory_guard_fails_one_job_at_a_time() -> None:
    rss = [10 * MB]
    guard = MemoryGuard(5 * MB, rss=lambda: rss[0], trim=lambda: None)
    with pytest.raises(JobTooLarge, match="over its budget of 5 MB"):
        guard.check("a")
    guard.check("b")  # "a" is being failed for it: "b" goes on
    guard.release("b")
    assert guard.victim == "a"
    guard.release("a")
    rss[0] = 1 * MB
    guard.check("b")
    MemoryGuard(0, rss=lambda: 10**12).check("c")  # 0: no guard
