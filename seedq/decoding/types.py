"""The group interface between decoding and everything above it.

A *group* is the N sequences of one tree expansion (N thoughts or N evaluations).
Callers build a :class:`GroupRequest`, hand it to a :class:`GroupGenerator` and get a
:class:`GroupResult` back: one :class:`SequenceResult` per prompt, in order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class DecodingError(ValueError):
    """Bad decoding input (a parameter out of range, incompatible models, ...)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is decoded. temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before the first one
    seed: int | None = None  # sequence i of a group samples with seed + i

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise DecodingError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise DecodingError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise DecodingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise DecodingError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop):
            raise DecodingError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sequence_seed(self, index: int) -> int | None:
        return None if self.seed is None else self.seed + index


@dataclass(frozen=True)
class GroupRequest:
    """N prompts decoded together. With ``chat`` the prompt is sent as one user message
    through the tokenizer's chat template (when the tokenizer has one).

    ``params`` applies to every sequence unless ``sequence_params`` gives one SamplingParams
    per prompt (own max_new_tokens, stop strings, temperature, seed, ...).

    ``label`` names the kind of group (e.g. ``gsm8k/thought``): engines that learn from
    what they see (``auto``'s acceptance estimates) keep their statistics per label."""

    prompts: tuple[str, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    chat: bool = False
    sequence_params: tuple[SamplingParams, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        if not self.prompts:
            raise DecodingError("a group needs at least one prompt")
        if self.sequence_params and len(self.sequence_params) != len(self.prompts):
            raise DecodingError(
                f"sequence_params has {len(self.sequence_params)} entries for "
                f"{len(self.prompts)} prompts"
            )

    def params_for(self, index: int) -> SamplingParams:
        return self.sequence_params[index] if self.sequence_params else self.params

    def seed_for(self, index: int) -> int | None:
        """Sequence i samples with seed + i (its own params' seed when given per sequence)."""
        if self.sequence_params:
            return self.sequence_params[index].seed
        return self.params.sequence_seed(index)


@dataclass
class SequenceMetrics:
    new_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    wait_seconds: float = 0.0  # drafted and waiting for the verifier
    wall_seconds: float = 0.0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0  # prompt tokens whose KV came from the prefix cache

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SequenceResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length"
    metrics: SequenceMetrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "metrics": self.metrics.to_dict(),
        }


@dataclass
class GroupResult:
    engine: str
    sequences: list[SequenceResult]
    wall_seconds: float
    peak_memory_bytes: int
    stats: dict[str, float] = field(default_factory=dict)  # engine-specific, e.g. target busy

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "sequences": [s.to_dict() for s in self.sequences],
            "wall_seconds": self.wall_seconds,
            "peak_memory_bytes": self.peak_memory_bytes,
            "stats": dict(self.stats),
        }


class GroupGenerator(Protocol):
    """What reasoning search sees of decoding: one awaitable call per group."""

    async def generate(self, request: GroupRequest) -> GroupResult: ...
