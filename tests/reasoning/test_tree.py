"""Trees are data: JSON round-trips without loss, and malformed data is refused."""

from __future__ import annotations

import json

import pytest

from seedq.reasoning.tree import Node, Tree, TreeFormatError, child_id, solution_id


def sample_tree() -> Tree:
    root = Node("0", None, 0, "root", selected=True)
    a = Node("0.1", "0", 1, "thought", thought="Question 1.1: a?\nAnswer 1.1: 3.",
             evaluation="sure", score=1.0, selected=True,
             metrics={"thought": {"new_tokens": 7, "wall_seconds": 0.1234567890123},
                      "evaluation_unparsed": 0})
    b = Node("0.2", "0", 1, "thought", thought="garbage", failure="no step in the output")
    c = Node("0.3", "0", 1, "thought", thought="x", evaluation="hmm", score=None)
    sol = Node(solution_id("0.1"), "0.1", 2, "solution", thought="The answer is 3.",
               selected=True)
    return Tree(task="gsm8k", nodes=(root, a, b, c, sol), answer="3", correct=True, score=1.0,
                best_path=("0", "0.1", "0.1.s"), details={"gold": "3", "nested": [1, {"x": None}]})


def test_tree_round_trips_through_json_text() -> None:
    tree = sample_tree()
    text = json.dumps(tree.to_json())
    again = Tree.from_json(json.loads(text))
    assert again == tree
    assert again.to_json() == tree.to_json()
    assert again.node("0.2").failure == "no step in the output"
    assert [n.node_id for n in again.at_depth(1)] == ["0.1", "0.2", "0.3"]


def test_node_ids_are_deterministic_keys() -> None:
    assert child_id("0", 1) == "0.1"
    assert child_id("0.1", 2) == "0.1.2"
    assert solution_id("0.1.2") == "0.1.2.s"


def test_malformed_nodes_are_refused() -> None:
    with pytest.raises(TreeFormatError, match="kind"):
        Node("0", None, 0, "leaf")
    with pytest.raises(TreeFormatError, match="exactly the root"):
        Node("0.1", None, 1, "thought")
    with pytest.raises(TreeFormatError, match="exactly the root"):
        Node("0", "x", 0, "root")
    with pytest.raises(TreeFormatError, match="unknown node fields: colour"):
        Node.from_json({**sample_tree().nodes[0].to_json(), "colour": "red"})
    with pytest.raises(TreeFormatError, match="missing node fields: depth"):
        Node.from_json({"node_id": "0", "parent_id": None, "kind": "root"})
    with pytest.raises(TreeFormatError, match="malformed tree"):
        Tree.from_json({"nodes": []})
    with pytest.raises(KeyError):
        sample_tree().node("9")
