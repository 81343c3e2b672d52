"""A job that runs past the job timeout really frees the worker: its group stops at the next
forward (it runs in asyncio.to_thread, holding the target), the job is failed as a timeout,
and the worker completes the next job instead of waiting for the abandoned group."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from seedq.decoding.config import EngineConfig
from seedq.decoding.engines import ar
from seedq.decoding.factory import load_generator
from seedq.decoding.types import GroupRequest
from seedq.service.context import Services
from seedq.service.submit import submit_file
from tests.service.helpers import gsm8k_lines, rows, run_burst, write_jsonl

SLOW_STEP = 0.1  # seconds per target forward of the slow job's groups
SLOW_TOKENS = 200  # its groups would take SLOW_STEP * SLOW_TOKENS * 2 = 40 s


class SlowGroups:
    """Makes every forward of the groups of long sequences slow (a group runs in one
    thread: the flag is set per thread when ``ar`` prepares the group)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
        self.local = threading.local()
        real = ar.prepare_group

        def prepare(runtime: Any, request: GroupRequest) -> Any:
            self.local.slow = request.params_for(0).max_new_tokens >= SLOW_TOKENS
            return real(runtime, request)

        monkeypatch.setattr(ar, "prepare_group", prepare)
        self.handle = module.register_forward_pre_hook(self.step)

    def step(self, module: Any, args: Any) -> None:
        if getattr(self.local, "slow", False):
            time.sleep(SLOW_STEP)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_timed_out_job_frees_the_worker_for_the_next(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    search = {"breadth": 2, "depth": 1, "beam": 1, "eval_max_new_tokens": 3}
    slow = write_jsonl(tmp_path / "slow.jsonl",
                       gsm8k_lines(1, prefix="s", search={**search, "max_new_tokens": SLOW_TOKENS}))
    quick = write_jsonl(tmp_path / "quick.jsonl",
                        gsm8k_lines(1, prefix="q", search={**search, "max_new_tokens": 6}))
    first = submit_file(services, slow).batch_id
    second = submit_file(services, quick).batch_id
    generator = load_generator(EngineConfig(engine="ar", target="tiny"))
    hooks = SlowGroups(monkeypatch, generator.runtime.target.model)
    services = replace(services, settings=services.settings.with_overrides(job_timeout=2))
    began = time.monotonic()
    try:
        worker = run_burst(services, generator, round_size=1)
    finally:
        hooks.handle.remove()
    outcome = {
        r[0]: (r[1], r[2])
        for r in rows(services, "SELECT batch_id, status, error_kind FROM jobs")
    }
    assert outcome == {first: ("failed", "timeout"), second: ("completed", None)}
    assert worker.completed == 1
    assert time.monotonic() - began < 20  # never waited for the abandoned group
