"""``ar``: the target alone, one sequence after another, with a KV cache (serial baseline)."""

from __future__ import annotations

import time

from seedq.decoding.engines.base import MemoryMeter, Runtime, group_result, prepare_group
from seedq.decoding.sampling import sample, warp_probs
from seedq.decoding.sequence import SequenceState
from seedq.decoding.types import GroupRequest, GroupResult


class AutoregressiveEngine:
    name = "ar"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def run(self, request: GroupRequest) -> GroupResult:
        started = time.perf_counter()
        meter = MemoryMeter(self.runtime.target.device)
        states = prepare_group(self.runtime, request)
        for state in states:
            state.started = time.perf_counter()
            while not state.done:
                self.step(state)
                meter.tick()
            meter.sample()
        return group_result(self.name, [s.result() for s in states], started, meter)

    def step(self, state: SequenceState) -> None:
        began = time.perf_counter()
        pending = state.pending(state.target)
        logits = self.runtime.target.forward_chain(pending, state.target.cache, keep=1)  # [1, V]
        state.target.length += len(pending)
        token = sample(warp_probs(logits[-1].cpu(), state.params), state.generator)
        state.metrics.target_forwards += 1
        state.metrics.verify_seconds += time.perf_counter() - began
        self.runtime.stop_rule.commit(state, [token])
