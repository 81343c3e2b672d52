"""Node metrics -> generation rows: one row per sequence group, shared groups stored once."""

from __future__ import annotations

from seedq.reasoning.tree import Node
from seedq.service.records import generation_rows, node_row

M = {
    "new_tokens": 10,
    "drafted_tokens": 8,
    "accepted_tokens": 6,
    "target_forwards": 4,
    "draft_forwards": 8,
    "draft_seconds": 0.5,
    "verify_seconds": 0.25,
    "wait_seconds": 0.1,
    "wall_seconds": 1.0,
}


def thought(node_id: str, metrics: dict) -> Node:
    return Node(
        node_id=node_id, parent_id="0", depth=1, kind="thought", thought="t", metrics=metrics
    )


def test_sampled_thought_with_value_judgement() -> None:
    node = thought(
        "0.1",
        {
            "thought": M,
            "thought_shared": 1,
            "evaluation": M,
            "evaluation_samples": 3,
            "evaluation_shared": 1,
        },
    )
    rows = generation_rows(node, "seed")
    assert [(r["gen_key"], r["node_id"], r["role"], r["sequences"], r["shared"]) for r in rows] == [
        ("0.1:thought", "0.1", "thought", 1, 1),
        ("0.1:evaluation", "0.1", "evaluation", 3, 1),
    ]
    assert rows[0]["engine"] == "seed" and rows[0]["new_tokens"] == 10
    assert rows[0]["wall_seconds"] == 1.0 and rows[0]["depth"] == 1


def test_proposal_and_vote_are_keyed_on_the_parent_expansion() -> None:
    shared = {
        "thought": M,
        "thought_shared": 3,
        "evaluation": M,
        "evaluation_samples": 5,
        "evaluation_shared": 3,
    }
    keys = {
        r["gen_key"] for i in (1, 2, 3) for r in generation_rows(thought(f"0.{i}", shared), "sd")
    }
    assert keys == {"0:expand:thought", "0:expand:evaluation"}  # siblings upsert one row each
    (row, _) = generation_rows(thought("0.1", shared), "sd")
    assert row["node_id"] is None and row["shared"] == 3


def test_solution_and_judge_roles_and_root() -> None:
    solution = Node(
        node_id="0.1.s",
        parent_id="0.1",
        depth=2,
        kind="solution",
        thought="42",
        metrics={
            "thought": M,
            "thought_shared": 1,
            "evaluation": M,
            "evaluation_samples": 1,
            "evaluation_shared": 1,
        },
    )
    assert [r["role"] for r in generation_rows(solution, "ar")] == ["solution", "judge"]
    root = Node(node_id="0", parent_id=None, depth=0, kind="root")
    assert generation_rows(root, "ar") == []
    assert node_row(root)["kind"] == "root" and node_row(root)["metrics"] == {}
