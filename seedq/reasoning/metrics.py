"""Engine metrics of a tree: per sequence, per node (from its sequences) and per phase (from
its groups)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from seedq.decoding.types import GroupResult, SequenceResult

PHASES = ("thought", "evaluation", "solution", "judge")


def sum_metrics(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Key-wise sum of the numeric fields of SequenceMetrics dicts (booleans excluded)."""
    total: dict[str, Any] = {}
    for item in items:
        for name, value in item.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[name] = total.get(name, 0) + value
    return total


def sequence_metrics(sequences: Iterable[SequenceResult]) -> dict[str, Any]:
    """The summed ``SequenceMetrics.to_dict()`` of ``sequences`` (one: exactly its dict)."""
    return sum_metrics(s.metrics.to_dict() for s in sequences)


def sequence_record(group: str, index: int, role: str, strategy: str, shared: int,
                    sequence: SequenceResult) -> dict[str, Any]:
    """One generated sequence as stored in ``Node.metrics["<phase>_sequences"]``: the key of
    its group request (``"0.1/value"``, which also seeds the group), its index in that group,
    its phase (``role``), the strategy that asked for it, how many sibling nodes share it and
    its ``SequenceMetrics``. ``(group, index)`` is unique within a tree."""
    return {
        "group": group,
        "index": index,
        "role": role,
        "strategy": strategy,
        "shared": shared,
        "metrics": sequence.metrics.to_dict(),
    }


@dataclass
class PhaseStats:
    """What the groups of one phase cost. ``seconds`` sums the groups' wall time."""

    groups: int = 0
    sequences: int = 0
    seconds: float = 0.0
    new_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    target_forwards: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0  # taken from the prefix cache

    def add(self, result: GroupResult) -> None:
        self.groups += 1
        self.sequences += len(result.sequences)
        self.seconds += result.wall_seconds
        for seq in result.sequences:
            self.new_tokens += seq.metrics.new_tokens
            self.drafted_tokens += seq.metrics.drafted_tokens
            self.accepted_tokens += seq.metrics.accepted_tokens
            self.target_forwards += seq.metrics.target_forwards
            self.prompt_tokens += seq.metrics.prompt_tokens
            self.reused_prompt_tokens += seq.metrics.reused_prompt_tokens


class Ledger:
    """Accumulates every group result of one tree, by phase."""

    def __init__(self) -> None:
        self.phases = {phase: PhaseStats() for phase in PHASES}
        self.engine: str | None = None
        self.peak_memory_bytes = 0

    def record(self, phase: str, result: GroupResult) -> None:
        self.phases[phase].add(result)
        self.engine = result.engine
        self.peak_memory_bytes = max(self.peak_memory_bytes, result.peak_memory_bytes)

    def to_dict(self, wall_seconds: float) -> dict[str, Any]:
        phases = {name: asdict(stats) for name, stats in self.phases.items()}
        total = {key: sum(p[key] for p in phases.values()) for key in asdict(PhaseStats())}
        drafted = total["drafted_tokens"]
        return {
            "engine": self.engine,
            "wall_seconds": wall_seconds,
            "peak_memory_bytes": self.peak_memory_bytes,
            "phases": phases,
            "total": total,
            "acceptance_rate": total["accepted_tokens"] / drafted if drafted else None,
            "tokens_per_second": total["new_tokens"] / wall_seconds if wall_seconds > 0 else None,
        }
