"""A reduced chaos run (bench/chaos.py): private Redis and PostgreSQL on loopback, workers
killed with SIGKILL mid-batch, Redis restarted without its data, PostgreSQL restarted,
fuzzed submit files; every job must complete exactly once, with no duplicate or leftover
rows and nothing left in Redis."""

from __future__ import annotations

import shutil

import pytest

from bench.chaos import ChaosConfig, run_chaos

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_reduced_chaos_run_loses_and_duplicates_nothing() -> None:
    cfg = ChaosConfig(kills=4, redis_restarts=1, pg_restarts=1, fuzz_files=8, jobs=40,
                      kill_every=2.0, time_limit=240.0)
    figures = run_chaos(cfg)
    summary = {k: figures[k] for k in ("kills", "jobs", "lost", "duplicated", "leftover",
                                        "incomplete", "redis_leftover", "all_done")}
    assert figures["ok"], figures
    assert figures["kills"] == 4 and figures["redis_wipes"] == 1 and figures["pg_restarts"] == 1
    assert figures["fuzz"]["lines"] > 0 and figures["jobs"] > 40, summary
    assert figures["recovery"]["unrecovered"] == 0, figures["recovery"]
