"""The state the SeeD scheduler keeps per group and per sequence between steps."""

from __future__ import annotations

import copy
import logging
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch

from seedq.decoding import kvcache
from seedq.decoding.drafters import Drafter
from seedq.decoding.engines.base import MemoryMeter, Runtime
from seedq.decoding.sequence import SequenceState
from seedq.decoding.tree import DraftTree
from seedq.decoding.types import GroupRequest, GroupResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupSpec:
    """How one group is decoded: its runtime (same target; its drafter holds the draft
    shape), drafts verified per target forward, sequences drafted per draft forward, and
    the drafter threads it wants."""

    runtime: Runtime
    verify_batch: int = 1
    draft_batch: int = 1
    draft_threads: int = 2

    @property
    def drafter(self) -> Drafter:
        assert self.runtime.drafter is not None
        return self.runtime.drafter


@dataclass(eq=False, kw_only=True)
class OpenGroup:
    """A caller's group inside a long-lived scheduler (the SeeD scheduler, the round
    batcher): its future, its sequences, and the target's busy seconds when it arrived."""

    request: GroupRequest
    future: Future[GroupResult]
    meter: MemoryMeter
    started: float = field(default_factory=time.perf_counter)
    busy_at_start: float = 0.0
    states: list[SequenceState] = field(default_factory=list)
    unfinished: int = 0

    def result(self, engine: str, busy_seconds: float, **extra: float) -> GroupResult:
        """The finished group's result; ``busy_seconds`` is the scheduler's running total."""
        wall = time.perf_counter() - self.started
        busy = busy_seconds - self.busy_at_start
        stats = {"target_busy_seconds": busy, "target_busy_fraction": busy / wall if wall else 0.0}
        return GroupResult(engine, [s.result() for s in self.states], wall,
                           self.meter.result(), {**stats, **extra})


@dataclass(eq=False, kw_only=True)
class SeedGroup(OpenGroup):
    spec: GroupSpec


@dataclass(eq=False)
class Ticket:
    """One sequence between steps: its draft (once drafted) and the CUDA event of the
    thread that handed it over."""

    state: SequenceState
    group: SeedGroup
    tree: DraftTree | None = None
    event: Any = None
    submitted: float = 0.0


@dataclass
class Snapshot:
    """A sequence's drafter-side state before a batched draft, to draft it again alone."""

    draft_length: int
    rng: torch.Tensor | None
    metrics: Any

    @classmethod
    def of(cls, state: SequenceState) -> Snapshot:
        length = state.draft.length if state.draft is not None else 0
        rng = state.generator.get_state() if state.generator is not None else None
        return cls(length, rng, copy.copy(state.metrics))

    def restore(self, state: SequenceState) -> None:
        if state.draft is not None:
            kvcache.crop(state.draft.cache, self.draft_length)
            state.draft.length = self.draft_length
        state.draft_nodes = []
        if self.rng is not None and state.generator is not None:
            state.generator.set_state(self.rng)
        state.metrics = self.metrics



def resolve(future: Future[GroupResult], result: GroupResult) -> None:
    try:
        future.set_result(result)
    except InvalidStateError:  # cancelled by its caller meanwhile: nobody waits for it
        log.debug("seed: a finished group had been cancelled")


def reject(future: Future[GroupResult], exc: BaseException) -> None:
    try:
        future.set_exception(exc)
    except InvalidStateError:
        log.debug("seed: a failed group had already been finished or cancelled")
