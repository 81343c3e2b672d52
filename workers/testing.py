"""TEST HOOK: a deterministic stand-in for the real generator, for tests without models.

``CannedGenerator`` implements ``GroupGenerator``: after ``asyncio.sleep(delay)`` it returns
canned texts derived from (prompt, seed, index), shaped so that task parsers read them as a
step ("Question 1.k: ... Answer 1.k: ..."), a value judgement ("sure") and a final number.
Worker processes use it only when ``SEEDQ_TEST_GENERATOR=canned`` is set (see
:func:`generator_factory_from_env`); nothing else in seedq reads that variable.
"""

from __future__ import annotations

import asyncio
import os
import re
import zlib
from collections.abc import Callable

from seedq.decoding.types import (
    GroupRequest,
    GroupResult,
    SequenceMetrics,
    SequenceResult,
)

TEST_GENERATOR_ENV = "SEEDQ_TEST_GENERATOR"
TEST_DELAY_ENV = "SEEDQ_TEST_GENERATOR_DELAY"
_STEP_NO = re.compile(r"Question 1\.(\d+) and Answer")


def canned_text(prompt: str, seed: int | None, index: int) -> str:
    h = zlib.crc32(f"{seed}:{index}:{prompt}".encode())
    steps = _STEP_NO.findall(prompt)
    k = steps[-1] if steps else "1"
    return (
        f"Question 1.{k}: What is part {h % 10007} of it?\nAnswer 1.{k}: It is {h % 97 + 1}. sure"
    )


class CannedGenerator:
    """Deterministic ``GroupGenerator`` test double (engine name ``canned``).

    ``fail_with``: an exception raised instead of answering, for the first ``fail_times``
    calls (all calls when ``fail_times`` is None)."""

    engine = "canned"

    def __init__(
        self,
        delay: float = 0.01,
        *,
        fail_with: Callable[[], BaseException] | None = None,
        fail_times: int | None = None,
    ) -> None:
        self.delay = delay
        self.fail_with = fail_with
        self.fail_times = fail_times
        self.calls = 0
        self.closed = False

    async def generate(self, request: GroupRequest) -> GroupResult:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail_with is not None and (
            self.fail_times is None or self.calls <= self.fail_times
        ):
            raise self.fail_with()
        sequences = [
            self._sequence(canned_text(p, request.params.sequence_seed(i), i))
            for i, p in enumerate(request.prompts)
        ]
        return GroupResult(self.engine, sequences, self.delay, 0)

    def _sequence(self, text: str) -> SequenceResult:
        n = len(text.split())
        metrics = SequenceMetrics(
            new_tokens=n,
            drafted_tokens=n,
            accepted_tokens=(3 * n) // 4,
            target_forwards=max(1, n // 2),
            draft_forwards=n,
            draft_seconds=self.delay / 2,
            verify_seconds=self.delay / 4,
            wait_seconds=self.delay / 4,
            wall_seconds=self.delay,
        )
        return SequenceResult(text, list(range(n)), "eos", metrics)

    def close(self) -> None:
        self.closed = True


def generator_factory_from_env() -> Callable[[], CannedGenerator] | None:
    """The canned generator when ``SEEDQ_TEST_GENERATOR=canned``, else None."""
    kind = os.environ.get(TEST_GENERATOR_ENV)
    if not kind:
        return None
    if kind != "canned":
        raise ValueError(f"{TEST_GENERATOR_ENV} must be 'canned', got {kind!r}")
    delay = float(os.environ.get(TEST_DELAY_ENV, "0.01"))
    return lambda: CannedGenerator(delay)
