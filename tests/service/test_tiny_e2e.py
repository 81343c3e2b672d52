"""submit -> worker process -> results with REAL tiny models (engine ``seed``: random 2-layer
Llama target and draft) on the real Redis and on SQLite and PostgreSQL. The garbage the
models write must end as complete trees, one ``nodes`` row per tree node and one
``generations`` row per generated sequence, with acceptance metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from seedq.reasoning import JobSpec, TreeResult
from seedq.service.context import Services
from seedq.service.submit import submit_file
from seedq.store import reports
from tests.conftest import PYTHON, REPO, env_for
from tests.reasoning.shapes import check_tree, sequence_records
from tests.service.helpers import rows, write_jsonl
from workers.testing import TEST_GENERATOR_ENV

SAMPLES = REPO / "seedq" / "data" / "samples"
SHORT = {"max_new_tokens": 8, "eval_max_new_tokens": 4}
SEARCHES = {
    "gsm8k": {"breadth": 2, "depth": 2},
    "custom": {"breadth": 2, "depth": 2, "beam": 2, "evaluator": "vote", "vote_samples": 2},
    "creative_writing": {"breadth": 2, "depth": 2, "value_samples": 2},
    "blocksworld": {"search": "dfs", "breadth": 2, "depth": 2, "generator": "propose",
                    "node_budget": 3},
}


def job_lines() -> list[dict[str, Any]]:
    lines = []
    for task, search in SEARCHES.items():
        with (SAMPLES / f"{task}_demo.jsonl").open(encoding="utf-8") as handle:
            line = json.loads(handle.readline())
        lines.append({**line, "task": task, "search": {**search, **SHORT}})
    return lines


def run_tiny_worker(services: Services, tmp_path: Path) -> None:
    env = env_for(
        services.settings,
        SEEDQ_ENGINE="seed",
        SEEDQ_TARGET_MODEL="tiny",
        SEEDQ_DRAFT_MODEL="tiny-draft",
        SEEDQ_ROUND_SIZE="4",
    )
    env.pop(TEST_GENERATOR_ENV, None)  # the real engine, not the canned double
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [PYTHON, "-m", "workers.gpu", "-v", "--burst"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False,
        )
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text
    assert "canned" not in text


def test_tiny_models_end_to_end(services: Services, tmp_path: Path) -> None:
    batch = submit_file(services, write_jsonl(tmp_path / "in.jsonl", job_lines())).batch_id
    run_tiny_worker(services, tmp_path)
    assert reports.summarize(services.db, [batch])[0].counts == {"completed": len(SEARCHES)}
    results = list(reports.iter_results(services.db, batch, errors=False))
    assert [r["task"] for r in results] == list(SEARCHES)
    for record in results:
        assert record["status"] == "completed" and record["attempts"] == 1
        (payload,) = rows(services, "SELECT payload FROM jobs WHERE id = :i", i=record["job_id"])
        spec = JobSpec.from_json(_json(payload[0]))
        result = TreeResult.from_json(record)
        check_tree(result.tree, spec.search)
        assert result.metrics["engine"] == "seed"
        # what served the job (seedq.service.usage), exported by ``seedq results`` too
        assert record["models"] == {"target": "tiny", "draft": "tiny-draft", "engine": "seed",
                                    "device": "cpu", "dtype": "float32",
                                    "generator": "LocalGenerator"}
        busy = record["target_busy"]
        assert busy["groups"] > 0 and 0 < busy["fraction"] <= 1
        assert busy["job_seconds"] == record["wall_seconds"]
        check_node_rows(services, record["job_id"], result)
        check_generation_rows(services, record["job_id"], result)
    shared = rows(services, "SELECT strategy, shared FROM generations WHERE node_id IS NULL")
    assert {r[0] for r in shared} == {"vote", "propose"} and all(r[1] == 2 for r in shared)


def check_node_rows(services: Services, job_id: str, result: TreeResult) -> None:
    stored = rows(
        services, "SELECT node_id, kind, failure, score FROM nodes WHERE job_id = :i", i=job_id
    )
    assert sorted(r[0] for r in stored) == sorted(n.node_id for n in result.tree.nodes)
    by_id = {r[0]: tuple(r[1:]) for r in stored}
    for node in result.tree.nodes:
        assert by_id[node.node_id] == (node.kind, node.failure, node.score)


def check_generation_rows(services: Services, job_id: str, result: TreeResult) -> None:
    stored = rows(
        services,
        "SELECT gen_key, node_id, shared, engine, role, new_tokens, drafted_tokens,"
        " accepted_tokens, target_forwards, wall_seconds FROM generations WHERE job_id = :i",
        i=job_id,
    )
    records = sequence_records(result.tree)
    sequences = sum(p["sequences"] for p in result.metrics["phases"].values())
    assert len(stored) == len(records) == sequences
    assert sorted(r[0] for r in stored) == sorted(f"{g}#{i}" for g, i in records)
    for key, node_id, shared, engine, role, new, drafted, accepted, forwards, wall in stored:
        assert engine == "seed" and role in ("thought", "evaluation", "solution", "judge")
        assert (node_id is None) == (shared > 1), key
        assert drafted >= accepted >= 0 and forwards >= 1 and new >= 1 and wall > 0, key
    assert sum(r[6] for r in stored) > 0  # the draft model did draft
    assert sum(r[5] for r in stored) == result.metrics["total"]["new_tokens"]
    assert sum(r[7] for r in stored) == result.metrics["total"]["accepted_tokens"]


def _json(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else dict(json.loads(value))
