"""What every engine shares: the loaded models, group preparation with a shared prompt
prefix encoded once, and peak-memory measurement."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import psutil
import torch
from transformers import DynamicCache

from seedq.decoding import kvcache
from seedq.decoding.config import EngineConfig
from seedq.decoding.drafters import Drafter, ModelDrafter
from seedq.decoding.models import LanguageModel, Tokenizer
from seedq.decoding.options import DecodingOptions
from seedq.decoding.prefix_cache import PrefixCache, PrefixCaches
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
    # prompt prefixes already encoded, per model (options.prefix_cache_mb; derived runtimes share)
    prefix: PrefixCaches = field(default_factory=PrefixCaches.default)
    options: DecodingOptions = field(default_factory=DecodingOptions)  # the worker's, passed down

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


@dataclass(frozen=True)
class Chunks:
    """Prefill in chunks of ``size`` tokens, calling ``between()`` between two chunks (the
    round batcher decodes its live rows there, so they never wait behind a long prefill).
    ``mixed(model, tokens, cache)``, when given, may feed a chunk itself, in the same forward
    as the round's rows (True: fed; False: the chunk goes the plain way)."""

    size: int
    between: Callable[[], None]
    mixed: Callable[[LanguageModel, list[int], DynamicCache], bool] | None = None


def feed_chain(model: LanguageModel, tokens: list[int], cache: DynamicCache,
               chunks: Chunks | None = None) -> None:
    """Encode ``tokens`` on top of ``cache``, in chunks when ``chunks`` says so."""
    size = chunks.size if chunks is not None and chunks.size > 0 else len(tokens)
    for start in range(0, len(tokens), max(size, 1)):
        piece = tokens[start:start + size]
        if chunks is not None and chunks.mixed is not None and chunks.mixed(model, piece, cache):
            continue
        if start and chunks is not None:
            chunks.between()
        model.forward_chain(piece, cache, keep=1)


def encode_prefix(model: LanguageModel, tokens: list[int], prefix: PrefixCache | None = None,
                  chunks: Chunks | None = None) -> tuple[DynamicCache, int]:
    """A new cache holding the KV of ``tokens``: the longest part the prefix cache holds is
    copied from it, only the rest is encoded (in ``chunks``, if given) and stored back.
    Returns the cache and how many tokens came from the prefix cache."""
    reused, cache = prefix.match(tokens) if prefix is not None else (0, kvcache.new_cache())
    if len(tokens) > reused:
        feed_chain(model, tokens[reused:], cache, chunks)
        if prefix is not None:
            prefix.insert(tokens, cache)
    return cache, reused


def prefill(model: LanguageModel, tokens: list[int], copies: int,
            prefix: PrefixCache | None = None, chunks: Chunks | None = None
            ) -> tuple[list[ModelCache], int]:
    """Encode a shared prefix once (reusing the prefix cache) and hand each sequence its own
    copy of the cache; also returns the number of tokens reused from the prefix cache."""
    cache, reused = encode_prefix(model, tokens, prefix, chunks)
    caches = [cache] + [kvcache.clone(cache) for _ in range(copies - 1)]
    return [ModelCache(c, len(tokens)) for c in caches], reused


def prefill_group(model: LanguageModel, prompts: Sequence[list[int]],
                  prefix: PrefixCache | None = None, chunks: Chunks | None = None
                  ) -> list[tuple[ModelCache, int]]:
    """Each prompt's starting cache and how many of its tokens came from the prefix cache.

    A prompt that an earlier group stored further than this group's shared prefix (its whole
    prompt, :func:`store_prompts`, which a later prompt may extend) starts from its own copy
    of that (all but its last token, which the engine's first forward feeds); the others
    share the group's common prefix, encoded once (through the prefix cache) and copied.
    The lengths are looked up before this group stores anything, so a prompt never counts
    what a sibling of its own group encoded."""
    shared = shared_prefix_length(prompts)
    starts: list[tuple[ModelCache, int] | None] = [None] * len(prompts)
    if prefix is not None:
        longer = [i for i, p in enumerate(prompts) if prefix.longest(p[:-1]) > shared]
        for i in longer:  # (an eviction meanwhile only shortens the copy: still exact)
            length, cache = prefix.match(prompts[i][:-1])
            starts[i] = (ModelCache(cache, length), length)
    rest = [i for i, start in enumerate(starts) if start is None]
    if rest:
        copies, reused = prefill(model, prompts[0][:shared], len(rest), prefix, chunks)
        for i, copy in zip(rest, copies, strict=True):
            starts[i] = (copy, reused)
    return [start for start in starts if start is not None]


