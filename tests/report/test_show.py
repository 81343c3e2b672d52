"""``seedq show``, ``seedq solve --show`` and the next-step hint of ``seedq run``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from seedq.cli import main
from seedq.report.terminal import BEST, LEGEND
from seedq.store.db import Database
from seedq.store.trees import batch_trees
from tests.conftest import REDIS_URL
from tests.report.conftest import Batches, job_file
from workers.testing import TEST_GENERATOR_ENV, CannedGenerator


def invoke(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--database-url", url, *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_show_prints_every_node_with_marker_score_and_figures(
    batches: Batches, db: Database
) -> None:
    code, out, err = invoke(batches.url, "show", batches.seed)
    assert code == 0, err
    trees = batch_trees(db, batches.seed)
    for tree in trees:
        assert tree.custom_id and tree.custom_id in out
        for node in tree.nodes:
            assert f"{node.node_id} " in out
        for node_id in tree.best_path:
            assert f"{node_id} {BEST}" in out
    assert out.count("score ") == sum(len(t.nodes) for t in trees)
    assert " tok acc " in out and LEGEND in out
    # the models that served the batch, first
    first = out.splitlines()[0]
    assert first == f"batch {batches.seed}  models: target tiny, draft tiny-draft (seed, cpu "\
        "float32)"
    code, out, _ = invoke(batches.url, "show", batches.ar)
    assert code == 0
    assert out.splitlines()[0] == f"batch {batches.ar}  models: target tiny, no draft (ar, cpu "\
        "float32)"


def test_show_one_tree_and_errors(batches: Batches) -> None:
    first, second = batches.custom_ids
    code, out, _ = invoke(batches.url, "show", batches.ar, second)
    assert code == 0 and second in out and first not in out
    code, _, err = invoke(batches.url, "show", "no-such-batch")
    assert code != 0 and "no batch 'no-such-batch'" in err
    code, _, err = invoke(batches.url, "show", batches.ar, "nobody")
    assert code != 0 and "no job 'nobody'" in err


def test_solve_show_draws_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("seedq.cli.solve.open_generator", lambda config: CannedGenerator(0))
    path = job_file(tmp_path / "jobs.jsonl")
    result = CliRunner().invoke(main, ["solve", str(path), "--show"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "custom-arith-1" in result.stdout and "0.1 " in result.stdout
    assert f"0 {BEST}" in result.stdout and LEGEND in result.stdout
    # under --json the trees go to stderr: stdout stays one JSON object per line
    result = CliRunner().invoke(main, ["solve", str(path), "--json", "--show"],
                                catch_exceptions=False)
    assert [json.loads(ln)["task"] for ln in result.stdout.splitlines()] == ["gsm8k", "custom"]
    assert LEGEND in result.stderr


def test_run_ends_with_the_show_and_report_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_available: None
) -> None:
    monkeypatch.setenv(TEST_GENERATOR_ENV, "canned")
    monkeypatch.setenv("SEEDQ_QUEUE", f"seedq-test-{uuid.uuid4().hex[:10]}")
    url = f"sqlite:///{tmp_path / 'run.sqlite'}"
    path = job_file(tmp_path / "jobs.jsonl")
    result = CliRunner().invoke(main, ["--database-url", url, "--redis-url", REDIS_URL,
                                       "run", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    (batch,) = {w for w in result.stderr.split() if w.startswith("b20")}
    assert f"seedq show {batch}\n" in result.stderr
    assert f"seedq report {batch} -o report.html" in result.stderr
    code, out, _ = invoke(url, "show", batch)
    assert code == 0 and "custom-arith-1" in out
