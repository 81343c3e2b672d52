"""A scripted GroupGenerator: canned texts chosen by a function of the prompt.

Search must not know models, so its mechanics are tested with this deterministic stand-in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from seedq.decoding.types import (
    GroupRequest,
    GroupResult,
    SamplingParams,
    SequenceMetrics,
    SequenceResult,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

Respond = Callable[[str, int, SamplingParams], str]


class ScriptedGenerator:
    """``respond(prompt, index_in_group, params)`` gives each sequence's text. Every request
    is recorded. Metrics are fake but deterministic: one token per word, half accepted."""

    def __init__(self, respond: Respond, engine: str = "scripted") -> None:
        self.respond = respond
        self.engine = engine
        self.requests: list[GroupRequest] = []
        self.closed = False

    async def generate(self, request: GroupRequest) -> GroupResult:
        self.requests.append(request)
        sequences = []
        for i, prompt in enumerate(request.prompts):
            text = self.respond(prompt, i, request.params)
            tokens = max(1, len(text.split()))
            metrics = SequenceMetrics(new_tokens=tokens, drafted_tokens=2 * tokens,
                                      accepted_tokens=tokens, target_forwards=tokens,
                                      wall_seconds=0.001 * tokens)
            sequences.append(SequenceResult(text=text, token_ids=list(range(tokens)),
                                            finish_reason="stop", metrics=metrics))
        return GroupResult(engine=self.engine, sequences=sequences,
                           wall_seconds=0.01, peak_memory_bytes=1000)

    def close(self) -> None:
        self.closed = True
