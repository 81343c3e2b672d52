"""Search parameters of one tree: a frozen, range-checked value."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from seedq.reasoning.errors import JobSpecError

SEARCHES = ("bfs", "dfs")
GENERATORS = ("sample", "propose")
EVALUATORS = ("value", "vote")

_CHOICES: dict[str, tuple[str, ...]] = {
    "search": SEARCHES,
    "generator": GENERATORS,
    "evaluator": EVALUATORS,
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    "breadth": (1, 32),
    "depth": (1, 32),
    "beam": (1, 32),
    "vote_samples": (1, 32),
    "value_samples": (1, 16),
    "node_budget": (1, 100_000),
    "top_k": (0, 1_000_000),
    "max_new_tokens": (1, 8192),
    "eval_max_new_tokens": (1, 8192),
    "seed": (0, 2**31 - 1),
}
# (low, high, low inclusive)
_FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "value_threshold": (0.0, 1.0, True),
    "temperature": (0.0, 10.0, True),
    "top_p": (0.0, 1.0, False),
}


@dataclass(frozen=True)
class SearchParams:
    """How one tree is searched.

    BFS expands every kept state into ``breadth`` thoughts, keeps the best ``beam`` per depth,
    for ``depth`` steps. DFS expands the best child first, prunes children scored below
    ``value_threshold`` and stops after ``node_budget`` thought nodes. ``vote_samples``: votes
    per vote evaluation; ``value_samples``: samples per value judgement (1 = greedy).
    ``max_new_tokens`` bounds thoughts and solutions, ``eval_max_new_tokens`` judgements.
    ``seed`` None is filled by :func:`seedq.reasoning.jobs.parse_job` from the job's id.
    """

    search: str = "bfs"
    breadth: int = 3
    depth: int = 2
    beam: int = 1
    generator: str = "sample"
    evaluator: str = "value"
    vote_samples: int = 3
    value_samples: int = 1
    value_threshold: float = 0.25
    node_budget: int = 64
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 128
    eval_max_new_tokens: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise _err(name, f"must be one of {', '.join(choices)}, got {value!r}")
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if name == "seed" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise _err(name, f"must be an integer, got {value!r}")
            if not low <= value <= high:
                raise _err(name, f"must be in {low}..{high}, got {value}")
        for name, (lo, hi, lo_inclusive) in _FLOAT_RANGES.items():
            number = getattr(self, name)
            if not isinstance(number, int | float) or isinstance(number, bool):
                raise _err(name, f"must be a number, got {number!r}")
            if not math.isfinite(number) or number > hi or number < lo or (
                number == lo and not lo_inclusive
            ):
                interval = f"{'[' if lo_inclusive else '('}{lo}, {hi}]"
                raise _err(name, f"must be in {interval}, got {number}")
            object.__setattr__(self, name, float(number))
        self._check_sampling()

    def _check_sampling(self) -> None:
        if self.temperature > 0:
            return
        if self.generator == "sample" and self.breadth > 1:
            raise _err("temperature", "must be > 0 with generator 'sample' and breadth > 1 "
                       "(greedy samples of one prompt are identical)")
        if self.evaluator == "vote" and self.vote_samples > 1:
            raise _err("temperature", "must be > 0 with evaluator 'vote' and vote_samples > 1")
        if self.value_samples > 1:
            raise _err("temperature", "must be > 0 with value_samples > 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchParams:
        return cls().updated(data)

    def updated(self, changes: Mapping[str, Any]) -> SearchParams:
        """A copy with ``changes`` applied; unknown names raise :class:`JobSpecError`."""
        if not isinstance(changes, Mapping):
            raise JobSpecError("search", f"must be an object, got {type(changes).__name__}")
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                shown = ", ".join(sorted(known))
                raise _err(str(name), f"unknown search parameter (known: {shown})")
        return replace(self, **dict(changes))


def _err(name: str, reason: str) -> JobSpecError:
    return JobSpecError(f"search.{name}", reason)
