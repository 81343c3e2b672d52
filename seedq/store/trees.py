"""Reads behind ``seedq show`` and ``seedq report``: the stored trees of a batch as typed,
read-only records (no ORM object leaves the store).

Per-node figures (seconds, tokens, acceptance) come from the node's ``metrics`` column: the
summed ``SequenceMetrics`` of the sequences that produced it (its thought, or its share of a
proposal, and its judgements). The same helper reads an in-process ``Tree`` (``seedq solve
--show``), so both paths print the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from seedq.store.db import Database
from seedq.store.models import Job, Node
from seedq.store.rows import NodeRow

PHASE_KEYS = ("thought", "evaluation")
DEFAULT_MAX_TREES = 200


@dataclass(frozen=True)
class NodeFigures:
    """What a node's own generations cost."""

    seconds: float = 0.0
    new_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def acceptance(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None

    @property
    def tokens_per_second(self) -> float | None:
        return self.new_tokens / self.seconds if self.seconds > 0 else None


def node_figures(metrics: Mapping[str, Any] | None) -> NodeFigures:
    """Sum the ``thought`` and ``evaluation`` SequenceMetrics dicts of a node's metrics."""
    seconds, new, drafted, accepted = 0.0, 0, 0, 0
    for key in PHASE_KEYS:
        part = (metrics or {}).get(key)
        if not isinstance(part, Mapping):
            continue
        seconds += float(part.get("wall_seconds") or 0.0)
        new += int(part.get("new_tokens") or 0)
        drafted += int(part.get("drafted_tokens") or 0)
        accepted += int(part.get("accepted_tokens") or 0)
    return NodeFigures(seconds, new, drafted, accepted)


@dataclass(frozen=True)
class NodeView:
    """One stored node with its figures. ``selected``: kept by the search (beam, visited
    path, or the solution)."""

    node_id: str
    parent_id: str | None
    depth: int
    kind: str
    thought: str | None
    evaluation: str | None
    score: float | None
    selected: bool
    failure: str | None
    figures: NodeFigures


@dataclass(frozen=True)
class TreeView:
    """One job's tree. ``best_path``: root to the solution node (empty while unfinished)."""

    job_id: str | None
    custom_id: str | None
    task: str | None
    status: str
    answer: str | None
    correct: bool | None
    wall_seconds: float | None
    error: str | None
    nodes: tuple[NodeView, ...]

    @property
    def best_path(self) -> tuple[str, ...]:
        return best_path(self.nodes)

    def children(self, node_id: str | None) -> list[NodeView]:
        return [n for n in self.nodes if n.parent_id == node_id]


def best_path(nodes: Sequence[NodeView]) -> tuple[str, ...]:
    """The ids from the root to the (last) solution node, walking ``parent_id`` up."""
    parents = {n.node_id: n.parent_id for n in nodes}
    solutions = [n.node_id for n in nodes if n.kind == "solution"]
    if not solutions:
        return ()
    path: list[str] = []
    current: str | None = solutions[-1]
    while current is not None and current not in path:
        path.append(current)
        current = parents.get(current)
    return tuple(reversed(path))


def node_view(row: Mapping[str, Any]) -> NodeView:
    """A NodeView from a node's fields (a stored row, or ``reasoning.tree.Node.to_json()``)."""
    return NodeView(
        node_id=row["node_id"],
        parent_id=row["parent_id"],
        depth=int(row["depth"]),
        kind=row["kind"],
        thought=row.get("thought"),
        evaluation=row.get("evaluation"),
        score=row.get("score"),
        selected=bool(row.get("selected")),
        failure=row.get("failure"),
        figures=node_figures(row.get("metrics")),
    )


def stored_node(n: Node) -> NodeRow:
    """A stored node's fields, as written (see ``repo.record_node``)."""
    return {
        "node_id": n.node_id,
        "parent_id": n.parent_id,
        "depth": n.depth,
        "kind": n.kind,
        "thought": n.thought,
        "evaluation": n.evaluation,
        "score": n.score,
        "selected": n.selected,
        "failure": n.failure,
        "metrics": n.metrics,
    }


def batch_trees(
    db: Database,
    batch_id: str,
    custom_id: str | None = None,
    *,
    max_trees: int | None = DEFAULT_MAX_TREES,
) -> list[TreeView]:
    """The trees of a batch in line order (only ``custom_id``'s when given), at most
    ``max_trees`` of them; jobs without nodes (queued, rejected) come with an empty tree."""
    cols = (Job.id, Job.custom_id, Job.task, Job.status, Job.answer, Job.correct,
            Job.wall_seconds, Job.error)
    stmt = select(*cols).where(Job.batch_id == batch_id).order_by(Job.line_no)
    if custom_id is not None:
        stmt = stmt.where(Job.custom_id == custom_id)
    if max_trees is not None:
        stmt = stmt.limit(max_trees)
    with db.session() as s:
        jobs = s.execute(stmt).all()
        ids = [j.id for j in jobs]
        nodes = s.scalars(select(Node).where(Node.job_id.in_(ids))).all() if ids else []
        by_job: dict[str, list[NodeView]] = {i: [] for i in ids}
        for n in nodes:
            by_job[n.job_id].append(node_view(stored_node(n)))
    return [_tree_view(j, by_job[j.id]) for j in jobs]


def _tree_view(job: Any, nodes: list[NodeView]) -> TreeView:
    nodes.sort(key=lambda n: (n.depth, _id_key(n.node_id)))
    return TreeView(
        job_id=job.id,
        custom_id=job.custom_id,
        task=job.task,
        status=job.status,
        answer=job.answer,
        correct=job.correct,
        wall_seconds=job.wall_seconds,
        error=job.error,
        nodes=tuple(nodes),
    )


def _id_key(node_id: str) -> tuple[tuple[int, str], ...]:
    """Sort "0.2" before "0.10" and "0.1.s" after "0.1.9"."""
    return tuple((int(p), "") if p.isdigit() else (1 << 30, p) for p in node_id.split("."))
