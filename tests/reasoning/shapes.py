"""Checks that a finished tree has exactly the shape its search parameters ask for, and that
every node carries its texts, a score or a recorded failure, and its metrics.

The expected shape is replayed from the parameters and the recorded failures and scores:
BFS expands the kept states of each depth into ``breadth`` children and keeps the best
``beam`` usable ones; DFS expands ``min(breadth, budget left)`` children and visits the
unpruned ones best first. (No terminal state is modelled: none of the trees checked here
reaches one before its depth limit.)
"""

from __future__ import annotations

from typing import Any

from seedq.reasoning.params import SearchParams
from seedq.reasoning.tree import Node, Tree, child_id, solution_id

SEQUENCE_KEYS = ("thought_sequences", "evaluation_sequences")
METRIC_NAMES = ("new_tokens", "drafted_tokens", "accepted_tokens", "target_forwards",
                "draft_forwards", "draft_seconds", "verify_seconds", "wait_seconds",
                "wall_seconds", "prompt_tokens", "reused_prompt_tokens")


def _rank(nodes: list[Node]) -> list[Node]:
    """Best score first, unscored last, ties in creation order (as the search ranks)."""
    return sorted(nodes, key=lambda n: n.score if n.score is not None else -1.0, reverse=True)


def _ids(nodes: list[Node]) -> list[str]:
    return [n.node_id for n in nodes]


def check_bfs(tree: Tree, p: SearchParams) -> str:
    """Assert the BFS shape level by level; returns the id of the state the solution is
    written from."""
    frontier = [tree.node("0")]
    for depth in range(1, p.depth + 1):
        level = tree.at_depth(depth)
        expected = [child_id(s.node_id, i) for s in frontier for i in range(1, p.breadth + 1)]
        assert _ids(level) == expected, (depth, _ids(level), expected)
        usable = [n for n in level if n.failure is None]
        kept = _rank(usable)[: p.beam]
        assert _ids([n for n in level if n.selected]) == _ids([n for n in level if n in kept])
        if not kept:
            break
        frontier = [n for n in level if n in kept]
    thoughts = [n for n in tree.nodes if n.kind == "thought"]
    assert len(thoughts) == sum(len(tree.at_depth(d)) for d in range(1, p.depth + 1))
    return _rank(frontier)[0].node_id


def check_dfs(tree: Tree, p: SearchParams) -> str:
    """Replay the depth-first walk: budget, pruning and visiting order."""
    budget = p.node_budget
    created: list[Node] = []
    visited: list[Node] = []

    def pruned(n: Node) -> bool:
        return n.failure is not None or n.score is None or n.score < p.value_threshold

    def visit(node: Node) -> None:
        nonlocal budget
        visited.append(node)
        if node.depth >= p.depth or budget <= 0:
            return
        k = min(p.breadth, budget)
        budget -= k
        children = [tree.node(child_id(node.node_id, i)) for i in range(1, k + 1)]
        created.extend(children)
        assert all(not c.selected for c in children if pruned(c))
        for child in _rank([c for c in children if not pruned(c)]):
            assert child.selected, child.node_id
            visit(child)

    visit(tree.node("0"))
    thoughts = [n for n in tree.nodes if n.kind == "thought"]
    assert sorted(_ids(thoughts)) == sorted(_ids(created))
    assert len(thoughts) <= p.node_budget
    leaves = [n for n in visited if n.depth == p.depth]
    candidates = leaves or visited
    best = max(candidates, key=lambda n: (n.depth, n.score if n.score is not None else -1.0))
    return best.node_id


def check_tree(tree: Tree, p: SearchParams) -> None:
    """The shape, the solution node, the best path and every node's contents."""
    final = check_bfs(tree, p) if p.search == "bfs" else check_dfs(tree, p)
    solution = tree.nodes[-1]
    assert [n for n in tree.nodes if n.kind == "solution"] == [solution]
    assert solution.node_id == solution_id(final) and solution.parent_id == final
    assert solution.selected and solution.depth == tree.node(final).depth + 1
    assert tree.best_path[0] == "0" and tree.best_path[-2:] == (final, solution.node_id)
    assert len({n.node_id for n in tree.nodes}) == len(tree.nodes)
    for node in tree.nodes:
        check_node(node)


def check_node(node: Node) -> None:
    if node.kind == "root":
        assert node.thought is None and node.metrics == {} and node.selected
        return
    assert isinstance(node.thought, str)
    if node.kind == "solution":
        assert node.failure in (None, "no answer in the solution")
        check_sequences(node, "thought_sequences", required=False)
        check_sequences(node, "evaluation_sequences", required=False)
        return
    check_sequences(node, "thought_sequences", required=True)
    if node.failure is not None:  # a recorded failure: not judged, not kept
        assert node.failure.strip() and node.score is None and node.evaluation is None
        assert not node.selected and "evaluation_sequences" not in node.metrics
        return
    assert node.thought.strip()
    assert isinstance(node.evaluation, str)
    check_sequences(node, "evaluation_sequences", required=True)
    if node.score is None:  # no parsable judgement: recorded as such
        assert node.metrics["evaluation_unparsed"] > 0
    else:
        assert 0.0 <= node.score <= 1.0


def check_sequences(node: Node, key: str, *, required: bool) -> None:
    records = node.metrics.get(key)
    if records is None:
        assert not required, (node.node_id, key)
        return
    assert records, (node.node_id, key)
    phase = key.removesuffix("_sequences")
    for record in records:
        metrics = record["metrics"]
        assert set(metrics) == set(METRIC_NAMES)
        assert all(metrics[name] >= 0 for name in METRIC_NAMES)
        assert metrics["drafted_tokens"] >= metrics["accepted_tokens"]
        assert record["shared"] == node.metrics[f"{phase}_shared"]
    total = sum(r["metrics"]["new_tokens"] for r in records)
    assert node.metrics[phase]["new_tokens"] == total


def sequence_records(tree: Tree) -> dict[tuple[str, int], dict[str, Any]]:
    """Every sequence record of the tree, once per (group, index)."""
    return {
        (r["group"], r["index"]): r
        for node in tree.nodes
        for key in SEQUENCE_KEYS
        for r in node.metrics.get(key, [])
    }
