"""What every engine shares: the loaded models, group preparation with a shared prompt
prefix encoded once, and peak-memory measurement."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil
import torch

from seedq.decoding import kvcache
from seedq.decoding.config import EngineConfig
from seedq.decoding.drafters import Drafter, ModelDrafter
from seedq.decoding.models import LanguageModel, Tokenizer
from seedq.decoding.sequence import ModelCache, SequenceState, StopRule, make_generator
from seedq.decoding.types import GroupRequest, GroupResult, SequenceResult


@dataclass
class Runtime:
    """Models loaded once and shared by every group an engine runs."""

    config: EngineConfig
    target: LanguageModel
    tokenizer: Tokenizer
    drafter: Drafter | None = None
    draft_model: LanguageModel | None = None

    @functools.cached_property
    def stop_rule(self) -> StopRule:  # built once, used on every commit
        return StopRule(self.tokenizer)


class Engine(Protocol):
    name: str

    def run(self, request: GroupRequest) -> GroupResult: ...


def shared_prefix_length(prompts: Sequence[list[int]]) -> int:
    """Longest common token prefix, leaving every prompt at least one token to feed."""
    limit = min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return length


def prefill(model: LanguageModel, tokens: list[int], copies: int) -> list[ModelCache]:
    """Encode a shared prefix once and hand each sequence its own copy of the cache."""
    cache = kvcache.new_cache()
    if tokens:
        model.forward_chain(tokens, cache, keep=1)
    caches = [cache] + [kvcache.clone(cache) for _ in range(copies - 1)]
    return [ModelCache(c, len(tokens)) for c in caches]


def prepare_group(runtime: Runtime, request: GroupRequest) -> list[SequenceState]:
    """Tokenize, encode the shared prefix once per model, and build per-sequence states."""
    prompts = [runtime.tokenizer.encode(p, request.chat) for p in request.prompts]
    shared = shared_prefix_length(prompts)
    target_caches = prefill(runtime.target, prompts[0][:shared], len(prompts))
    draft_caches: list[ModelCache | None] = [None] * len(prompts)
    if isinstance(runtime.drafter, ModelDrafter):
        draft_caches = list(prefill(runtime.drafter.model, prompts[0][:shared], len(prompts)))
    states = []
    for index, ids in enumerate(prompts):
        state = SequenceState(
            index=index,
            prompt_ids=ids,
            params=request.params_for(index),
            generator=make_generator(request.seed_for(index)),
            target=target_caches[index],
        )
        if runtime.drafter is not None:
            runtime.drafter.start(state, draft_caches[index])
        states.append(state)
    return states


class MemoryMeter:
    """Peak memory of a group: CUDA max allocated, or the process RSS sampled on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.process = psutil.Process(os.getpid())
        self.peak = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            self.device = device
        self.sample()

    def sample(self) -> None:
        if not self.cuda:
            self.peak = max(self.peak, int(self.process.memory_info().rss))

    def result(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        self.sample()
        return self.peak


def group_result(
    engine: str, results: list[SequenceResult], started: float, meter: MemoryMeter
) -> GroupResult:
    return GroupResult(engine, results, time.perf_counter() - started, meter.result())
