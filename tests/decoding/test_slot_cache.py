"""The slot KV cache: logits of rows of different lengths, prefill and multi-token rows,
rollback, tree rows, compaction, growth and load/export equal per-row plain forwards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
import torch
from transformers import DynamicCache

from seedq.decoding.loading import LoadedModel
from seedq.decoding.models import LanguageModel
from seedq.decoding.slot_cache import SlotCache, Tree
from seedq.decoding.tree import ancestors_or_self

ATOL = 1e-5
PAD = 7  # any id: padding queries are masked out


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(8, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def plain(model: LanguageModel, sequence: list[int], last: int) -> torch.Tensor:
    """Logits [last, V] of the last ``last`` tokens of one sequence, from scratch."""
    return model.forward_chain(sequence, DynamicCache())[-last:]


def prefilled(model: LanguageModel, sequence: list[int]) -> DynamicCache:
    cache = DynamicCache()
    model.forward_chain(sequence, cache)
    return cache


def new_cache(model: LanguageModel, slots: int = 4, capacity: int = 96, block: int = 16
              ) -> SlotCache:
    return SlotCache(model.model.config, slots, capacity, torch.float32, model.device, block)


def run(model: LanguageModel, cache: SlotCache, feeds: Sequence[list[int]],
        trees: Mapping[int, Tree] | None = None) -> torch.Tensor:
    """One forward of every row's feed (right-padded) -> logits [rows, q, V]."""
    step = cache.prepare([len(feed) for feed in feeds], trees)
    q = max(len(feed) for feed in feeds)
    ids = torch.full((len(feeds), q), PAD, dtype=torch.long)
    for row, feed in enumerate(feeds):
        ids[row, : len(feed)] = torch.tensor(feed, dtype=torch.long)
    return model.forward(ids, cache, step.attention_mask, step.position_ids)  # type: ignore[arg-type]


def join(model: LanguageModel, cache: SlotCache, prefixes: Sequence[list[int]]) -> None:
    for prefix in prefixes:
        cache.load(cache.allocate(), prefilled(model, prefix))


def check(model: LanguageModel, logits: torch.Tensor, histories: Sequence[list[int]],
          feeds: Sequence[list[int]]) -> None:
    """Row b's logits over its feed equal a plain forward of its history + feed."""
    for row, (history, feed) in enumerate(zip(histories, feeds, strict=True)):
        expected = plain(model, history + feed, len(feed))
        torch.testing.assert_close(logits[row, : len(feed)], expected, atol=ATOL, rtol=0)


@pytest.fixture
def model(target: LoadedModel) -> LanguageModel:
    return target.model


def test_rows_of_different_lengths_decode_like_plain_forwards(model: LanguageModel) -> None:
    histories = [tokens(5, 1), tokens(17, 2), tokens(40, 3)]
    cache = new_cache(model)
    join(model, cache, histories)
    for step in range(3):
        feeds = [[tokens(1, 10 * step + row)[0]] for row in range(3)]
        logits = run(model, cache, feeds)
        check(model, logits, histories, feeds)
        for row, feed in enumerate(feeds):
            cache.commit(row, 1)
            histories[row] = histories[row] + feed
    assert cache.lengths[:3] == [8, 20, 43]
    assert cache.get_seq_length() == 43


def test_prefill_and_decode_and_multi_token_rows_in_one_forward(model: LanguageModel) -> None:
    cache = new_cache(model)
    histories: list[list[int]] = [[], tokens(20, 4), tokens(9, 5)]
    cache.allocate()  # row 0 starts empty: its 12 tokens are its prefill
    join(model, cache, histories[1:])
    feeds = [tokens(12, 6), tokens(1, 7), tokens(4, 8)]
    logits = run(model, cache, feeds)
    assert logits.shape[:2] == (3, 12)
    check(model, logits, histories, feeds)
    for row, feed in enumerate(feeds):
        cache.commit(row, len(feed))
        histories[row] = histories[row] + feed
    feeds = [tokens(2, 9), tokens(3, 10), tokens(1, 11)]
    check(model, run(model, cache, feeds), histories, feeds)


def test_width_follows_live_lengths(model: LanguageModel) -> None:
    cache = new_cache(model, capacity=200, block=16)
    join(model, cache, [tokens(30, 12), tokens(5, 13)])
    mask = cache.prepare([1, 3]).attention_mask
    assert mask.shape == (2, 1, 3, 48)  # 30 + 3 rounded up to 16
    assert mask[0, 0, 0].nonzero().flatten().tolist() == list(range(31))
    assert mask[0, 0, 2].nonzero().flatten().tolist() == [32]  # padding: only itself
    assert mask[1, 0, 2].nonzero().flatten().tolist() == list(range(8))
    assert cache.prepare([1, 1]).attention_mask.shape == (2, 1, 1, 32)


def test_rollback_by_lowering_length_then_writing_again(model: LanguageModel) -> None:
    history = tokens(15, 14)
    cache = new_cache(model)
    join(model, cache, [history, tokens(3, 15)])
    drafted = tokens(4, 16)
    run(model, cache, [drafted, tokens(1, 17)])
    cache.commit(0, 1)  # keep the first drafted token only
    cache.set_length(1, 2)  # and roll row 1 back below its prefix
    feeds = [tokens(3, 18), tokens(2, 19)]
    logits = run(model, cache, feeds)
    check(model, logits, [history + drafted[:1], tokens(3, 15)[:2]], feeds)