def prepare_group(runtime: Runtime, request: GroupRequest, chunks: Chunks | None = None,
                  draft: bool = True) -> list[SequenceState]:
    """Tokenize, encode the shared prefix once per model (or start a prompt from its longer
    cached prefix; in ``chunks`` when given), and build per-sequence states. ``draft``
    False: a draft model's prefill is skipped (its rows will not draft; their draft caches
    stay empty)."""
    prompts = [runtime.tokenizer.encode(p, request.chat) for p in request.prompts]
    targets = prefill_group(runtime.target, prompts, runtime.prefix.target, chunks)
    drafts: list[ModelCache | None] = [None] * len(prompts)
    if draft and isinstance(runtime.drafter, ModelDrafter):
        drafts = [c for c, _ in prefill_group(runtime.drafter.model, prompts,
                                               runtime.prefix.draft, chunks)]
    states = []
    for index, ids in enumerate(prompts):
        target, reused = targets[index]
        state = SequenceState(
            index=index,
            prompt_ids=ids,
            params=request.params_for(index),
            generator=make_generator(request.seed_for(index)),
            target=target,
        )
        state.metrics.prompt_tokens = len(ids)
        state.metrics.reused_prompt_tokens = reused
        if runtime.drafter is not None:
            runtime.drafter.start(state, drafts[index])
        states.append(state)
    return states


def store_prompts(runtime: Runtime, states: Sequence[SequenceState]) -> None:
    """Store each sequence's whole prompt in the prefix caches, once a cache holds it (the
    engine's first forward fed the rest): a later group whose prompts repeat or extend it
    starts from it (:func:`prefill_group`). Exact (the KV of what was prefilled), and only
    the part the radix tree does not hold yet is copied. Call it where the target cache's
    first positions are committed tokens (after a forward of the prompt's rest, or after a
    verification was committed); a cache that does not hold the whole prompt is skipped (a
    draft cache counts only its committed ``length``)."""
    for state in states:
        size = len(state.prompt_ids)
        if kvcache.cache_length(state.target.cache) >= size:
            runtime.prefix.target.insert(state.prompt_ids, state.target.cache)
        if (state.draft is not None and isinstance(runtime.drafter, ModelDrafter)
                and state.draft.length >= size
                and kvcache.cache_length(state.draft.cache) >= size):
            runtime.prefix.draft.insert(state.prompt_ids, state.draft.cache)


class MemoryMeter:
    """Peak memory of a group, sampled at its steps: on CUDA the memory allocated on the
    device, on a CPU the process RSS. Nothing process-wide is reset (groups overlap in the
    SeeD scheduler), so on CUDA a group's peak includes what overlapping groups held."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.process = psutil.Process(os.getpid())
        self.peak = 0
        self.sample()

    def sample(self) -> None:
        if self.cuda:
            used = int(torch.cuda.memory_allocated(self.device))
        else:
            used = int(self.process.memory_info().rss)
        self.peak = max(self.peak, used)

    def tick(self) -> None:
        """After one decoding step: sampled on CUDA (cheap); on a CPU RSS is sampled per
        sequence and at the end only."""
        if self.cuda:
            self.sample()

    def result(self) -> int:
        self.sample()
        return self.peak


def group_result(
    engine: str, results: list[SequenceResult], started: float, meter: MemoryMeter
) -> GroupResult:
    return GroupResult(engine, results, time.perf_counter() - started, meter.result())
