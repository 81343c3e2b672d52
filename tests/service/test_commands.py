"""`seedq run` (with its embedded Redis fallback), `seedq workers`, `submit --wait`, cancel."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from seedq.cli import main
from seedq.service import control, oneshot
from seedq.service.context import Services
from seedq.service.worker import TreeWorker
from seedq.settings import Settings
from tests.service.helpers import SMALL, gsm8k_lines, wait_until, write_jsonl
from workers.testing import CannedGenerator

NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.mark.parametrize("prefer_server", [True, False], ids=["redis-server", "fakeredis"])
def test_run_falls_back_to_a_private_redis(tmp_path: Path, prefer_server: bool) -> None:
    """About the embedded fallback itself, so no real Redis here on purpose."""
    settings = Settings(redis_url=NO_REDIS, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(3, search=SMALL))
    plan = oneshot.RunPlan(settings, path, round_size=2)
    out = oneshot.run_file(plan, lambda: CannedGenerator(0.005), prefer_server=prefer_server)
    assert out.summary is not None and out.summary.counts == {"completed": 3}
    assert ("redis-server" if prefer_server else "fakeredis") in out.redis
    assert [r["custom_id"] for r in out.results] == ["q0", "q1", "q2"]
    assert out.database.endswith("db.sqlite")


def test_cli_run_with_the_test_generator(tmp_path: Path, settings: Settings) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [*gsm8k_lines(2), "{bad"])
    env = {
        "SEEDQ_DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite'}",
        "SEEDQ_REDIS_URL": settings.redis_url,
        "SEEDQ_QUEUE": settings.queue,
        "SEEDQ_TEST_GENERATOR": "canned",
    }
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(path), "--depth", "1"], env=env)
    assert res.exit_code == 1 and "line 3: invalid JSON" in res.output
    res = runner.invoke(main, ["run", str(path), "--depth", "1", "--skip-invalid"], env=env)
    assert res.exit_code == 0, res.output
    assert "q0: answer" in res.output and "line 3: rejected" in res.output
    assert "seedq results" in res.output


def test_workers_lists_live_workers_and_their_jobs(services: Services, tmp_path: Path) -> None:
    from seedq.service.submit import submit_file

    batch = submit_file(
        services, write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(2, search=SMALL))
    ).batch_id
    worker = TreeWorker(
        services,
        lambda: CannedGenerator(0.3),
        install_signals=False,
        round_size=1,
        name=f"w-{services.settings.queue}",
    )
    thread = threading.Thread(target=worker.work, kwargs={"burst": True}, daemon=True)
    thread.start()
    wait_until(lambda: worker.running)
    infos = wait_until(
        lambda: [w for w in control.list_workers(services) if w.name == worker.name and w.jobs]
    )
    assert infos[0].alive and infos[0].jobs[0]["batch_id"] == batch
    env = {
        "SEEDQ_DATABASE_URL": services.settings.database_url,
        "SEEDQ_REDIS_URL": services.settings.redis_url,
    }
    res = CliRunner().invoke(main, ["workers", "--json"], env=env)
    listed = {w["name"]: w for w in json.loads(res.output)}
    assert listed[worker.name]["jobs"][0]["custom_id"] in ("q0", "q1")
    res = CliRunner().invoke(main, ["cancel", batch], env=env)
    assert res.exit_code == 0 and "cancelled" in res.output
    thread.join(15)
    assert worker.name not in {w.name for w in control.list_workers(services)}


def test_submit_wait_shows_progress_until_done(services: Services, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(3, search=SMALL))
    worker = TreeWorker(services, lambda: CannedGenerator(0.01), install_signals=False)
    thread = threading.Thread(target=worker.work, daemon=True)  # a long-running worker
    thread.start()
    env = {
        "SEEDQ_DATABASE_URL": services.settings.database_url,
        "SEEDQ_REDIS_URL": services.settings.redis_url,
        "SEEDQ_QUEUE": services.settings.queue,
    }
    res = CliRunner().invoke(main, ["submit", str(path), "--wait"], env=env)
    assert res.exit_code == 0, res.output
    assert "done" in res.output and "3 jobs queued" in res.output
    assert worker.completed == 3
    worker.ask_stop()
    thread.join(10)
    assert not thread.is_alive()
