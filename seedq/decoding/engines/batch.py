"""``batch``: the target alone, all N sequences in one padded batch (the paper's "Parallel").

The shared prompt prefix is encoded once and repeated; the per-sequence suffixes are
left-padded inside one forward (2D attention mask with explicit position ids); then every
step decodes one token for every unfinished row. Finished rows leave the batch.
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from seedq.decoding.engines.base import (
    MemoryMeter,
    Runtime,
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
        cache = DynamicCache()
        states = [
            SequenceState(i, ids, request.params_for(i), make_generator(request.seed_for(i)),
                          ModelCache(cache, 0))
            for i, ids in enumerate(prompts)
        ]
        if shared:
            self.runtime.target.forward_chain(prompts[0][:shared], cache, keep=1)
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
        mask: torch.Tensor,  # [B, K] 0/1
        positions: torch.Tensor,  # [B, Q]
    ) -> torch.Tensor:  # [B, V] logits of the last column
        began = time.perf_counter()
        target = self.runtime.target
        with torch.inference_mode():
            out = target.model(
                input_ids=ids.to(target.device), attention_mask=mask.to(target.device),
                position_ids=positions.to(target.device), cache=cache, use_cache=True,
                logits_to_keep=1,
            )
        target.forwards += 1
        elapsed = time.perf_counter() - began
        for state in states:
            state.metrics.target_forwards += 1
            state.metrics.verify_seconds += elapsed
        return out.logits[:, -1, : target.vocab_size].float().cpu()

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
            tokens = [self._choose(state, logits[row]) for row, state in enumerate(active)]
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

    def _choose(self, state: SequenceState, logits: torch.Tensor) -> int:
        token = sample(warp_probs(logits, state.params), state.generator)
        self.runtime.stop_rule.commit(state, [token])
        return token
