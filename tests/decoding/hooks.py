"""Hooks for the scheduler robustness tests: hold a thread at a chosen step, find the
sequences of a group in a forward's rows, watch what goes into the scheduler's queues.

They hook names that every version of the scheduler goes through
(``seed.prepare_group``, ``speculative.forward_rows`` for verification,
``drafters.forward_rows`` for drafting), so that the tests also run against older code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from seedq.decoding import drafters
from seedq.decoding.engines import seed, speculative
from seedq.decoding.sequence import SequenceState
from seedq.decoding.types import GroupRequest, GroupResult

WAIT = 15.0  # seconds any step may take on a loaded 2-core machine


@dataclass
class Hold:
    """Stops the thread that reaches it until the test releases it."""

    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def stop_here(self) -> None:
        self.reached.set()
        if not self.release.wait(WAIT):
            raise AssertionError("a held step was never released")


class Groups:
    """Records the sequence states the scheduler prepares for each request, and runs
    ``before`` (in the verifier thread) before preparing one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch,
                 before: Callable[[GroupRequest], None] | None = None) -> None:
        self.states: dict[int, list[SequenceState]] = {}
        self.prepared: list[GroupRequest] = []
        real = seed.prepare_group

        def hooked(runtime: Any, request: GroupRequest) -> list[SequenceState]:
            self.prepared.append(request)
            if before is not None:
                before(request)
            states = real(runtime, request)
            self.states[id(request)] = states
            return states

        monkeypatch.setattr(seed, "prepare_group", hooked)

    def of(self, request: GroupRequest) -> list[SequenceState]:
        return self.states.get(id(request), [])


def in_rows(rows: Sequence[Any], states: Sequence[SequenceState], cache: str) -> bool:
    """Whether a forward's rows include one of ``states`` (``cache``: "target" or "draft")."""
    return any(row.cache is getattr(s, cache) for s in states for row in rows)


def on_verify(monkeypatch: pytest.MonkeyPatch, hook: Callable[[Sequence[Any]], None]) -> None:
    """Run ``hook(rows)`` before every verification forward."""
    real = speculative.forward_rows

    def hooked(model: Any, rows: Sequence[Any]) -> Any:
        hook(rows)
        return real(model, rows)

    monkeypatch.setattr(speculative, "forward_rows", hooked)


def on_draft(monkeypatch: pytest.MonkeyPatch, hook: Callable[[Sequence[Any]], None]) -> None:
    """Run ``hook(rows)`` before every draft forward."""
    real = drafters.forward_rows

    def hooked(model: Any, rows: Sequence[Any]) -> Any:
        hook(rows)
        return real(model, rows)

    monkeypatch.setattr(drafters, "forward_rows", hooked)


def state_of(item: object) -> SequenceState | None:
    """The sequence of a scheduler queue item (None for a group or a stop marker)."""
    if isinstance(item, tuple):
        return item[0] if isinstance(item[0], SequenceState) else None
    state = getattr(item, "state", None)
    return state if isinstance(state, SequenceState) else None


def watch_puts(q: Any, states: Callable[[], Sequence[SequenceState]], count: int
               ) -> threading.Event:
    """An event set once ``count`` items of the given sequences were put into queue ``q``."""
    seen = threading.Event()
    puts = [0]
    real = q.put

    def put(item: object, *args: Any, **kwargs: Any) -> None:
        real(item, *args, **kwargs)
        state = state_of(item)
        if state is not None and any(state is s for s in states()):
            puts[0] += 1
            if puts[0] >= count:
                seen.set()

    q.put = put
    return seen


def cancel_when(generate: Callable[[], Any], reached: threading.Event) -> None:
    """Await ``generate()`` in an event loop and cancel it once ``reached`` is set, as a job
    timeout or a cancel in the worker does."""

    async def scenario() -> None:
        task = asyncio.ensure_future(generate())
        assert await asyncio.to_thread(reached.wait, WAIT), "the step was never reached"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def tokens(result: GroupResult) -> list[list[int]]:
    return [s.token_ids for s in result.sequences]
