"""The admission half of the round batcher: FCFS admission of groups between forwards, and
their prefill fed in the live rows' own forwards.

A group at the head of the queue is admitted when its sequences fit the token and KV
budgets (:mod:`~seedq.decoding.engines.round_budget`). Its prompts go through the prefix
cache; what is left is encoded in chunks of ``SEEDQ_PREFILL_CHUNK`` tokens. With
``SEEDQ_PREFILL_MIX=1`` (the default, on the slot round storage with ``packed`` attention)
every target chunk, and then each sequence's last prompt token(s), rides in the live rows'
next decode/verify forward as a packed chain (:mod:`seedq.decoding.packed`): the rows take
their step in the same forward instead of waiting, and the prefill costs little more than
the rows' forward alone (memory-bound: it streams the weights once). A draft model's
chunks ride the same way in that model's first draft forward of the next step (when some
live row drafts with it). Otherwise, or when nothing is live, or when such a forward fails
(the chains are cropped back), the chunk is fed alone and the live rows take a step
between two chunks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from seedq.decoding import attention, kvcache
from seedq.decoding.batching import RowInput, forward_rows
from seedq.decoding.engines.base import Chunks, Runtime, prepare_group, store_prompts
from seedq.decoding.engines.batch import commit_token
from seedq.decoding.engines.round_batch import Riders, RoundGroup, RoundStorage, Row
from seedq.decoding.engines.round_budget import KvBudget, cache_bytes
from seedq.decoding.engines.round_records import RoundLog, RoundStats
from seedq.decoding.engines.round_speculation import RoundSpeculation
from seedq.decoding.engines.seed_groups import reject
from seedq.decoding.models import LanguageModel
from seedq.decoding.packed import Chain
from seedq.decoding.types import DecodingError

log = logging.getLogger(__name__)


class RoundAdmission:
    """Admission and prefill for :class:`~seedq.decoding.engines.rounds.RoundBatcher` (which
    sets these attributes and defines the step the riders ride in)."""

    runtime: Runtime
    budget: int
    chunk: int
    kv: KvBudget
    target_lock: threading.Lock
    stats: RoundStats
    busy_seconds: float
    speculation: RoundSpeculation
    records: RoundLog
    _waiting: deque[RoundGroup]
    _batch: RoundStorage

    def _step(self, riders: Riders | None = None) -> None:
        raise NotImplementedError

    def _guarded(self, groups: list[RoundGroup], step: Callable[..., None], *args: Any
                 ) -> None:
        raise NotImplementedError

    def _finish(self, group: RoundGroup) -> None:
        raise NotImplementedError

    def _admit_waiting(self) -> None:
        """Admit groups from the head of the queue while their sequences fit the budget."""
        while self._waiting:
            head = self._waiting[0]
            if head.future.done():  # cancelled while it waited
                self._waiting.popleft()
                continue
            live = len(self._batch.rows)
            if live and live + len(head.request.prompts) > self.budget:
                return
            try:
                fits = self.kv.check(self._batch, head)
            except Exception as exc:  # over the KV budget alone (or its prompts fail)
                self._waiting.popleft()
                self.stats.kv_rejected += isinstance(exc, DecodingError)
                reject(head.future, exc)
                continue
            if not fits:  # the live rows decode on (the loop does not block) until it fits
                self.stats.kv_waits += 1
                return
            self._waiting.popleft()
            if live:
                self.stats.joined_mid_round += 1
            try:
                self._admit(head)
            except Exception as exc:
                log.error("round batcher: admitting a group failed", exc_info=exc)
                reject(head.future, exc)

    def _admit(self, group: RoundGroup) -> None:
        """Prefill the group (prefix cache, then its suffixes in one forward), commit each
        sequence's first token, and add the unfinished ones to the round."""
        nested = [0.0]  # seconds spent decoding the live rows between prefill chunks
        chunks = Chunks(self.chunk, lambda: self._between_chunks(nested),
                        lambda model, tokens, cache: self._mix_chunk(nested, model, tokens, cache))
        with self.target_lock:
            began = time.perf_counter()
            group.busy_at_start = self.busy_seconds
            try:
                if group.speculate and group.mode.planned:  # once per model, first auto group
                    self.speculation.calibrate(group.runtime.drafter,
                                               group.runtime.config.gamma)
                    group.drafting = self.speculation.worth_drafting(self._batch.rows, group)
                    self.stats.draftless_groups += not group.drafting
                group.states = prepare_group(group.runtime, group.request, chunks,
                                             draft=group.speculate)
                inputs = [RowInput(s.pending(s.target), s.target, need=1) for s in group.states]
                logits = self._first_logits(inputs, nested)
            finally:
                elapsed = time.perf_counter() - began - nested[0]
                self.busy_seconds += elapsed
        rows, caches = [], []
        for state, row_input, last in zip(group.states, inputs, logits, strict=True):
            state.target.length += len(row_input.tokens)
            store_prompts(group.runtime, [state])  # whole, for the prompts that extend it
            state.metrics.target_forwards += 1
            state.metrics.verify_seconds += elapsed / len(group.states)
            token = commit_token(group.runtime, state, last[-1])
            if not state.done:
                rows.append(Row(state, group, token, state.target.length))
                caches.append(state.target.cache)
                state.target.cache = kvcache.new_cache()  # the round holds its KV now
        group.unfinished = len(rows)
        group.meter.sample()
        self.records.admitted()
        if rows:
            self._batch.join(rows, caches)
            self.kv.observe(self._batch, self.stats)
            self.records.observe(cache_bytes(self._batch), len(self._batch.rows), forward=True)
        else:
            self._finish(group)

    def _between_chunks(self, nested: list[float]) -> None:
        """Between two chunks of a group's prefill (the target lock held by the admission):
        one decode step of the live rows, so that they never wait behind a long prefill."""
        began = time.perf_counter()
        self.stats.prefill_chunks += 1
        self.target_lock.release()  # the step takes it for its own forward
        try:
            if self._batch.rows:
                self.stats.steps_between_chunks += 1
                self._guarded(self._batch.groups(), self._step)
        finally:
            self.target_lock.acquire()
            nested[0] += time.perf_counter() - began

    # -- prefill in the rows' forwards --------------------------------------------------
    def _mixable(self, model: LanguageModel | None = None) -> bool:
        """Whether a joining group's prefill for the target (``model`` None) or a draft
        model can ride in the live rows' next forward (a draft model's: in its first draft
        forward, so some live row must draft with it)."""
        if not (self.runtime.options.prefill_mix and self._batch.rows and self._batch.can_mix):
            return False
        if model is None:
            return attention.installed(self.runtime.target.model)
        return attention.installed(model.model) and self.speculation.drafts_with(model)

    def _mix_chunk(self, nested: list[float], model: LanguageModel, tokens: list[int],
                   cache: DynamicCache) -> bool:
        """A chunk of a joining group's prefill, fed in the live rows' next forward
        (``Chunks.mixed``): the target's in the verify forward, a draft model's in its
        first draft forward. False: fed the plain way (nothing live, or it did not ride)."""
        rider = None if model is self.runtime.target else model
        return self._ride(Riders([Chain(tokens, cache)], rider), nested) is not None

    def _first_logits(self, inputs: list[RowInput], nested: list[float]) -> list[torch.Tensor]:
        """Each joining sequence's logits for its first token: its pending prompt tokens ride
        in the rows' next forward when they can, else one batched forward of their own."""
        caches = {id(row.cache.cache) for row in inputs}
        if len(caches) == len(inputs) and all(
                row.tokens and kvcache.cache_length(row.cache.cache) == row.cache.length
                for row in inputs):
            ridden = self._ride(Riders([Chain(row.tokens, row.cache.cache, need=1)
                                        for row in inputs]), nested)
            if ridden is not None:
                return ridden
        return forward_rows(self.runtime.target, inputs)

    def _ride(self, riders: Riders, nested: list[float]) -> list[torch.Tensor] | None:
        """One step of the live rows that also feeds ``riders`` (the admission holds the
        target lock; the step takes it itself). None when they were not fed (nothing to
        mix with, the step drafted nothing with their model, or the mixed forward failed):
        the caller feeds them alone."""
        if not self._mixable(riders.model):
            return None
        began = time.perf_counter()
        self.target_lock.release()
        try:
            self._guarded(self._batch.groups(), self._step, riders)
        finally:
            self.target_lock.acquire()
            nested[0] += time.perf_counter() - began - riders.seconds
        self.stats.failed_mixes += riders.failed
        if riders.logits is not None:
            self.stats.mixed_prefills += 1
            self.stats.mixed_prefill_tokens += riders.tokens
            self.stats.mixed_draft_prefills += riders.model is not None
        return riders.logits
