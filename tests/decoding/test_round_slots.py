"""The round's slot storage (``SlotRoundBatch``) against the left-padded one (``RoundBatch``):
the same logits (and both those of plain per-row forwards) over a scripted round of joins,
multi-token feeds with per-row kept counts, leaves (the last row, a middle row, whole
groups), a failed batched forward retried group by group, and capacity growth; each row's
slot length stays its position."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DynamicCache

from seedq.decoding.config import EngineConfig
from seedq.decoding.engines import round_budget
from seedq.decoding.engines.round_batch import RoundBatch, Row, new_round_batch
from seedq.decoding.engines.round_slots import SlotRoundBatch, _capacity
from seedq.decoding.loading import LoadedModel
from seedq.decoding.models import LanguageModel
from seedq.decoding.options import DecodingOptions
from seedq.decoding.sequence import ModelCache, SequenceState
from seedq.decoding.slot_cache import SlotCache
from seedq.decoding.types import SamplingParams
from tests.decoding.conftest import make

ATOL = 1e-5


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(8, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def prefilled(model: LanguageModel, sequence: list[int]) -> DynamicCache:
    cache = DynamicCache()
    model.forward_chain(sequence, cache)
    return cache


def plain(model: LanguageModel, sequence: list[int], last: int) -> torch.Tensor:
    return model.forward_chain(sequence, DynamicCache())[-last:]


def state(rid: int, max_new: int) -> SequenceState:
    return SequenceState(rid, [], SamplingParams(max_new_tokens=max_new), None,
                         ModelCache(DynamicCache()))


class Round:
    """The same script on a RoundBatch and a SlotRoundBatch, rows matched by their id
    (``state.index``): the two keep their rows in different orders."""

    def __init__(self, model: LanguageModel, block: int = 8) -> None:
        self.model = model
        self.dynamic = RoundBatch()
        self.slots = SlotRoundBatch(block=block)
        self.histories: dict[int, list[int]] = {}  # per row: the tokens in its cache
        self.steps = 0

    @property
    def batches(self) -> tuple[Any, ...]:
        return self.dynamic, self.slots

    def join(self, specs: list[tuple[int, int, int, Any]]) -> None:
        """Rows (id, prompt length, max_new_tokens, group)."""
        for batch in self.batches:
            rows, caches = [], []
            for rid, length, max_new, group in specs:
                prompt = tokens(length, 100 + rid)
                self.histories[rid] = list(prompt)
                rows.append(Row(state(rid, max_new), group, tokens(1, 200 + rid)[0], length))
                caches.append(prefilled(self.model, prompt))
            batch.join(rows, caches)
        self.check()

    def step(self, drafts: dict[int, int], kept: dict[int, int],
             failing: object | None = None) -> None:
        """Row ``rid`` feeds its token and ``drafts[rid]`` draft tokens and keeps
        ``kept[rid]`` of them (default 1). ``failing``: the batched forward fails, each
        group is forwarded alone and this group's forward fails too (its rows leave)."""
        out: list[dict[int, torch.Tensor]] = []
        feeds_by_id: dict[int, list[int]] = {}
        for batch in self.batches:
            ids = [row.state.index for row in batch.rows]
            draft = [tokens(drafts.get(rid, 0), 1000 * self.steps + rid) for rid in ids]
            feeds = batch.feeds(draft)
            q = max(len(feed) for feed in feeds)
            if failing is None:
                logits: list[torch.Tensor | None] = list(batch.forward(self.model, draft))
            else:
                logits = self.fail_then_alone(batch, feeds, failing)
            out.append({rid: row for rid, row in zip(ids, logits, strict=True)
                        if row is not None})
            feeds_by_id = dict(zip(ids, feeds, strict=True))
            counts = [kept.get(rid, 1) for rid in ids]
            batch.settle(counts, q)
            for row, n in zip(batch.rows, counts, strict=True):
                row.position += n
                row.state.output_ids.extend([0] * n)  # its remaining tokens go down
                row.token = tokens(1, 5000 + 1000 * self.steps + row.state.index)[0]
        self.dynamic.compact(slack=0.0)  # squeeze its holes out as often as it can
        assert out[0].keys() == out[1].keys()
        for rid, expected in out[0].items():
            feed = feeds_by_id[rid]
            torch.testing.assert_close(out[1][rid], expected, atol=ATOL, rtol=0)
            torch.testing.assert_close(
                out[1][rid], plain(self.model, self.histories[rid] + feed, len(feed)).cpu(),
                atol=ATOL, rtol=0)
            self.histories[rid] += feed[: kept.get(rid, 1)]
        if failing is not None:
            self.leave({row.state.index for row in self.slots.rows if row.group is failing})
        self.steps += 1
        self.check()

    def fail_then_alone(self, batch: Any, feeds: list[list[int]], failing: object
                        ) -> list[torch.Tensor | None]:
        """rounds.RoundBatcher._forward's failure path, with a real failed forward (the
        second decoder layer raises on the whole batch: the first wrote its entries)."""
        layer = self.model.model.model.layers[1]
        real = layer.forward
        rows = len(batch.rows)

        def flaky(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if hidden.shape[0] == rows:
                raise RuntimeError("planted")
            return real(hidden, *args, **kwargs)

        layer.forward = flaky
        try:
            with pytest.raises(RuntimeError, match="planted"):
                batch.forward(self.model, [feed[1:] for feed in feeds])
        finally:
            del layer.forward
        out: list[torch.Tensor | None] = [None] * rows
        pieces = []
        for group in batch.groups():
            if group is failing:
                continue
            indices = [i for i, row in enumerate(batch.rows) if row.group is group]
            logits, cache = batch.forward_subset(self.model, indices, feeds)
            pieces.append((indices, cache))
            for i, row_logits in zip(indices, logits, strict=True):
                out[i] = row_logits
        batch.extend(pieces, max(len(feed) for feed in feeds))
        return out

    def leave(self, gone: set[int]) -> None:
        for batch in self.batches:
            batch.keep([i for i, row in enumerate(batch.rows) if row.state.index not in gone])
        for rid in gone:
            self.histories.pop(rid, None)
        self.check()

    def check(self) -> None:
        """Row i is slot i, its length its position (the length of its history)."""
        slots = self.slots
        ids = sorted(row.state.index for row in slots.rows)
        assert ids == sorted(row.state.index for row in self.dynamic.rows)
        assert ids == sorted(self.histories)
        if slots.cache is None:
            assert not slots.rows
            return
        assert slots.cache.active == len(slots.rows)
        assert slots.cache.lengths[: slots.cache.active] == [row.position for row in slots.rows]
        assert [row.position for row in slots.rows] == [
            len(self.histories[row.state.index]) for row in slots.rows]
        assert slots.width == max(row.position for row in slots.rows)

    def slot_order(self) -> list[int]:
        return [row.state.index for row in self.slots.rows]


@pytest.fixture
def model(target: LoadedModel) -> LanguageModel:
    return target.model


def test_slot_round_matches_the_padded_round(model: LanguageModel) -> None:
    g1, g2, g3 = object(), object(), object()
    run = Round(model)
    run.join([(0, 5, 40, g1), (1, 17, 40, g1), (2, 9, 40, g1)])
    run.step({}, {})
    run.step({0: 2, 2: 3}, {0: 3, 2: 1})  # row 0 keeps both drafts, row 2 none
    run.join([(3, 30, 40, g2), (4, 3, 40, g2)])
    run.step({1: 4, 3: 1, 4: 2}, {1: 2, 3: 2, 4: 3})
    assert run.slot_order() == [0, 1, 2, 3, 4]
    run.leave({4})  # the last row
    run.step({0: 1}, {0: 2})
    run.leave({1})  # a middle row: the last one moves into its slot
    assert run.slot_order() == [0, 3, 2]
    run.step({3: 3, 2: 1}, {3: 4, 2: 2})
    run.join([(5, 12, 40, g3), (6, 20, 40, g3)])
    run.step({5: 2, 6: 2, 0: 1}, {5: 1, 6: 3, 0: 1})
    run.step({2: 2}, {2: 1}, failing=g3)  # g3 fails alone and leaves; the others go on
    assert sorted(run.slot_order()) == [0, 2, 3]
    run.step({0: 2, 3: 2}, {0: 3, 3: 1})
    run.join([(7, 8, 40, g3)])
    run.step({7: 3}, {7: 4}, failing=object())  # all groups succeed alone
    run.step({}, {})
    run.leave({0, 2, 3, 7})
    assert run.slots.cache is None  # freed with the last row
    run.join([(8, 6, 40, g1)])
    run.step({8: 2}, {8: 3})


def test_capacity_grows_on_demand_up_to_the_rows_bound(model: LanguageModel) -> None:
    run = Round(model, block=8)
    g = object()
    run.join([(0, 10, 30, g), (1, 4, 30, g)])
    cache = run.slots.cache
    assert cache is not None and cache.slots == 2
    assert cache.capacity == 24  # 11 x 1.5 -> 17, rounded up to 8
    seen = {cache.capacity}
    for _ in range(12):
        run.step({0: 1, 1: 1}, {0: 2, 1: 2})
        assert run.slots.cache is cache
        seen.add(cache.capacity)
    assert len(seen) >= 2  # it grew
    assert cache.capacity <= 10 + 30  # never past the rows' bound: position + remaining
    assert round_budget.cache_bytes(run.slots) == cache.bytes > 0


def test_capacity_policy() -> None:
    g: Any = object()
    bounded = [Row(state(0, 10), g, 1, 50), Row(state(1, 100), g, 1, 20)]
    assert _capacity(60, bounded, 64) == 120  # 90 -> 128, but no row gets past 20 + 100
    assert _capacity(130, bounded, 64) == 130  # draft padding past the bound: just enough
    assert _capacity(60, [Row(None, g, 1, 50)], 64) == 128  # type: ignore[arg-type]
    assert _capacity(60, [], 64) == 128


def test_join_failure_changes_nothing_and_a_join_reallocates_only_as_needed(
        model: LanguageModel) -> None:
    batch = SlotRoundBatch(block=8)
    g: Any = object()
    batch.join([Row(state(0, 20), g, 1, 6)], [prefilled(model, tokens(6, 1))])
    cache = batch.cache
    assert cache is not None and (cache.slots, cache.active) == (1, 1)
    with pytest.raises(ValueError, match="load"):  # its cache holds fewer positions
        batch.join([Row(state(1, 20), g, 1, 6), Row(state(2, 20), g, 1, 9)],
                   [prefilled(model, tokens(6, 2)), prefilled(model, tokens(4, 3))])
    assert len(batch.rows) == 1 and cache.active == 1 and cache.lengths[0] == 6
    batch.keep([])
    assert batch.cache is None and batch.width == 0


def test_the_factory_follows_the_round_kv_option(target: LoadedModel) -> None:
    assert isinstance(new_round_batch(), SlotRoundBatch)
    assert isinstance(new_round_batch("dynamic"), RoundBatch)
    assert isinstance(new_round_batch("slots"), SlotRoundBatch)
    with pytest.raises(ValueError, match="paged"):
        new_round_batch("paged")
    for kind, storage in (("dynamic", RoundBatch), ("slots", SlotRoundBatch)):
        generator = make(EngineConfig(engine="batch", target="tiny"), target, None,
                         DecodingOptions(round_kv=kind))
        try:
            assert generator.rounds is not None
            assert type(generator.rounds._batch) is storage
        finally:
            generator.close()


def test_cache_bytes_of_an_empty_slot_round() -> None:
    assert round_budget.cache_bytes(SlotRoundBatch()) == 0
    assert isinstance(SlotCache.shaped(2, 2, 4, 1, 8), SlotCache)


def test_forward_last_gives_each_rows_last_fed_logits(target: LoadedModel) -> None:
    """The draft side's forward: rows feeding 5, 2, 0 (padding) and 5 tokens get the logits
    after their last fed token (the LM head runs on the 2 distinct last columns only)."""
    from seedq.decoding.engines.round_slots import forward_feeds, forward_last

    model = target.model
    histories = [tokens(20, 31), tokens(12, 32), tokens(9, 33), tokens(15, 34)]
    feeds = [tokens(5, 35), tokens(2, 36), [], tokens(5, 37)]
    cache = SlotCache(model.model.config, 4, 64, torch.float32, model.device, 16)
    for history in histories:
        cache.load(cache.allocate(), prefilled(model, history))
    last = forward_last(model, cache, feeds)
    full = forward_feeds(model, cache, feeds)
    assert last.shape == (4, model.vocab_size)
    for row, (history, feed) in enumerate(zip(histories, feeds, strict=True)):
        if not feed:
            continue
        torch.testing.assert_close(last[row], full[row, len(feed) - 1], atol=ATOL, rtol=0)
        torch.testing.assert_close(last[row], plain(model, history + feed, 1)[0], atol=ATOL,
                                   rtol=0)


@pytest.mark.parametrize("limited", [False, True])
def test_a_join_short_of_slots_reallocates_with_room_for_the_next(
        model: LanguageModel, limited: bool) -> None:
    """Every reallocation copies the live rows' KV: a join that finds too few slots makes
    1.5 x the rows it needs, so the next join lands in a free slot without a copy; with a
    KV limit, no free slot past it."""
    g: Any = object()

    def row(i: int) -> tuple[Row, DynamicCache]:
        return Row(state(i, 20), g, 1, 6), prefilled(model, tokens(6, i))

    first = SlotRoundBatch(block=8)
    first.join(*map(list, zip(row(0), strict=True)))
    cache = first.cache
    assert cache is not None and cache.slots == 1
    one_slot = cache.bytes  # 1 slot x its capacity
    batch = SlotRoundBatch(block=8, kv_limit=2 * one_slot if limited else 0)
    batch.join(*map(list, zip(row(0), strict=True)))
    batch.join(*map(list, zip(row(1), strict=True)))  # short: reallocated
    cache = batch.cache
    assert cache is not None and cache.slots == (2 if limited else 3)
    assert cache.bytes <= (2 * one_slot if limited else 3 * one_slot)
    keys = cache.slot_layers[0].keys
    batch.join(*map(list, zip(row(2), strict=True)))
    if not limited:  # into the free slot: the same tensors, nothing copied
        assert cache.slot_layers[0].keys is keys and cache.slots == 3
    else:  # no room within the limit was kept: this join reallocates (to 3, over it: the
        # KV budget's admission, not the storage, decides whether rows may join)
        assert cache.slots == 3
    logits = batch.forward(model)
    for i, r in enumerate(batch.rows):
        expected = plain(model, [*tokens(6, r.state.index), r.token], 1)[0]  # its pending
        torch.testing.assert_close(logits[i][0], expected, rtol=1e-4, atol=1e-4)
