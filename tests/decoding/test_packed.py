"""Packed forwards (seedq.decoding.packed): prefill chains and slot rows in one forward give
each part the logits and the KV its own plain forward gives; a failure crops the chains."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from seedq.decoding import attention, kvcache, packed
from seedq.decoding.loading import LoadedModel
from seedq.decoding.models import LanguageModel
from seedq.decoding.packed import Chain, forward_packed
from seedq.decoding.slot_cache import SlotCache

ATOL = 1e-5


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(8, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def prefilled(model: LanguageModel, sequence: list[int]) -> DynamicCache:
    cache = DynamicCache()
    if sequence:
        model.forward_chain(sequence, cache)
    return cache


def plain(model: LanguageModel, sequence: list[int], last: int) -> torch.Tensor:
    return model.forward_chain(sequence, DynamicCache())[-last:]


def slots_of(model: LanguageModel, histories: list[list[int]]) -> SlotCache:
    cache = SlotCache(model.model.config, len(histories) + 1, 96, torch.float32, model.device,
                      block=16)
    for history in histories:
        cache.load(cache.allocate(), prefilled(model, history))
    return cache


@pytest.fixture
def model(target: LoadedModel) -> LanguageModel:
    assert attention.installed(target.model.model)  # the packed path needs packed_sdpa
    config = target.model.model.config
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query
    return target.model


def test_chains_and_rows_of_one_forward_equal_their_own_forwards(model: LanguageModel) -> None:
    """Two chains (a 20-token chunk on a 30-token cache wanting its last 2 logits, a 3-token
    tail on an empty cache wanting 1) and three rows of different lengths feeding 1, 3 and 2
    tokens (GQA: the tiny model has 4 query heads over 2 KV heads)."""
    histories = [tokens(40, 1), tokens(25, 2), tokens(33, 3)]
    feeds = [tokens(1, 4), tokens(3, 5), tokens(2, 6)]
    slots = slots_of(model, histories)
    first, second = tokens(30, 7), tokens(20, 8)
    tail = tokens(3, 9)
    chains = [Chain(second, prefilled(model, first), need=2), Chain(tail, DynamicCache(), need=1)]
    chain_logits, row_logits = forward_packed(model, chains, slots, feeds)
    torch.testing.assert_close(chain_logits[0], plain(model, first + second, 2), atol=ATOL, rtol=0)
    torch.testing.assert_close(chain_logits[1], plain(model, tail, 1), atol=ATOL, rtol=0)
    for b, (history, feed) in enumerate(zip(histories, feeds, strict=True)):
        assert row_logits[b].shape == (len(feed), model.vocab_size)
        torch.testing.assert_close(row_logits[b], plain(model, history + feed, len(feed)),
                                   atol=ATOL, rtol=0)
    # each chain's cache grew by its tokens, holding exactly what a plain prefill holds
    for chain, whole in ((chains[0], first + second), (chains[1], tail)):
        assert kvcache.cache_length(chain.cache) == len(whole)
        reference = prefilled(model, whole)
        for mine, theirs in zip(chain.cache.layers, reference.layers, strict=True):
            torch.testing.assert_close(mine.keys, theirs.keys, atol=ATOL, rtol=0)
    # the rows' new entries are in their slots (committed by the caller, as after prepare)
    assert slots.lengths[:3] == [len(h) for h in histories]
    for b, feed in enumerate(feeds):
        slots.commit(b, len(feed))
    for b, (history, feed) in enumerate(zip(histories, feeds, strict=True)):
        reference = prefilled(model, history + feed)
        for layer, theirs in zip(slots.slot_layers, reference.layers, strict=True):
            torch.testing.assert_close(layer.keys[b, :, : len(history + feed)], theirs.keys[0],
                                       atol=ATOL, rtol=0)
            torch.testing.assert_close(layer.values[b, :, : len(history + feed)],
                                       theirs.values[0], atol=ATOL, rtol=0)


def test_rows_alone_and_a_chain_alone(model: LanguageModel) -> None:
    histories = [tokens(12, 11), tokens(17, 12)]
    slots = slots_of(model, histories)
    feeds = [tokens(2, 13), tokens(1, 14)]
    none, rows = forward_packed(model, [], slots, feeds)
    assert none == []
    for b, (history, feed) in enumerate(zip(histories, feeds, strict=True)):
        torch.testing.assert_close(rows[b], plain(model, history + feed, len(feed)),
                                   atol=ATOL, rtol=0)
    sequence = tokens(9, 15)
    (logits,), rows = forward_packed(model, [Chain(sequence, DynamicCache(), need=9)], None, [])
    assert rows == []
    torch.testing.assert_close(logits, plain(model, sequence, 9), atol=ATOL, rtol=0)


def test_a_failed_forward_crops_the_chains_back(model: LanguageModel,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The forward fails in the second layer's attention, after the first layer's and the
    second's keys were appended: every chain is back at its length, the rows' lengths are
    untouched, and the same forward then succeeds."""
    histories = [tokens(10, 21)]
    slots = slots_of(model, histories)
    first = tokens(14, 22)
    chain = Chain(tokens(5, 23), prefilled(model, first), need=1)
    real = packed.packed_attention

    def failing(plan: packed.PackedPlan, layer_idx: int, *args: object) -> torch.Tensor:
        if layer_idx == 1:
            raise RuntimeError("planted failure")
        return real(plan, layer_idx, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(attention, "packed_attention", failing)
    with pytest.raises(RuntimeError, match="planted"):
        forward_packed(model, [chain], slots, [[5]])
    assert kvcache.cache_length(chain.cache) == len(first)
    assert slots.lengths[:1] == [10]
    monkeypatch.setattr(attention, "packed_attention", real)
    (logits,), _ = forward_packed(model, [chain], slots, [[5]])
    torch.testing.assert_close(logits, plain(model, first + chain.tokens, 1), atol=ATOL, rtol=0)


def test_bad_plans_are_refused(model: LanguageModel) -> None:
    with pytest.raises(ValueError, match="a chain or a row"):
        forward_packed(model, [], None, [])
    with pytest.raises(ValueError, match="chain 0: 2 tokens, need 3"):
        forward_packed(model, [Chain([5, 6], DynamicCache(), need=3)], None, [])
    with pytest.raises(ValueError, match="need a slot cache"):
        forward_packed(model, [Chain([5], DynamicCache())], None, [[4]])
