"""Prometheus metrics scraped over loopback from a real ``seedq worker`` process (tiny random
models, engine ``seed``) on the real Redis and PostgreSQL, and the worker's one INFO line per
job, shown without any ``-v``."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from seedq.service.context import Services
from seedq.service.submit import submit_file
from tests.conftest import PYTHON, REPO, env_for
from tests.service.helpers import gsm8k_lines, wait_until, write_jsonl
from workers.testing import TEST_GENERATOR_ENV

SEARCH = {"breadth": 2, "depth": 2, "beam": 1, "max_new_tokens": 8, "eval_max_new_tokens": 4}
JOBS = 2
CLI = [PYTHON, "-c", "import sys; from seedq.cli import main; sys.exit(main())"]


@pytest.fixture
def database_url(pg_url: str) -> str:
    return pg_url  # PostgreSQL only: one real run is enough


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def completed(port: int) -> float:
    try:
        return value(scrape(port), "seedq_jobs_completed_total", task="gsm8k", engine="seed")
    except OSError:
        return 0.0  # not listening yet (the worker is loading its models)


def test_metrics_scraped_during_a_real_run(services: Services, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(JOBS, search=SEARCH))
    submit_file(services, path)
    port = free_port()
    env = env_for(services.settings, SEEDQ_ENGINE="seed", SEEDQ_TARGET_MODEL="tiny",
                  SEEDQ_DRAFT_MODEL="tiny-draft", SEEDQ_METRICS_ADDR="127.0.0.1")
    env.pop(TEST_GENERATOR_ENV, None)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*CLI, "worker", "--metrics-port", str(port)], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: completed(port) >= JOBS or proc.poll() is not None, timeout=180,
                       step=0.5)
            assert proc.poll() is None, log.read_text()
            samples = scrape(port)  # the worker is still running: idle, waiting for jobs
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text
    check_samples(samples, services.settings.queue)
    # one INFO line per job by default, like `rq worker`, naming its custom_id
    lines = re.findall(r"job \S+ \((q\d)\) completed: (\d+) nodes, [\d.]+s, [\d.]+ tokens/s", text)
    assert sorted(cid for cid, _ in lines) == ["q0", "q1"], text
    assert all(int(nodes) > 1 for _, nodes in lines)
    chatter = [ln for ln in text.splitlines() if " INFO " in ln and "q0" in ln]
    assert len(chatter) == 1, chatter  # no second line per job (RQ's, the tree's)


def check_samples(samples: dict, queue: str) -> None:
    job = {"task": "gsm8k", "engine": "seed"}
    assert value(samples, "seedq_jobs_started_total", **job) == JOBS
    assert value(samples, "seedq_jobs_completed_total", **job) == JOBS
    assert value(samples, "seedq_jobs_failed_total", **job) == 0
    assert value(samples, "seedq_job_seconds_count", **job) == JOBS
    assert value(samples, "seedq_job_seconds_sum", **job) > 0
    assert value(samples, "seedq_node_seconds_count", engine="seed") >= JOBS * 3
    new = value(samples, "seedq_tokens_total", engine="seed", kind="new")
    drafted = value(samples, "seedq_tokens_total", engine="seed", kind="drafted")
    accepted = value(samples, "seedq_tokens_total", engine="seed", kind="accepted")
    assert new > 0 and drafted > 0 and 0 <= accepted <= drafted
    assert value(samples, "seedq_target_forwards_total", engine="seed") > 0
    busy = ("seedq_target_busy_fraction", (("engine", "seed"),))
    assert busy in samples and 0.0 <= samples[busy] <= 1.0
    assert value(samples, "seedq_queue_depth", queue=queue) == 0
    assert value(samples, "seedq_round_size") == 4
    assert value(samples, "seedq_trees_running") == 0


def test_the_grafana_dashboard_uses_the_exported_names() -> None:
    from prometheus_client import generate_latest

    from seedq.service.events import JobEnd, JobStart
    from seedq.service.metrics import WorkerMetrics

    metrics = WorkerMetrics("w", "q", 4, lambda: 0.0, lambda: 0)
    job = JobStart("j", "c", "gsm8k", "seed", 1)
    metrics.job_started(job)
    metrics.job_ended(JobEnd(job, "completed", 1.0))
    metrics.node_done("seed", 0.1)
    metrics.tokens.labels("seed", "new").inc()
    metrics.forwards.labels("seed").inc()
    metrics.busy.labels("seed").set(0.5)
    exported = {
        s.name for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in f.samples
    }
    dashboard = (REPO / "deploy" / "grafana" / "seedq-dashboard.json").read_text()
    used = set(re.findall(r"seedq_[a-z_]+", dashboard)) - {"seedq_workers"}
    assert used and used <= exported, used - exported


def test_a_taken_metrics_port_is_one_clear_error() -> None:
    from seedq.service.metrics import MetricsError, WorkerMetrics

    first = WorkerMetrics("a", "q", 1, lambda: 0.0, lambda: 0)
    port = first.serve(0, "127.0.0.1")
    try:
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            WorkerMetrics("b", "q", 1, lambda: 0.0, lambda: 0).serve(port, "127.0.0.1")
    finally:
        first.close()
