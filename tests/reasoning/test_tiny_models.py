"""Whole trees with REAL tiny models (random 2-layer Llamas, in-process tokenizer) through
``seedq.decoding.factory.load_generator``: every task, BFS and DFS, sample and propose, value
and vote, engines ``seed`` and ``ar``. The models write garbage, which must become recorded
failures and unparsed judgements in a tree of exactly the asked shape, never a crash."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from seedq.cli import main
from seedq.decoding.config import EngineConfig
from seedq.decoding.factory import LocalGenerator, load_generator
from seedq.decoding.types import GroupRequest, GroupResult
from seedq.reasoning import JobSpec, TreeResult, parse_job, run_tree
from tests.reasoning.shapes import check_tree, sequence_records

SAMPLES = Path(__file__).resolve().parents[2] / "seedq" / "data" / "samples"
SHORT = {"max_new_tokens": 8, "eval_max_new_tokens": 4}
PROPOSE = {"propose": "Task: {input}\nSteps:\n{state}\nList {n} different next steps."}


def sample_line(task: str) -> dict[str, Any]:
    with (SAMPLES / f"{task}_demo.jsonl").open(encoding="utf-8") as handle:
        return {**json.loads(handle.readline()), "task": task}


class Counting:
    """Wraps a generator; counts the groups and sequences it returned."""

    def __init__(self, inner: LocalGenerator) -> None:
        self.inner = inner
        self.groups = 0
        self.sequences = 0

    async def generate(self, request: GroupRequest) -> GroupResult:
        result = await self.inner.generate(request)
        self.groups += 1
        self.sequences += len(result.sequences)
        return result


@pytest.fixture(scope="module")
def generators() -> Iterator[dict[str, LocalGenerator]]:
    made = {
        "seed": load_generator(EngineConfig(engine="seed", target="tiny", draft="tiny-draft")),
        "ar": load_generator(EngineConfig(engine="ar", target="tiny")),
    }
    yield made
    for generator in made.values():
        generator.close()


# (case id, task, search, engine)
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("gsm8k-bfs-sample-value", "gsm8k", {"breadth": 2, "depth": 2}, "seed"),
    ("gsm8k-dfs-propose-vote-budget", "gsm8k",
     {"search": "dfs", "breadth": 3, "depth": 2, "node_budget": 2, "generator": "propose",
      "evaluator": "vote", "vote_samples": 2}, "seed"),
    ("creative-bfs-sample-value-judged", "creative_writing",
     {"breadth": 2, "depth": 2, "value_samples": 2}, "seed"),
    ("creative-dfs-propose-vote", "creative_writing",
     {"search": "dfs", "breadth": 2, "depth": 2, "generator": "propose", "evaluator": "vote",
      "vote_samples": 2, "value_threshold": 0.0}, "seed"),
    ("blocksworld-bfs-propose-vote", "blocksworld",
     {"breadth": 2, "depth": 2, "generator": "propose", "evaluator": "vote",
      "vote_samples": 2}, "seed"),
    ("custom-bfs-sample-vote-beam2", "custom",
     {"breadth": 2, "depth": 2, "beam": 2, "evaluator": "vote", "vote_samples": 2}, "seed"),
    ("custom-bfs-propose-value", "custom",
     {"breadth": 2, "depth": 2, "beam": 2, "generator": "propose", "value_samples": 2}, "seed"),
    ("custom-dfs-sample-value", "custom",
     {"search": "dfs", "breadth": 2, "depth": 2, "node_budget": 3}, "seed"),
    ("custom-bfs-sample-value-ar", "custom", {"breadth": 2, "depth": 2, "beam": 2}, "ar"),
]


def spec_for(task: str, search: dict[str, Any]) -> JobSpec:
    line = sample_line(task)
    if task == "custom":
        line["templates"] = {**line["templates"], **PROPOSE}
    line["search"] = {**search, **SHORT}
    return parse_job(line)


def solve(task: str, search: dict[str, Any], generator: Counting) -> TreeResult:
    return asyncio.run(run_tree(spec_for(task, search), generator))


@pytest.mark.parametrize(("task", "search", "engine"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_tiny_model_tree(task: str, search: dict[str, Any], engine: str,
                         generators: dict[str, LocalGenerator]) -> None:
    counting = Counting(generators[engine])
    result = solve(task, search, counting)
    check_tree(result.tree, spec_for(task, search).search)
    # every generated sequence is on the tree exactly once, with its own metrics
    records = sequence_records(result.tree)
    phases = result.metrics["phases"]
    assert len(records) == counting.sequences == sum(p["sequences"] for p in phases.values())
    assert sum(p["groups"] for p in phases.values()) == counting.groups
    assert sum(r["metrics"]["new_tokens"] for r in records.values()) \
        == result.metrics["total"]["new_tokens"] > 0
    assert result.metrics["engine"] == engine
    drafted = sum(r["metrics"]["drafted_tokens"] for r in records.values())
    assert drafted > 0 if engine == "seed" else drafted == 0
    assert TreeResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_garbage_steps_are_recorded_failures(generators: dict[str, LocalGenerator]) -> None:
    """gsm8k and blocksworld need a well-formed step: garbage fails every thought, the search
    stops and the solution is written from the root."""
    for task in ("gsm8k", "blocksworld"):
        result = solve(task, {"breadth": 2, "depth": 2}, Counting(generators["seed"]))
        thoughts = result.tree.at_depth(1)
        assert len(thoughts) == 2 and all(n.failure for n in thoughts), task
        assert result.metrics["failed_nodes"] == 2
        assert result.tree.best_path == ("0", "0.s")


def test_custom_tree_is_full_width(generators: dict[str, LocalGenerator]) -> None:
    """Any text is a custom step: both depths are full, judgements unparsed (not fatal)."""
    result = solve("custom", {"breadth": 2, "depth": 2, "beam": 2}, Counting(generators["ar"]))
    tree = result.tree
    assert [len(tree.at_depth(d)) for d in (1, 2)] == [2, 4]
    assert [sum(n.selected for n in tree.at_depth(d)) for d in (1, 2)] == [2, 2]
    assert len(tree.nodes) == 1 + 2 + 4 + 1
    assert result.metrics["unscored_nodes"] == 6  # garbage never parses as a value
    assert tree.nodes[-1].metrics["thought_sequences"][0]["strategy"] == "solution"


def test_solve_command_with_tiny_models(tmp_path: Path) -> None:
    lines = [{**sample_line("gsm8k"), "search": {"eval_max_new_tokens": 4}},
             {**sample_line("gsm8k"), "id": "second", "search": {"evaluator": "vote",
                                                                "vote_samples": 2}}]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    result = CliRunner().invoke(main, [
        "solve", str(path), "--task", "gsm8k", "--target", "tiny", "--draft", "tiny-draft",
        "--engine", "seed", "--json", "--breadth", "2", "--depth", "1",
        "--max-new-tokens", "8",
    ])
    assert result.exit_code == 0, result.output
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["custom_id"] for o in outputs] == [lines[0]["id"], "second"]
    for out in outputs:
        assert set(out) == {"custom_id", "task", "answer", "correct", "tree", "metrics"}
        tree = TreeResult.from_json(out).tree
        assert [n.node_id for n in tree.nodes] == ["0", "0.1", "0.2", "0.s"]
        assert out["metrics"]["engine"] == "seed"
        assert out["metrics"]["total"]["drafted_tokens"] >= out["metrics"]["total"][
            "accepted_tokens"]
        assert out["metrics"]["phases"]["solution"]["sequences"] == 1
        assert out["correct"] in (True, False)  # the demo line has a gold answer
