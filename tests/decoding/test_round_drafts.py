"""The round's draft slots: every model-drafting row's draft KV in one slot cache.

Each draft must be the chain the draft model gives for the row's whole context computed
from scratch (greedy), step after step, while rows draft different lengths or catch up
without drafting, accept part of their drafts, leave and join; and sampled drafts must
carry the warped draft distribution they were drawn from."""

from __future__ import annotations

import random

import torch

from seedq.decoding import kvcache
from seedq.decoding.config import EngineConfig
from seedq.decoding.engines.base import prepare_group
from seedq.decoding.engines.round_batch import Row
from seedq.decoding.engines.round_drafts import DraftSlots
from seedq.decoding.loading import LoadedModel
from seedq.decoding.models import LanguageModel
from seedq.decoding.sampling import warp_probs
from seedq.decoding.sequence import SequenceState
from seedq.decoding.types import GroupRequest, SamplingParams
from tests.decoding.conftest import PROMPTS, make


def rows_for(target: LoadedModel, draft: LoadedModel, prompts: tuple[str, ...],
             params: SamplingParams) -> list[Row]:
    generator = make(EngineConfig(engine="seed", target="tiny", draft="tiny-draft"), target,
                     draft)
    states = prepare_group(generator.runtime, GroupRequest(prompts, params))
    generator.close()
    for state in states:  # the target's first token, as the round's admission commits it
        state.output_ids.append(7 + state.index)
    return [Row(state, None, state.output_ids[-1], 0) for state in states]  # type: ignore


def reference_chain(model: LanguageModel, state: SequenceState, n: int) -> list[int]:
    """Greedy chain of ``n`` tokens from the whole context, without any kept cache."""
    ids = list(state.prompt_ids) + list(state.output_ids)
    chain: list[int] = []
    for _ in range(n):
        logits = model.forward_chain(ids + chain, kvcache.new_cache(), keep=1)
        chain.append(int(logits[-1].argmax()))
    return chain


def test_drafts_equal_the_draft_model_from_scratch_while_rows_come_and_go(
    target: LoadedModel, close_draft: LoadedModel
) -> None:
    rng = random.Random(4)
    params = SamplingParams(max_new_tokens=200)
    rows = rows_for(target, close_draft, PROMPTS[:4], params)
    later = rows_for(target, close_draft, PROMPTS[4:6], params)
    slots = DraftSlots(close_draft.model)
    live = list(rows)
    for step in range(8):
        if step == 3:
            live.pop(1)  # a row leaves (its slot is taken by the last row)
        if step == 5:
            live.extend(later)  # rows join mid-round
        slots.sync(live)
        assert slots.cache is not None and slots.cache.active == len(live)
        lengths = [rng.randint(0, 4) for _ in live]
        if not any(lengths):
            lengths[0] = 2
        picks = [(row, n) for row, n in zip(live, lengths, strict=True) if n]
        trees, run = slots.draft(picks)
        assert run.forwards == max(lengths)
        for (row, n), tree in zip(picks, trees, strict=True):
            assert tree.tokens == reference_chain(close_draft.model, row.state, n)
            accepted = rng.randint(0, n)  # verification keeps a prefix, then its own token
            row.state.output_ids.extend([*tree.tokens[:accepted], rng.randrange(50)])
            slots.accept(row, accepted)
        for row in live:
            if all(row is not r for r, _ in picks):  # not drafted: the target committed one
                row.state.output_ids.append(rng.randrange(50))
            assert row.state.draft is not None
            assert row.state.draft.length <= len(row.state.prompt_ids) + len(row.state.output_ids)
    slots.sync([])
    assert slots.cache is None and slots.bytes == 0


def test_sampled_drafts_carry_their_warped_draft_distribution(
    target: LoadedModel, close_draft: LoadedModel
) -> None:
    params = SamplingParams(max_new_tokens=50, temperature=0.8, top_k=5, seed=3)
    rows = rows_for(target, close_draft, PROMPTS[:3], params)
    slots = DraftSlots(close_draft.model)
    slots.sync(rows)
    trees, _ = slots.draft([(row, 3) for row in rows])
    for row, tree in zip(rows, trees, strict=True):
        ids = list(row.state.prompt_ids) + list(row.state.output_ids)
        for j, token in enumerate(tree.tokens):
            logits = close_draft.model.forward_chain(ids + tree.tokens[:j], kvcache.new_cache(),
                                                     keep=1)[-1]
            expected = warp_probs(logits[None], params)[0]
            assert torch.allclose(tree.draft_probs[j], expected, atol=1e-5)
            assert expected[token] > 0  # drawn from it (inside the top 5)
