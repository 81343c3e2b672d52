"""From reasoning results to store rows: a tree node, the generations behind it, the result.

A node's ``metrics`` (see ``seedq/reasoning/strategies.py``) hold, per phase, the summed
``SequenceMetrics`` of the sequences that produced it, how many sequences that was
(``evaluation_samples``) and how many sibling nodes share them (``*_shared``: a ``propose``
generation or a ``vote`` is one group for all children of a node). Each phase becomes one
``generations`` row; a shared one is keyed on the parent's expansion so that siblings upsert
the same row and no sequence is ever counted twice.
"""

from __future__ import annotations

from typing import Any

from seedq.reasoning.runner import TreeResult
from seedq.reasoning.tree import Node
from seedq.store.rows import GenerationRow, NodeRow

METRIC_INTS = (
    "new_tokens",
    "drafted_tokens",
    "accepted_tokens",
    "target_forwards",
    "draft_forwards",
)
METRIC_FLOATS = ("draft_seconds", "verify_seconds", "wait_seconds", "wall_seconds")


def node_row(node: Node) -> NodeRow:
    return {
        "node_id": node.node_id,
        "parent_id": node.parent_id,
        "depth": node.depth,
        "kind": node.kind,
        "thought": node.thought,
        "evaluation": node.evaluation,
        "score": node.score,
        "selected": node.selected,
        "failure": node.failure,
        "metrics": dict(node.metrics),
    }


def _phase_roles(node: Node) -> tuple[tuple[str, str], ...]:
    """(metrics key, role) pairs: a solution node's phases are the solution and its judge."""
    if node.kind == "solution":
        return (("thought", "solution"), ("evaluation", "judge"))
    return (("thought", "thought"), ("evaluation", "evaluation"))


def generation_rows(node: Node, engine: str | None) -> list[GenerationRow]:
    """The generation rows behind ``node`` (none for the root)."""
    rows: list[GenerationRow] = []
    for phase, role in _phase_roles(node):
        summed = node.metrics.get(phase)
        if not isinstance(summed, dict):
            continue
        shared = int(node.metrics.get(f"{phase}_shared", 1) or 1)
        sequences = int(node.metrics.get(f"{phase}_samples", 1) or 1)
        if shared > 1 and node.parent_id is not None:
            key, owner = f"{node.parent_id}:expand:{role}", None
        else:
            key, owner = f"{node.node_id}:{role}", node.node_id
        rows.append(_row(key, owner, role, node.depth, engine, summed, sequences, shared))
    return rows


def _row(
    key: str,
    node_id: str | None,
    role: str,
    depth: int,
    engine: str | None,
    summed: dict[str, Any],
    sequences: int,
    shared: int,
) -> GenerationRow:
    row: dict[str, Any] = {
        "gen_key": key,
        "node_id": node_id,
        "role": role,
        "depth": depth,
        "engine": engine,
        "sequences": sequences,
        "shared": shared,
    }
    for name in METRIC_INTS:
        row[name] = int(summed.get(name, 0) or 0)
    for name in METRIC_FLOATS:
        row[name] = float(summed.get(name, 0.0) or 0.0)
    return row  # type: ignore[return-value]


def result_record(result: TreeResult) -> dict[str, Any]:
    """What ``jobs.result`` stores: the whole TreeResult JSON (answer, tree, metrics)."""
    return result.to_json()
