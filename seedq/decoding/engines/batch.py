"""``batch``: the target alone, all N sequences in one padded batch (the paper's "Parallel").

The shared prompt prefix is encoded once (through the prefix cache: only what it does not
hold is encoded) and repeated; the per-sequence suffixes are
left-padded inside one forward (a per-row padding mask, made a 4D mask for
``LanguageModel.forward``, with explicit position ids); then every step decodes one token
for every unfinished row. Finished rows leave the batch. Each forward's time is split
evenly over its rows (``verify_seconds``).
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from seedq.decoding.engines.base import (
    MemoryMeter,
    Runtime,
    encode_prefix,
    group_result,
    shared_prefix_length,
)
from seedq.decoding.sampling import sample, warp_probs
from seedq.decoding.sequence import ModelCache, SequenceState, make_generator
from seedq.decoding.types import GroupRequest, GroupResult


class BatchEngine:
    name = "batch"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def run(self, request: GroupRequest) -> GroupResult:
        started = time.perf_counter()
        meter = MemoryMeter(self.runtime.target.device)
        prompts = [self.runtime.tokenizer.encode(p, request.chat) for p in request.prompts]
        shared = shared_prefix_length(prompts)
        cache, reused = encode_prefix(self.runtime.target, prompts[0][:shared],
                                      self.runtime.prefix.target)
        states = [
            SequenceState(i, ids, request.params_for(i), make_generator(request.seed_for(i)),
                          ModelCache(cache, 0))
            for i, ids in enumerate(prompts)
        ]
        for state in states:
            state.metrics.prompt_tokens = len(state.prompt_ids)
            state.metrics.reused_prompt_tokens = reused
        if shared:
            cache.batch_repeat_interleave(len(prompts))
        mask, positions, logits = self._prefill_suffixes(states, shared, cache)
        self._decode(states, cache, mask, positions, logits, meter)
        return group_result(self.name, [s.result() for s in states], started, meter)

    def _prefill_suffixes(
        self, states: list[SequenceState], shared: int, cache: DynamicCache
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        suffixes = [s.prompt_ids[shared:] for s in states]
        width = max(len(x) for x in suffixes)
        ids = torch.zeros((len(states), width), dtype=torch.long)
        mask = torch.zeros((len(states), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        positions = torch.zeros((len(states), width), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            pad = width - len(suffix)
            ids[row, pad:] = torch.tensor(suffix)
            mask[row, shared + pad :] = 1
            positions[row, pad:] = torch.arange(shared, shared + len(suffix))
        logits = self._forward(states, ids, cache, mask, positions)
        return mask, positions[:, -1], logits

    def _forward(
        self,
        states: list[SequenceState],
        ids: torch.Tensor,  # [B, Q]
        cache: DynamicCache,
        mask: torch.Tensor,  # [B, K] 0/1: which cached and new positions each row may see
        positions: torch.Tensor,  # [B, Q]
    ) -> torch.Tensor:  # [B, V] logits of the last column
        began = time.perf_counter()
        logits = self.runtime.target.forward(ids, cache, attention_mask(mask, ids.shape[1]),
                                             positions, keep=1)  # [B, 1, V]
        share = (time.perf_counter() - began) / len(states)  # one forward, split per row
        for state in states:
            state.metrics.target_forwards += 1
            state.metrics.verify_seconds += share
        return logits[:, -1].cpu()

    def _decode(
        self,
        states: list[SequenceState],
        cache: DynamicCache,
        mask: torch.Tensor,
        last_positions: torch.Tensor,
        logits: torch.Tensor,
        meter: MemoryMeter,
    ) -> None:
        active = list(states)
        while True:
            tokens = [commit_token(self.runtime, state, logits[row])
                      for row, state in enumerate(active)]
            keep = [row for row, state in enumerate(active) if not state.done]
            meter.sample()
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(index.to(self.runtime.target.device))
                mask, last_positions = mask[index], last_positions[index]
                tokens = [tokens[row] for row in keep]
                active = [active[row] for row in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
            last_positions = last_positions + 1
            ids = torch.tensor(tokens, dtype=torch.long)[:, None]
            logits = self._forward(active, ids, cache, mask, last_positions[:, None])


def commit_token(runtime: Runtime, state: SequenceState, logits: torch.Tensor) -> int:
    """Sample a sequence's next token from its logits [V] (its own generator, so the tokens
    do not depend on which rows shared the forward) and commit it under the stop rules."""
    token = sample(warp_probs(logits, state.params), state.generator)
    runtime.stop_rule.commit(state, [token])
    return token


def attention_mask(mask: torch.Tensor, queries: int) -> torch.Tensor:
    """Padding mask [B, K] (1 = a real position) -> boolean mask [B, 1, Q, K] for the last Q
    positions: each query sees the real positions up to itself, and itself (so a padding
    query is never fully masked, which would turn its attention into NaNs)."""
    keys = mask.shape[1]
    causal = torch.ones((queries, keys), dtype=torch.bool).tril(keys - queries)  # [Q, K]
    itself = torch.zeros((queries, keys), dtype=torch.bool)
    itself[:, keys - queries :] = torch.eye(queries, dtype=torch.bool)
    return (mask.bool()[:, None, None, :] & causal) | itself  # [B, 1, Q, K]
