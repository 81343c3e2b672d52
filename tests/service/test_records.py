"""Node metrics -> generation rows: one row per sequence, shared sequences stored once."""

from __future__ import annotations

import asyncio
from typing import Any

from seedq.decoding.types import GroupRequest, GroupResult, SamplingParams
from seedq.reasoning import TreeResult, parse_job, run_tree
from seedq.reasoning.tree import Node
from seedq.service.jobrun import EngineTap
from seedq.service.records import generation_rows, node_row, result_record
from seedq.service.usage import JobUsage
from tests.reasoning.scripted import ScriptedGenerator
from workers.testing import CannedGenerator

M = {
    "new_tokens": 10,
    "drafted_tokens": 8,
    "accepted_tokens": 6,
    "target_forwards": 4,
    "draft_forwards": 8,
    "reused_prompt_tokens": 5,
    "draft_seconds": 0.5,
    "verify_seconds": 0.25,
    "wait_seconds": 0.1,
    "wall_seconds": 1.0,
}
TEMPLATES = {"thought": "T|{state}|{step}", "evaluation": "E|{candidate}",
             "solution": "S|{state}", "propose": "P|{step}|{n}", "vote": "V|{candidates}"}


def record(group: str, index: int, role: str, strategy: str, shared: int = 1) -> dict:
    return {"group": group, "index": index, "role": role, "strategy": strategy,
            "shared": shared, "metrics": {**M, "new_tokens": 10 + index}}


def thought(node_id: str, metrics: dict) -> Node:
    return Node(
        node_id=node_id, parent_id="0", depth=1, kind="thought", thought="t", metrics=metrics
    )


def test_sampled_thought_with_value_samples() -> None:
    node = thought("0.2", {
        "thought_sequences": [record("0/thought", 1, "thought", "sample")],
        "evaluation_sequences": [record("0/value", i, "evaluation", "value") for i in (3, 4, 5)],
    })
    rows = generation_rows(node, "seed")
    assert [(r["gen_key"], r["group_key"], r["seq_index"], r["node_id"], r["role"],
             r["strategy"], r["sequences"], r["shared"]) for r in rows] == [
        ("0/thought#1", "0/thought", 1, "0.2", "thought", "sample", 1, 1),
        ("0/value#3", "0/value", 3, "0.2", "evaluation", "value", 1, 1),
        ("0/value#4", "0/value", 4, "0.2", "evaluation", "value", 1, 1),
        ("0/value#5", "0/value", 5, "0.2", "evaluation", "value", 1, 1),
    ]
    assert [r["new_tokens"] for r in rows] == [11, 13, 14, 15]
    assert rows[0]["engine"] == "seed" and rows[0]["depth"] == 1
    assert rows[0]["wall_seconds"] == 1.0 and rows[0]["accepted_tokens"] == 6
    assert rows[0]["reused_prompt_tokens"] == 5


def test_proposal_and_vote_samples_are_one_row_each_for_all_siblings() -> None:
    shared = {
        "thought_sequences": [record("0/propose", 0, "thought", "propose", 3)],
        "evaluation_sequences": [record("0/vote", i, "evaluation", "vote", 3) for i in range(4)],
    }
    rows = [r for i in (1, 2, 3) for r in generation_rows(thought(f"0.{i}", shared), "sd")]
    keys = {r["gen_key"] for r in rows}
    assert keys == {"0/propose#0", "0/vote#0", "0/vote#1", "0/vote#2", "0/vote#3"}
    assert all(r["node_id"] is None and r["shared"] == 3 for r in rows)


def test_solution_and_judge_roles_and_root() -> None:
    solution = Node(
        node_id="0.1.s", parent_id="0.1", depth=2, kind="solution", thought="42",
        metrics={
            "thought_sequences": [record("0.1/solution", 0, "solution", "solution")],
            "evaluation_sequences": [record("0.1/judge", 0, "judge", "judge")],
        },
    )
    rows = generation_rows(solution, "ar")
    assert [(r["role"], r["node_id"], r["depth"]) for r in rows] == [
        ("solution", "0.1.s", 2), ("judge", "0.1.s", 2)]
    root = Node(node_id="0", parent_id=None, depth=0, kind="root")
    assert generation_rows(root, "ar") == []
    assert node_row(root)["kind"] == "root" and node_row(root)["metrics"] == {}


