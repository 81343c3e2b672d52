"""`seedq status` (table, --json batch object, --watch), `submit --wait` and `status` when no
worker listens on the queue, rejected lines keeping their custom_id, the worker's job line
and -q, and the progress bars (drawn on a terminal only)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from seedq.cli import main, monitor
from seedq.cli.progress import TreeProgress
from seedq.service import oneshot
from seedq.service.context import Services
from seedq.service.submit import submit_file
from tests.conftest import PYTHON, REPO, env_for
from tests.service.helpers import SMALL, gsm8k_lines, run_burst, write_jsonl
from workers.testing import CannedGenerator

CLI = [PYTHON, "-c", "import sys; from seedq.cli import main; sys.exit(main())"]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'seedq.sqlite'}"  # the CLI shape; the store is tested apart


def cli_env(services: Services) -> dict[str, str]:
    s = services.settings
    return {"SEEDQ_DATABASE_URL": s.database_url, "SEEDQ_REDIS_URL": s.redis_url,
            "SEEDQ_QUEUE": s.queue}


def submit(services: Services, tmp_path: Path, n: int = 2) -> str:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(n, search=SMALL))
    return submit_file(services, path).batch_id


def test_status_of_a_batch_nobody_works_on(services: Services, tmp_path: Path) -> None:
    batch = submit(services, tmp_path)
    res = CliRunner().invoke(main, ["status", batch], env=cli_env(services))
    assert res.exit_code == 0, res.output
    header, _, row = res.stdout.splitlines()[:3]
    assert header.split()[:3] == ["batch", "task", "engine"]
    assert header.split()[-2:] == ["created", "finished"]
    assert "gsm8k" in row and "worker" in row and "no worker" in row
    assert f"no live worker listens on queue {services.settings.queue}" in res.stderr
    res = CliRunner().invoke(main, ["status", batch, "--json"], env=cli_env(services))
    obj = json.loads(res.stdout)
    assert obj["id"] == batch and obj["object"] == "batch" and obj["status"] == "queued"
    assert obj["workers_listening"] is False and obj["in_progress_at"] is None


def test_status_json_is_one_batch_object(services: Services, tmp_path: Path) -> None:
    bad = {"custom_id": "broken", "task": "gsm8k"}  # no question: rejected, keeps its id
    dup = {**gsm8k_lines(1)[0], "question": "again"}  # duplicate custom_id q0: no id kept
    path = write_jsonl(tmp_path / "in.jsonl", [*gsm8k_lines(2, search=SMALL), bad, dup])
    batch = submit_file(services, path, skip_invalid=True).batch_id
    run_burst(services)
    res = CliRunner().invoke(main, ["status", batch, "--json"], env=cli_env(services))
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert isinstance(obj, dict) and obj["object"] == "batch" and obj["id"] == batch
    assert obj["status"] == "completed" and obj["input_file_id"] == str(path)
    assert obj["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert obj["created_at"] <= obj["in_progress_at"] <= obj["completed_at"]
    assert obj["failed_at"] is None and obj["cancelled_at"] is None
    assert obj["tasks"] == ["gsm8k"] and obj["engine"] == "worker"
    listed = CliRunner().invoke(main, ["status", "--json"], env=cli_env(services))
    assert [b["id"] for b in json.loads(listed.stdout)] == [batch]
    res = CliRunner().invoke(main, ["results", batch, "--errors"], env=cli_env(services))
    errors = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(e["line"], e["custom_id"]) for e in errors] == [(3, "broken"), (4, None)]


def test_status_watch_stops_when_the_batch_is_done(services: Services, tmp_path: Path) -> None:
    batch = submit(services, tmp_path)
    run_burst(services)
    res = CliRunner().invoke(main, ["status", batch, "--watch", "--interval", "0.1"],
                             env=cli_env(services))
    assert res.exit_code == 0, res.output
    assert res.stdout.count("Ctrl-C to stop") == 1 and "done" in res.stdout


def test_watch_redraws_until_done(capsys: pytest.CaptureFixture[str]) -> None:
    frames = iter([("frame 1", False), ("frame 2", False), ("frame 3", True)])
    monitor.watch(lambda: next(frames), 0.01)
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if ln.startswith("frame")] == [
        "frame 1", "frame 2", "frame 3"]


def test_submit_wait_says_no_worker_listens(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(2, search=SMALL))
    looked = threading.Event()
    listened = monitor.listened_queues

    def looking(svc: Services) -> set[str]:
        found = listened(svc)
        looked.set()
        return found

    monkeypatch.setattr(monitor, "listened_queues", looking)

    def late_worker() -> None:  # comes once `submit --wait` looked for one
        looked.wait(60)
        run_burst(services)

    thread = threading.Thread(target=late_worker, daemon=True)
    thread.start()
    res = CliRunner().invoke(main, ["submit", str(path), "--wait"], env=cli_env(services))
    thread.join(30)
    assert res.exit_code == 0, res.output
    queue = services.settings.queue
    assert f"waiting: no live worker listens on queue {queue}" in res.stderr


def test_worker_logs_a_line_per_job_unless_quiet(services: Services, tmp_path: Path) -> None:
    submit(services, tmp_path, 1)
    env = env_for(services.settings, SEEDQ_TEST_GENERATOR="canned")
    quiet = subprocess.run([*CLI, "worker", "--burst", "-q"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert quiet.returncode == 0, quiet.stderr
    assert "worker done: 1 job(s) completed" in quiet.stderr and "seedq.jobs" not in quiet.stderr
    submit(services, tmp_path, 1)
    loud = subprocess.run([*CLI, "worker", "--burst"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert loud.returncode == 0, loud.stderr
    assert re.search(r"INFO seedq\.jobs: job \S+ \(q0\) completed: \d+ nodes, [\d.]+s, "
                     r"[\d.]+ tokens/s", loud.stderr), loud.stderr


def test_progress_is_drawn_on_a_terminal_only(services: Services, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(3, search=SMALL))
    shown = io.StringIO()
    bar = TreeProgress(None, "trees", Console(file=shown, force_terminal=True, width=100))
    plan = oneshot.RunPlan(services.settings, path, round_size=2)
    with bar:
        oneshot.run_file(plan, lambda: CannedGenerator(0.005), listeners=(bar.listener(),))
    assert "3/3" in shown.getvalue() and "tokens/s" in shown.getvalue() and bar.tokens > 0
    piped = io.StringIO()
    with TreeProgress(3, "trees", Console(file=piped, force_terminal=False)) as off:
        off.advance(3)
        off.add_tokens(10)
    assert piped.getvalue() == ""