def tree_mask(parents: list[int]) -> torch.Tensor:
    mask = torch.zeros((len(parents), len(parents)), dtype=torch.bool)
    for node in range(len(parents)):
        mask[node, ancestors_or_self(parents, node)] = True
    return mask


def test_tree_rows_then_keep_accepted_path(model: LanguageModel) -> None:
    prefix, other = tokens(11, 20), tokens(6, 21)
    nodes, parents, depths = tokens(5, 22), [-1, -1, 0, 1, 2], [1, 1, 2, 2, 3]
    cache = new_cache(model)
    join(model, cache, [prefix, other])
    mask = tree_mask(parents)
    before = mask.clone()
    chain = tokens(2, 23)
    logits = run(model, cache, [nodes, chain], {0: (mask, [d - 1 for d in depths])})
    assert torch.equal(mask, before)
    for node in range(len(nodes)):
        path = [nodes[i] for i in reversed(ancestors_or_self(parents, node))]
        torch.testing.assert_close(logits[0, node], plain(model, prefix + path, 1)[0],
                                   atol=ATOL, rtol=0)
    check(model, logits[1:], [other], [chain])
    cache.keep_positions(0, 11, [11, 13, 15])  # nodes 0 -> 2 -> 4
    cache.commit(1, 2)
    assert cache.lengths[:2] == [14, 8]
    feeds = [tokens(1, 24), tokens(1, 25)]
    path = [nodes[0], nodes[2], nodes[4]]
    check(model, run(model, cache, feeds), [prefix + path, other + chain], feeds)


def test_release_compacts_rows_and_keeps_logits(model: LanguageModel) -> None:
    histories = [tokens(7, 30), tokens(12, 31), tokens(20, 32)]
    cache = new_cache(model, slots=3)
    join(model, cache, histories)
    assert cache.release(0) == 2  # the last row moved into slot 0
    assert cache.active == 2 and cache.lengths == [20, 12, 0]
    feeds = [tokens(2, 33), tokens(1, 34)]
    check(model, run(model, cache, feeds), [histories[2], histories[1]], feeds)
    assert cache.release(1) is None
    slot = cache.allocate()
    cache.load(slot, prefilled(model, histories[0]))
    feeds = [tokens(1, 35), tokens(3, 36)]
    check(model, run(model, cache, feeds), [histories[2], histories[0]], feeds)


def test_grow_keeps_rows(model: LanguageModel) -> None:
    histories = [tokens(10, 40), tokens(4, 41)]
    cache = new_cache(model, slots=2, capacity=16, block=8)
    join(model, cache, histories)
    run(model, cache, [tokens(4, 42), tokens(4, 43)])
    cache.commit(0, 4)
    histories[0] += tokens(4, 42)
    with pytest.raises(ValueError, match=r"slot 0: length 14 \+ 4 .*capacity 16.*grow"):
        cache.prepare([4, 1])
    small = cache.bytes
    cache.grow(32, slots=3)
    assert cache.capacity == 32 and cache.slots == 3 and cache.bytes == small * 3
    join(model, cache, [tokens(3, 44)])
    feeds = [tokens(4, 45), tokens(2, 46), tokens(1, 47)]
    check(model, run(model, cache, feeds), [*histories, tokens(3, 44)], feeds)


def test_errors(model: LanguageModel) -> None:
    cache = new_cache(model, slots=1, capacity=8)
    join(model, cache, [tokens(8, 50)])
    with pytest.raises(ValueError, match="exceeds the capacity 8; call grow"):
        cache.prepare([1])
    with pytest.raises(ValueError, match="slots are in use"):
        cache.allocate()
    with pytest.raises(ValueError, match="capacity"):
        cache.load(0, prefilled(model, tokens(9, 51)))
    cache.set_length(0, 4)
    ids = torch.tensor([[1]])
    with pytest.raises(RuntimeError, match="prepare"):
        model.forward(ids, cache)  # type: ignore[arg-type]
    step = cache.prepare([1])
    model.forward(ids, cache, step.attention_mask, step.position_ids)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="prepare"):  # one prepare per forward
        model.forward(ids, cache, step.attention_mask, step.position_ids)  # type: ignore[arg-type]
    with pytest.raises(IndexError):
        cache.commit(1, 1)


def test_load_export_round_trip_and_inputs_not_mutated(model: LanguageModel) -> None:
    history = tokens(13, 60)
    source = prefilled(model, history)
    saved = [(layer.keys.clone(), layer.values.clone()) for layer in source.layers]
    cache = new_cache(model)
    cache.load(cache.allocate(), source)
    counts = [2]
    step = cache.prepare(counts)
    ids = torch.tensor([tokens(2, 61)])
    ids_before = ids.clone()
    model.forward(ids, cache, step.attention_mask, step.position_ids)  # type: ignore[arg-type]
    assert counts == [2] and torch.equal(ids, ids_before)
    for layer, (keys, values) in zip(source.layers, saved, strict=True):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    out = cache.export(0)
    for layer, (keys, values) in zip(out.layers, saved, strict=True):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
        layer.keys.zero_()  # a copy: the slot is untouched
    cache.commit(0, 2)
    again = cache.export(0)
    assert again.get_seq_length() == 15
    tail = prefilled(model, history + ids[0].tolist())
    for mine, theirs in zip(again.layers, tail.layers, strict=True):
        torch.testing.assert_close(mine.keys, theirs.keys, atol=ATOL, rtol=0)
    cache.load(0, [(layer.keys, layer.values) for layer in tail.layers], length=10)
    assert cache.lengths[0] == 10
