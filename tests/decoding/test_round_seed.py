"""``seed`` inside the round batcher: every row of a seed group drafts its full chain at
every step (all of the round's drafting rows in one batched draft forward per depth) and the
round's shared forward verifies them, next to ``batch`` and ``auto`` rows.

Greedy output must equal ``ar`` with seed groups joining and leaving mid-round beside other
engines' groups; the draft depth stays within the round's token budget; configs that the
round cannot run (a draft tree, the threaded scheduler's own options, the round batcher
off) go to the SeeD scheduler."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from seedq.decoding.config import EngineConfig
from seedq.decoding.engines.round_batch import AUTO, BATCH, SEED
from seedq.decoding.engines.seed import SeedScheduler
from seedq.decoding.factory import LocalGenerator, generator_from_models, round_mode
from seedq.decoding.loading import LoadedModel, wrap
from seedq.decoding.options import DecodingOptions
from seedq.decoding.tiny import tiny_model
from seedq.decoding.types import GroupRequest, SamplingParams
from tests.decoding.conftest import PROMPTS, make
from tests.decoding.hooks import WAIT, tokens
from tests.decoding.test_auto import staggered_like_ar, submit_staggered
from tests.decoding.test_rounds import ar_tokens


@pytest.fixture
def trio(target: LoadedModel, close_draft: LoadedModel
         ) -> Iterator[tuple[LocalGenerator, LocalGenerator, LocalGenerator]]:
    """seed (draft model), seed (prompt lookup) and batch on ONE round batcher."""
    seed = make(EngineConfig(engine="seed", target="tiny", draft="tiny-draft", gamma=3),
                target, close_draft)
    lookup = generator_from_models(EngineConfig(engine="seed", target="tiny", draft="ngram",
                                                gamma=5), target, close_draft, hub=seed.hub)
    batch = generator_from_models(EngineConfig(engine="batch", target="tiny"), target, None,
                                  hub=seed.hub)
    assert seed.rounds is lookup.rounds is batch.rounds is not None
    yield seed, lookup, batch
    seed.close()


def test_seed_groups_join_and_leave_mid_round_and_give_what_ar_gives(
    trio: tuple[LocalGenerator, ...], target: LoadedModel, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed, lookup, batch = trio
    results = staggered_like_ar(target, [seed, batch, lookup, seed, batch], monkeypatch)
    assert [r.engine for r in results] == ["seed", "batch", "seed", "seed", "batch"]
    stats = seed.rounds.stats  # type: ignore[union-attr]
    assert stats.mixed_forwards > 0 and stats.joined_mid_round > 0 and stats.left_mid_round > 0
    assert 0 < stats.accepted <= stats.drafted
    drafted = sum(s.metrics.drafted_tokens for r in results for s in r.sequences)
    assert drafted == stats.drafted  # batch rows never drafted
    for result in results:
        if result.engine == "batch":
            assert all(s.metrics.drafted_tokens == 0 for s in result.sequences)
    assert seed.rounds.open_groups == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("fail", [False, True])
def test_a_joining_groups_draft_prefill_rides_in_the_draft_forward(
    fail: bool, target: LoadedModel, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seed group with a long prompt joins while seed rows draft: every chunk of its draft
    model's prefill rides in the rows' first draft forward (packed), as the target's chunks
    ride in the verify forward, and the output is ``ar``'s. ``fail``: every draft forward
    that carries a chunk fails in its second layer (after the chain's first keys were
    appended); the chunk is cropped back and fed alone, the output is still ``ar``'s."""
    from seedq.decoding import attention
    from seedq.decoding.engines import round_drafts

    in_draft, failures = [False], [0]
    real_attention, real_packed = attention.packed_attention, round_drafts.forward_packed

    def failing(plan: Any, layer_idx: int, *args: Any) -> Any:
        if fail and in_draft[0] and plan.chains and layer_idx == 1:
            failures[0] += 1
            raise RuntimeError("planted failure")
        return real_attention(plan, layer_idx, *args)

    def draft_packed(*args: Any, **kwargs: Any) -> Any:
        in_draft[0] = True
        try:
            return real_packed(*args, **kwargs)
        finally:
            in_draft[0] = False

    monkeypatch.setattr(attention, "packed_attention", failing)
    monkeypatch.setattr(round_drafts, "forward_packed", draft_packed)
    # a copy of the target as the draft: every draft token is accepted iff the draft's KV
    # (the chunks fed packed) and its logits (each row's last) are right
    copy = wrap(tiny_model(0), tokenizer, "tiny-copy")
    seed = make(EngineConfig(engine="seed", target="tiny", draft="tiny-draft", gamma=1),
                target, copy, DecodingOptions(prefill_chunk=3, prefix_cache_mb=0))
    long_prompt = " ".join(PROMPTS)
    jobs = [(seed, GroupRequest(PROMPTS[:2], SamplingParams(max_new_tokens=200))),
            (seed, GroupRequest((long_prompt,) * 2, SamplingParams(max_new_tokens=12)))]
    try:
        expected = [ar_tokens(target, r) for _, r in jobs]
        results = [f.result(timeout=WAIT) for f in submit_staggered(monkeypatch, jobs)]
        assert [tokens(r) for r in results] == expected
        stats = seed.rounds.stats  # type: ignore[union-attr]
        pieces = len(target.tokenizer.encode(long_prompt)) // 3
        if fail:
            assert stats.mixed_draft_prefills == 0 and stats.failed_mixes == failures[0] > 0
        else:
            assert stats.mixed_draft_prefills >= pieces - 2 and stats.failed_mixes == 0
        assert stats.mixed_prefills - stats.mixed_draft_prefills >= pieces - 2  # the target's
        assert stats.drafted > 0 and stats.accepted == stats.drafted
    finally:
        seed.close()