class Counting(ScriptedGenerator):
    """Counts the sequences it produced, per group."""

    def __init__(self, respond: Any) -> None:
        super().__init__(respond)
        self.produced = 0

    async def generate(self, request: Any) -> Any:
        result = await super().generate(request)
        self.produced += len(result.sequences)
        return result


def answer(prompt: str, index: int, params: SamplingParams) -> str:
    kind = prompt.partition("|")[0]
    return {"T": f"step {index}", "P": "1. a\n2. b\n3. c", "E": str(3 + index),
            "V": f"The best choice is {index % 2 + 1}", "S": "done"}[kind]


def rows_of(result: TreeResult) -> dict[str, Any]:
    """Every generation row of the tree, deduplicated by key as the database upsert does."""
    return {r["gen_key"]: r for n in result.tree.nodes for r in generation_rows(n, "x")}


def run_custom(**search: Any) -> tuple[TreeResult, Counting]:
    spec = parse_job({"id": "c", "task": "custom", "input": "x", "templates": TEMPLATES,
                      "search": search})
    generator = Counting(answer)
    return asyncio.run(run_tree(spec, generator)), generator


def test_one_row_per_sequence_for_every_strategy_pair() -> None:
    for generator in ("sample", "propose"):
        for evaluator in ("value", "vote"):
            result, counting = run_custom(generator=generator, evaluator=evaluator, breadth=3,
                                          beam=2, depth=2, value_samples=2, vote_samples=3,
                                          temperature=0.7)
            rows = rows_of(result)
            assert len(rows) == counting.produced, (generator, evaluator)
            total = result.metrics["total"]
            assert sum(r["new_tokens"] for r in rows.values()) == total["new_tokens"]
            assert sum(r["drafted_tokens"] for r in rows.values()) == total["drafted_tokens"]


def test_known_shape_gives_known_row_counts() -> None:
    # sample/value, breadth 3, beam 2, depth 2, 2 value samples: 3 + 6 thoughts,
    # (3 + 6) * 2 value samples, 1 solution
    result, counting = run_custom(breadth=3, beam=2, depth=2, value_samples=2)
    roles = [r["strategy"] for r in rows_of(result).values()]
    assert {s: roles.count(s) for s in set(roles)} == {"sample": 9, "value": 18, "solution": 1}
    assert counting.produced == 28
    # propose/vote: one proposal and one vote group (3 samples) per expansion (1 + 2)
    result, counting = run_custom(generator="propose", evaluator="vote", breadth=3, beam=2,
                                  depth=2, vote_samples=3)
    rows = rows_of(result).values()
    roles = [r["strategy"] for r in rows]
    assert {s: roles.count(s) for s in set(roles)} == {"propose": 3, "vote": 9, "solution": 1}
    assert all(r["node_id"] is None for r in rows if r["strategy"] in ("propose", "vote"))
    assert counting.produced == 13


def test_usage_of_a_generator_without_models() -> None:
    """A test double has no EngineConfig: its class and engine are recorded, no models; no
    target busy record when the engine does not measure it, the sums when it does."""
    usage = JobUsage()
    usage.serve(EngineTap(CannedGenerator(0)))
    watched = usage.watch(CannedGenerator(0))
    request = GroupRequest(("a", "b"))
    asyncio.run(watched.generate(request))
    out = result_record(run_custom(breadth=1, depth=1)[0], usage.record(2.0))
    assert out["models"] == {"target": None, "draft": None, "engine": "canned",
                             "device": None, "dtype": None, "generator": "CannedGenerator"}
    assert "target_busy" not in out and "tree" in out
    for busy, wall in ((0.5, 1.0), (0.25, 1.0)):
        usage.add(GroupResult("seed", [], wall, 0, {"target_busy_seconds": busy}))
    assert usage.record(3.0)["target_busy"] == {
        "busy_seconds": 0.75, "group_seconds": 2.0, "job_seconds": 3.0, "groups": 2,
        "fraction": 0.375,
    }
    assert usage.record(3.0)["models"]["engine"] == "canned, seed"
