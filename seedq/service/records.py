"""From reasoning results to store rows: a tree node, the generations behind it, the result.

A node's ``metrics`` (see ``seedq/reasoning/strategies.py``) list, per phase, one record per
generated sequence (``thought_sequences``, ``evaluation_sequences``): the key of its group
request, its index in that group, its role and strategy, how many sibling nodes share it and
its ``SequenceMetrics``. Each record becomes ONE ``generations`` row keyed
``"<group>#<index>"``, unique within a job, so a re-run upserts the same rows. A sequence
shared by several siblings (a ``propose`` generation, ``vote`` samples) is listed on each of
them; they all upsert the same row, with ``node_id`` NULL, so no sequence is counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    "reused_prompt_tokens",
)
METRIC_FLOATS = ("draft_seconds", "verify_seconds", "wait_seconds", "wall_seconds")
SEQUENCE_KEYS = ("thought_sequences", "evaluation_sequences")


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


def gen_key(group: str, index: int) -> str:
    """The key of the ``index``-th sequence of group request ``group`` (unique per job)."""
    return f"{group}#{index}"


def generation_rows(node: Node, engine: str | None) -> list[GenerationRow]:
    """One row per sequence behind ``node`` (none for the root)."""
    return [
        _row(node, record, engine)
        for key in SEQUENCE_KEYS
        for record in node.metrics.get(key) or ()
    ]


def _row(node: Node, record: Mapping[str, Any], engine: str | None) -> GenerationRow:
    group, index = str(record["group"]), int(record["index"])
    shared = int(record.get("shared") or 1)
    metrics: Mapping[str, Any] = record.get("metrics") or {}
    row: dict[str, Any] = {
        "gen_key": gen_key(group, index),
        "group_key": group,
        "seq_index": index,
        "node_id": node.node_id if shared <= 1 else None,
        "role": record.get("role"),
        "strategy": record.get("strategy"),
        "depth": node.depth,
        "engine": engine,
        "sequences": 1,
        "shared": shared,
    }
    for name in METRIC_INTS:
        row[name] = int(metrics.get(name, 0) or 0)
    for name in METRIC_FLOATS:
        row[name] = float(metrics.get(name, 0.0) or 0.0)
    return row  # type: ignore[return-value]


def result_record(
    result: TreeResult, served: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What ``jobs.result`` stores: the whole TreeResult JSON (answer, tree, metrics) and
    what served the job (``models``, ``target_busy``: :mod:`seedq.service.usage`)."""
    return {**result.to_json(), **(served or {})}