def test_seed_rows_draft_at_every_step(target: LoadedModel) -> None:
    """With the target as its own draft every chain is accepted: each verify forward after
    the prefill commits gamma + 1 tokens, whatever acceptance the cost model would expect."""
    gamma = 3
    generator = make(EngineConfig(engine="seed", target="tiny", draft="tiny-draft",
                                  gamma=gamma), target, target)
    request = GroupRequest(PROMPTS[:4], SamplingParams(max_new_tokens=1 + 4 * (gamma + 1)))
    try:
        result = generator.run(request)
    finally:
        generator.close()
    assert tokens(result) == ar_tokens(target, request)
    for seq in result.sequences:
        if seq.finish_reason == "length":
            assert seq.metrics.target_forwards == 1 + 4
            assert seq.metrics.accepted_tokens == seq.metrics.drafted_tokens == 4 * gamma


def test_seed_drafts_stay_within_the_token_budget(
    target: LoadedModel, close_draft: LoadedModel
) -> None:
    """6 rows in a budget of 18 tokens: each forward is at most 6 x (1 + 2), so gamma 5 is
    cut to 2 (the output is still ar's)."""
    generator = make(EngineConfig(engine="seed", target="tiny", draft="tiny-draft", gamma=5),
                     target, close_draft, DecodingOptions(round_token_budget=18))
    request = GroupRequest(PROMPTS[:6], SamplingParams(max_new_tokens=16))
    try:
        result = generator.run(request)
    finally:
        generator.close()
    assert tokens(result) == ar_tokens(target, request)
    stats = generator.rounds.stats  # type: ignore[union-attr]
    assert stats.drafted > 0
    assert stats.tokens <= 18 * stats.forwards


@pytest.mark.parametrize(("options", "where"), [
    (dict(engine="seed", draft="d", gamma=4), SEED),
    (dict(engine="seed", draft="ngram"), SEED),
    (dict(engine="auto"), AUTO),
    (dict(engine="batch"), BATCH),
    (dict(engine="ar"), None),
    (dict(engine="sd", draft="d"), None),
    (dict(engine="seed", draft="d", k_config=(2, 1)), None),
    (dict(engine="seed", draft="d", verify_batch=4), None),
    (dict(engine="seed", draft="d", draft_batch=2), None),
    (dict(engine="seed", draft="d", draft_threads=1), None),
])
def test_which_configs_run_in_the_round(options: dict[str, object], where: object) -> None:
    assert round_mode(EngineConfig(**options)) is where  # type: ignore[arg-type]


def test_seed_outside_the_round_runs_on_the_scheduler(
    target: LoadedModel, close_draft: LoadedModel
) -> None:
    request = GroupRequest(PROMPTS[:3], SamplingParams(max_new_tokens=12))
    generator = make(EngineConfig(engine="seed", target="tiny", draft="tiny-draft"), target,
                     close_draft, DecodingOptions(round_batcher=False))
    try:
        assert generator.rounds is None and isinstance(generator.engine, SeedScheduler)
        assert tokens(generator.run(request)) == ar_tokens(target, request)
    finally:
        generator.close()


def test_a_cancelled_seed_group_leaves_and_the_next_is_served(
    target: LoadedModel, close_draft: LoadedModel
) -> None:
    """Cancelled mid-way (after its rows drafted), the group's rows leave the round and the
    draft slots; the next seed group gives ar's tokens."""
    generator = make(EngineConfig(engine="seed", target="tiny", draft="tiny-draft", gamma=3),
                     target, close_draft)
    rounds = generator.rounds
    assert rounds is not None
    after = GroupRequest(PROMPTS[2:4], SamplingParams(max_new_tokens=12))
    try:
        victim = rounds.submit(GroupRequest(PROMPTS[:3], SamplingParams(max_new_tokens=400)),
                               generator.runtime, SEED)
        deadline = time.monotonic() + WAIT
        while rounds.stats.drafted == 0:  # its rows are drafting in the round
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert victim.cancel()
        result = rounds.submit(after, generator.runtime, SEED).result(timeout=WAIT)
        assert tokens(result) == ar_tokens(target, after)
        assert rounds.open_groups == 0
        held = [len(slots.rows) for slots in rounds.speculation.draft_slots.values()]
        assert sum(held) == 0  # the round ended: no draft KV kept
    finally:
        generator.close()
