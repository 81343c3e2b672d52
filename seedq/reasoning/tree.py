"""Reasoning trees as plain data: frozen nodes and the finished tree, with lossless JSON."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

NODE_KINDS = ("root", "thought", "solution")


class TreeFormatError(ValueError):
    """A serialized node or tree is malformed."""


def child_id(parent_id: str, index: int) -> str:
    """Deterministic key of the ``index``-th child (1-based): "0" -> "0.1", "0.1" -> "0.1.2"."""
    return f"{parent_id}.{index}"


def solution_id(parent_id: str) -> str:
    """Key of the solution node written from the state ``parent_id``."""
    return f"{parent_id}.s"


@dataclass(frozen=True)
class Node:
    """One node of a reasoning tree.

    ``thought`` is the step this node adds (None for the root); ``evaluation`` the evaluator's
    judgement text; ``score`` its parsed value in [0, 1] (None: not evaluated or unparsable);
    ``selected`` whether the search kept it (beam, visited path, or the final solution);
    ``failure`` why the node is unusable (unparsable or illegal step), else None;
    ``metrics`` the engine metrics of the generations that produced it (see docs/REASONING.md).
    """

    node_id: str
    parent_id: str | None
    depth: int
    kind: str
    thought: str | None = None
    evaluation: str | None = None
    score: float | None = None
    selected: bool = False
    failure: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise TreeFormatError(f"node kind must be one of {NODE_KINDS}, got {self.kind!r}")
        if self.depth < 0:
            raise TreeFormatError(f"node depth must be >= 0, got {self.depth}")
        if (self.parent_id is None) != (self.kind == "root"):
            raise TreeFormatError("exactly the root node has no parent")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TreeFormatError(f"unknown node fields: {', '.join(unknown)}")
        missing = sorted({"node_id", "parent_id", "depth", "kind"} - set(data))
        if missing:
            raise TreeFormatError(f"missing node fields: {', '.join(missing)}")
        return cls(**{**data, "metrics": dict(data.get("metrics") or {})})


@dataclass(frozen=True)
class Tree:
    """A finished tree: every node in creation order, the answer and how it scored.

    ``best_path`` lists node ids from the root to the solution node; ``details`` holds the
    task's own report (plan check, paragraph constraint, coherence, gold answer ...).
    """

    task: str
    nodes: tuple[Node, ...]
    answer: str | None = None
    correct: bool | None = None
    score: float | None = None
    best_path: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def at_depth(self, depth: int, kind: str = "thought") -> list[Node]:
        return [n for n in self.nodes if n.depth == depth and n.kind == kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "nodes": [n.to_json() for n in self.nodes],
            "answer": self.answer,
            "correct": self.correct,
            "score": self.score,
            "best_path": list(self.best_path),
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tree:
        try:
            nodes = tuple(Node.from_json(n) for n in data["nodes"])
            return cls(
                task=data["task"],
                nodes=nodes,
                answer=data.get("answer"),
                correct=data.get("correct"),
                score=data.get("score"),
                best_path=tuple(data.get("best_path") or ()),
                details=dict(data.get("details") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise TreeFormatError(f"malformed tree: {exc}") from exc
