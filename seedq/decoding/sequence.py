"""Per-sequence decoding state and the stopping rules (EOS, stop strings, max_new_tokens)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from seedq.decoding.models import Tokenizer
from seedq.decoding.types import SamplingParams, SequenceMetrics, SequenceResult


@dataclass
class ModelCache:
    """One model's KV cache for one sequence; ``length`` committed tokens are in it."""

    cache: DynamicCache
    length: int = 0


@dataclass
class SequenceState:
    """Everything one sequence of a group carries between rounds."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    target: ModelCache
    draft: ModelCache | None = None
    draft_nodes: list[int] = field(default_factory=list)  # tree nodes now in the draft cache
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: str = ""
    metrics: SequenceMetrics = field(default_factory=SequenceMetrics)
    started: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def remaining(self) -> int:
        return self.params.max_new_tokens - len(self.output_ids)

    def pending(self, cache: ModelCache) -> list[int]:
        """Committed tokens not yet in the given cache."""
        return self.ids[cache.length :]

    def result(self) -> SequenceResult:
        self.metrics.new_tokens = len(self.output_ids)
        self.metrics.wall_seconds = time.perf_counter() - self.started
        return SequenceResult(self.text, list(self.output_ids), self.finish_reason or "length",
                              self.metrics)


def make_generator(seed: int | None) -> torch.Generator | None:
    """A seeded CPU generator (the sampling math runs on the CPU), or None for no seed."""
    if seed is None:
        return None
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


class StopRule:
    """Applies EOS, stop strings and max_new_tokens to newly committed tokens."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def commit(self, state: SequenceState, new_tokens: list[int]) -> None:
        """Append tokens to the output, cut at the first stop condition, set finish_reason."""
        start = len(state.output_ids)
        tokens = new_tokens[: max(state.remaining, 0)]
        for offset, token in enumerate(tokens):
            if token in self.tokenizer.eos_token_ids:
                tokens = tokens[: offset + 1]
                state.finish_reason = "eos"
                break
        state.output_ids.extend(tokens)
        if state.params.stop:
            self._apply_stop_strings(state, start)
        if state.finish_reason is None and state.remaining <= 0:
            state.finish_reason = "length"
        state.text = self._final_text(state)

    def _apply_stop_strings(self, state: SequenceState, start: int) -> None:
        """Cut the output after the first token whose text completes a stop string."""
        text = self.tokenizer.decode(state.output_ids)
        if not any(stop in text for stop in state.params.stop):
            return
        for end in range(start + 1, len(state.output_ids) + 1):
            prefix = self.tokenizer.decode(state.output_ids[:end])
            if any(stop in prefix for stop in state.params.stop):
                del state.output_ids[end:]
                state.finish_reason = "stop"
                return

    def _final_text(self, state: SequenceState) -> str:
        text = self.tokenizer.decode(state.output_ids)
        if state.finish_reason == "stop":
            cut = min(text.find(s) for s in state.params.stop if s in text)
            text = text[:cut]
        return text
