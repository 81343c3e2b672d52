"""The ``auto`` engine: speculation inside the round batcher, draft lengths chosen per step.

Greedy output must equal ``ar`` whatever lengths are chosen (the cost model's, fixed, or
random per row and step), with prompt lookup or a draft model, while groups of different
lengths join and leave mid-round next to ``batch`` groups, and with EOS or a stop string
inside an accepted draft. The planning rule, the cost fit, the acceptance estimates and the
O(1) n-gram index are checked on their own (pure functions, no model)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import torch

from seedq.decoding.config import EngineConfig
from seedq.decoding.drafters import DraftShape, NgramDrafter, NgramIndex
from seedq.decoding.engines import round_admission
from seedq.decoding.engines.round_batch import BATCH
from seedq.decoding.engines.round_plan import Acceptance, DraftCost, ForwardCost, plan_lengths
from seedq.decoding.factory import LocalGenerator, generator_from_models
from seedq.decoding.loading import LoadedModel, wrap
from seedq.decoding.models import Tokenizer
from seedq.decoding.options import DecodingOptions
from seedq.decoding.tiny import perturbed_copy, tiny_model
from seedq.decoding.types import GroupRequest, GroupResult, SamplingParams
from tests.decoding.conftest import PROMPTS, make
from tests.decoding.hooks import WAIT, Hold, tokens
from tests.decoding.test_rounds import ar_tokens, requests

Policy = Callable[[list[float | None], list[int]], list[int]]


def random_policy(seed: int) -> Policy:
    rng = random.Random(seed)
    return lambda alphas, caps: [rng.randint(0, cap) for cap in caps]


def full_policy(alphas: list[float | None], caps: list[int]) -> list[int]:
    return list(caps)


@pytest.fixture
def auto_pair(target: LoadedModel, close_draft: LoadedModel
              ) -> Iterator[tuple[LocalGenerator, LocalGenerator, LocalGenerator]]:
    """An auto generator drafting by lookup, one drafting with a model, and a batch one,
    all on ONE round batcher (small budget: groups wait for rows to leave)."""
    lookup = make(EngineConfig(engine="auto", target="tiny", gamma=4), target, close_draft,
                  DecodingOptions(round_token_budget=7))
    model = generator_from_models(EngineConfig(engine="auto", target="tiny", draft="tiny-draft",
                                               gamma=3), target, close_draft, hub=lookup.hub)
    batch = generator_from_models(EngineConfig(engine="batch", target="tiny"), target, None,
                                  hub=lookup.hub)
    assert lookup.rounds is model.rounds is batch.rounds is not None
    yield lookup, model, batch
    lookup.close()


def submit_staggered(monkeypatch: pytest.MonkeyPatch,
                     jobs: list[tuple[LocalGenerator, GroupRequest]]
                     ) -> list[Future[GroupResult]]:
    """The first job is admitted alone; the rest queue meanwhile and join mid-round."""
    hold = Hold()
    real = round_admission.prepare_group

    def held(runtime: Any, request: GroupRequest, *chunks: Any, **draft: Any) -> Any:
        if request is jobs[0][1]:
            hold.stop_here()
        return real(runtime, request, *chunks, **draft)

    monkeypatch.setattr(round_admission, "prepare_group", held)
    futures = []
    for i, (generator, request) in enumerate(jobs):
        assert generator.rounds is not None
        futures.append(generator.rounds.submit(request, generator.runtime,
                                               generator.mode or BATCH))
        if i == 0:
            assert hold.reached.wait(WAIT)
    hold.release.set()
    return futures


def staggered_like_ar(target: LoadedModel, owners: list[LocalGenerator],
                      monkeypatch: pytest.MonkeyPatch) -> list[GroupResult]:
    """The five groups of ``requests`` (different lengths, a stop string), the i-th through
    ``owners[i]``, joining mid-round (:func:`submit_staggered`); asserts each gives ``ar``'s
    tokens and returns the results."""
    probe = ar_tokens(target, GroupRequest((PROMPTS[6],), SamplingParams(max_new_tokens=18)))
    stop = target.tokenizer.decode(probe[0][5:7])
    jobs = list(zip(owners, requests(target.tokenizer, stop), strict=True))
    expected = [ar_tokens(target, r) for _, r in jobs]
    results = [f.result(timeout=WAIT) for f in submit_staggered(monkeypatch, jobs)]
    assert [tokens(r) for r in results] == expected
    return results


@pytest.mark.parametrize("policy", ["cost-model", "full", "random"])
def test_greedy_identical_to_ar_while_groups_join_and_leave(
    policy: str, auto_pair: tuple[LocalGenerator, ...], target: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookup, model, batch = auto_pair
    assert lookup.rounds is not None
    if policy != "cost-model":
        lookup.rounds.speculation.policy = full_policy if policy == "full" else random_policy(3)
    results = staggered_like_ar(target, [lookup, model, batch, model, lookup], monkeypatch)
    assert [r.engine for r in results] == ["auto", "auto", "batch", "auto", "auto"]
    stats = lookup.rounds.stats
    assert stats.mixed_forwards > 0 and stats.joined_mid_round > 0
    if policy != "cost-model":
        assert stats.drafted > 0 and 0 < stats.accepted <= stats.drafted
        drafted = sum(s.metrics.drafted_tokens for r in results for s in r.sequences)
        assert drafted == stats.drafted
    assert lookup.rounds.open_groups == 0


@pytest.mark.parametrize(("chunk", "mix"), [(0, False), (3, False), (0, True), (3, True)])
def test_live_rows_decode_between_or_with_the_chunks_of_a_long_prefill(
    chunk: int, mix: bool, target: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group with a long prompt joins while others decode: with chunks its prefill is
    split; the live rows take a decode step between two chunks, or (``prefill_mix``) every
    chunk rides in the rows' own forward; the output is ``ar``'s either way."""
    # no prefix cache: every prefill encoded in full
    auto = make(EngineConfig(engine="auto", target="tiny"), target, None,
                DecodingOptions(prefill_chunk=chunk, prefix_cache_mb=0, prefill_mix=mix))
    batch = generator_from_models(EngineConfig(engine="batch", target="tiny"), target, None,
                                  hub=auto.hub)
    long_prompt = " ".join(PROMPTS)
    jobs = [(batch, GroupRequest(PROMPTS[:2], SamplingParams(max_new_tokens=30))),
            (auto, GroupRequest((long_prompt,) * 2, SamplingParams(max_new_tokens=12))),
            (batch, GroupRequest((PROMPTS[6] + " " + PROMPTS[3],),
                                 SamplingParams(max_new_tokens=8)))]
    try:
        expected = [ar_tokens(target, r) for _, r in jobs]
        results = [f.result(timeout=WAIT) for f in submit_staggered(monkeypatch, jobs)]
        assert [tokens(r) for r in results] == expected
        stats = auto.rounds.stats  # type: ignore[union-attr]
        pieces = len(target.tokenizer.encode(long_prompt)) // max(chunk, 1)
        if mix:  # each chunk, and each sequence's last prompt token, in the rows' forward
            assert stats.mixed_prefills >= (pieces - 2 if chunk else 1)
            assert stats.mixed_prefill_tokens >= len(target.tokenizer.encode(long_prompt)) - 8
            assert stats.failed_mixes == 0
        elif chunk:
            assert stats.prefill_chunks >= pieces - 2
            assert stats.steps_between_chunks > 0
        else:
            assert stats.prefill_chunks == stats.steps_between_chunks == 0
        if not mix:
            assert stats.mixed_prefills == stats.mixed_prefill_tokens == 0
        assert stats.longest_stall > 0
    finally:
        auto.close()


@pytest.mark.parametrize("draft", ["ngram", "tiny-draft"])
def test_eos_and_stop_inside_an_accepted_draft(draft: str, target: LoadedModel,
                                               close_draft: LoadedModel) -> None:
    """The identical draft (the target itself) is always accepted in full, so EOS and the
    stop string land inside drafts; the output is cut exactly as ``ar`` cuts it."""
    request = GroupRequest((PROMPTS[1], PROMPTS[3]), SamplingParams(max_new_tokens=24))
    plain = ar_tokens(target, request)
    eos = plain[0][9]
    eos_model = LoadedModel(target.model, Tokenizer(target.tokenizer.tokenizer, [eos]))
    stop = target.tokenizer.decode(plain[1][6:8])
    stopped = GroupRequest(request.prompts, SamplingParams(max_new_tokens=24, stop=(stop,)))
    for model, req in ((eos_model, request), (target, stopped)):
        generator = make(EngineConfig(engine="auto", target="tiny", draft=draft, gamma=5),
                         model, model)
        assert generator.rounds is not None
        generator.rounds.speculation.policy = full_policy
        try:
            result = generator.run(req)
        finally:
            generator.close()
        assert tokens(result) == ar_tokens(model, req)
        assert {s.finish_reason for s in result.sequences} & {"eos", "stop"}
        if draft != "ngram":
            assert generator.rounds.stats.accepted == generator.rounds.stats.drafted > 0


def test_round_batcher_off_runs_auto_as_batch(target: LoadedModel) -> None:
    request = GroupRequest(PROMPTS[:3], SamplingParams(max_new_tokens=12))
    generator = make(EngineConfig(engine="auto", target="tiny"), target, None,
                     DecodingOptions(round_batcher=False))
    try:
        assert generator.rounds is None
        assert tokens(generator.run(request)) == ar_tokens(target, request)
    finally:
        generator.close()


@pytest.mark.parametrize("pays", [False, True])
def test_an_auto_group_prefills_its_draft_model_only_where_drafting_pays(
    pays: bool, target: LoadedModel, close_draft: LoadedModel
) -> None:
    """Decided as the group joins, from the cost model: where every extra token costs its
    share of the forward and the draft forward costs more than a target forward (a CPU), the
    plan would never draft, so its rows get no draft KV (no draft prefill, no draft forward)
    and decode plainly; where extra tokens are nearly free (a GPU), they draft. ``ar``'s
    tokens either way."""
    generator = make(EngineConfig(engine="auto", target="tiny", draft="tiny-draft", gamma=3),
                     target, close_draft)
    rounds = generator.rounds
    assert rounds is not None and generator.runtime.draft_model is not None
    speculation = rounds.speculation  # known curves instead of a calibration
    speculation.cost = ForwardCost(a=0.01, b=0.0 if pays else 0.01)
    speculation.draft_fits = {id(generator.runtime.draft_model): ForwardCost(
        a=0.0001 if pays else 0.02, b=0.0)}
    calls = [0]  # every forward of the draft model: prefill, catch-up, drafts
    hook = generator.runtime.draft_model.model.register_forward_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1))
    request = GroupRequest(PROMPTS[:3], SamplingParams(max_new_tokens=16))
    try:
        result = generator.run(request)
    finally:
        hook.remove()
        generator.close()
    assert tokens(result) == ar_tokens(target, request)
    assert rounds.stats.draftless_groups == (0 if pays else 1)
    if pays:
        assert calls[0] > 0 and rounds.stats.drafted > 0
    else:
        assert calls[0] == rounds.stats.drafted == 0


# -- the planning rule, the cost fit, acceptance, lookup: no model ------------------------
def test_plan_drafts_where_extra_tokens_are_nearly_free() -> None:
    gpu_like = ForwardCost.fit([(1, 0.010), (8, 0.0101), (64, 0.0105)])
    assert plan_lengths([0.6, 0.3, None], [4, 4, 4], gpu_like) == [4, 4, 0]


def test_plan_keeps_the_forward_within_the_token_budget() -> None:
    gpu_like = ForwardCost(a=0.01, b=0.0)
    # the forward is rows x (1 + depth): 12 rows in 40 tokens reach depth 2, not 3
    lengths = plan_lengths([0.9] * 6 + [0.5] * 6, [4] * 12, gpu_like, max_tokens=40)
    assert lengths == [2] * 12
    assert plan_lengths([0.9] * 4, [4] * 4, gpu_like, max_tokens=7) == [0] * 4
    assert plan_lengths([0.9] * 4, [4] * 4, gpu_like, max_tokens=8) == [1] * 4


def test_plan_charges_one_rows_draft_to_every_rows_padding() -> None:
    cpu_like = ForwardCost.fit([(1, 0.050), (8, 0.090), (64, 0.400)])
    # one good row among 15 that cannot draft: its draft would widen all 16 rows
    assert plan_lengths([0.9] + [None] * 15, [4] + [0] * 15, cpu_like) == [0] * 16
    # alone, the same row drafts
    assert plan_lengths([0.9], [4], cpu_like)[0] > 0
    # with a draft token costing something, weak rows stay short inside the chosen depth
    lengths = plan_lengths([0.9, 0.05], [4, 4], ForwardCost(a=0.05, b=0.0),
                           DraftCost(per_token=0.01))
    assert lengths[0] > 0 and lengths[1] == 0


def test_plan_decodes_plainly_where_extra_tokens_cost_their_share() -> None:
    cpu_like = ForwardCost.fit([(1, 0.050), (8, 0.090), (64, 0.400)])  # b/a ~ 0.12
    assert plan_lengths([0.3] * 16, [4] * 16, cpu_like) == [0] * 16
    one = plan_lengths([0.8], [6], cpu_like)  # one row, good acceptance: it pays
    assert one[0] >= 3


def test_plan_prefers_the_rows_that_accept_more() -> None:
    cost = ForwardCost(a=0.05, b=0.006)
    lengths = plan_lengths([0.9, 0.2, 0.6, 0.0], [4] * 4, cost)
    assert lengths[0] >= lengths[2] >= lengths[1] >= lengths[3] == 0
    assert lengths[0] > 0
    assert plan_lengths([0.9, 0.9], [0, 2], cost) == [0, plan_lengths([0.9], [2], cost)[0]]


def test_plan_weighs_the_draft_forwards() -> None:
    cost = ForwardCost(a=0.05, b=0.0)
    assert plan_lengths([0.5] * 4, [4] * 4, cost) == [4] * 4
    expensive = DraftCost(per_depth=0.04, per_token=0.0)
    assert plan_lengths([0.5] * 4, [4] * 4, cost, expensive) == [0] * 4
    cheap = DraftCost(per_depth=0.002, per_token=0.0)
    assert plan_lengths([0.7] * 4, [4] * 4, cost, cheap)[0] > 0


def test_forward_cost_fits_and_follows_observations() -> None:
    cost = ForwardCost.fit([(1, 0.011), (4, 0.014), (8, 0.018), (32, 0.042)])
    assert cost.a == pytest.approx(0.010, rel=0.05)
    assert cost.b == pytest.approx(0.001, rel=0.05)
    for _ in range(300):  # the machine got twice as slow
        for tokens_fed in (2, 10, 30):
            cost.observe(tokens_fed, 2 * (0.010 + 0.001 * tokens_fed))
    assert cost.seconds(10) == pytest.approx(0.040, rel=0.1)


def test_forward_cost_tells_a_row_from_a_token() -> None:
    def truth(rows: int, tokens: int) -> float:  # a row reads its KV: dearer than a token
        return 0.02 + 0.003 * tokens + 0.010 * rows

    grid = [(rows, rows * t, truth(rows, rows * t)) for rows in (1, 8) for t in (1, 5)]
    cost = ForwardCost.fit(grid)
    assert (cost.a, cost.b, cost.c) == pytest.approx((0.02, 0.003, 0.010), rel=1e-6)
    # drafting pays here (12 rows at alpha 0.3: 15.6 tokens in 0.212 s against 12 in
    # 0.176 s); one slope fitted over the same grid charges a draft token a row's cost
    one_slope = ForwardCost.fit([(fed, seconds) for _, fed, seconds in grid])
    assert plan_lengths([0.3] * 12, [4] * 12, cost) == [1] * 12
    assert plan_lengths([0.3] * 12, [4] * 12, one_slope) == [0] * 12
    # observed forwards (rows given) follow a machine twice as slow
    for _ in range(300):
        for rows, fed in ((4, 8), (12, 12), (12, 60), (2, 10)):
            cost.observe(fed, 2 * truth(rows, fed), rows)
    assert cost.seconds(20, 10) == pytest.approx(2 * truth(10, 20), rel=0.1)
    # rows that move with tokens (a draft model's grid) cannot be told apart: one slope
    for per_row in (True, False):
        draft = ForwardCost.fit([(r, r, truth(r, r)) for r in (1, 8)], per_row=per_row)
        assert draft.c == 0.0 and draft.b == pytest.approx(0.013)


def test_acceptance_is_per_label_and_blends_into_rows() -> None:
    acceptance = Acceptance(prior=0.5, strength=8.0)
    for _ in range(200):
        acceptance.record("math/thought", 3, 4)  # 3 accepted, 4 trials: alpha 0.75
        acceptance.record("math/value", 0, 4)  # 0 of 1 trial
    assert acceptance.of_label("math/thought") == pytest.approx(0.75, abs=0.02)
    assert acceptance.of_label("math/value") < 0.05
    assert acceptance.of_label("unseen") == 0.5
    assert acceptance.record("x", 2, 2) == (2, 2)
    assert acceptance.of_row("math/thought", 0, 0) == pytest.approx(0.75, abs=0.02)
    assert acceptance.of_row("math/thought", 0, 100) < 0.1


def test_ngram_index_matches_the_lookup_scan() -> None:
    rng = random.Random(1)
    drafter = NgramDrafter(DraftShape.chain(4), vocab_size=7)
    for _ in range(200):
        prompt = [rng.randrange(7) for _ in range(rng.randint(1, 30))]
        output = [rng.randrange(7) for _ in range(rng.randint(0, 20))]
        index = NgramIndex()
        cut = rng.randint(0, len(output))  # synced in two steps, as rows are
        index.sync(prompt, output[:cut])
        index.sync(prompt, output)
        for length in (1, 4):
            assert index.lookup(length) == drafter.lookup(prompt + output, length)


def test_peaks_are_kept_per_round_from_idle_to_idle(target: LoadedModel) -> None:
    generator = make(EngineConfig(engine="batch", target="tiny"), target, None)
    assert generator.rounds is not None
    try:
        generator.run(GroupRequest(PROMPTS[:3], SamplingParams(max_new_tokens=6)))
        generator.run(GroupRequest(PROMPTS[:5], SamplingParams(max_new_tokens=9)))
        deadline = time.monotonic() + WAIT
        while len(generator.rounds.records.closed) < 2:  # closed by the loop after the last
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        generator.close()
    first, second = generator.rounds.records.closed
    assert (first.groups, first.peak_rows) == (1, 3)
    assert (second.groups, second.peak_rows) == (1, 5)
    assert second.peak_kv_bytes > first.peak_kv_bytes > 0
    assert first.forwards >= 6 and second.forwards >= 9
    assert second.peak_memory_bytes > 0 and second.seconds > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("draft", ["ngram", "tiny-draft"])
def test_auto_on_cuda_gives_what_ar_gives(draft: str, tokenizer: Any) -> None:
    """The round's storage, drafts and verification on a GPU (run by bench/gpu.sh)."""
    target = wrap(tiny_model(0).to("cuda"), tokenizer, "tiny")
    close = wrap(perturbed_copy(tiny_model(0), 0.05).to("cuda"), tokenizer, "tiny-close")
    request = GroupRequest(PROMPTS, SamplingParams(max_new_tokens=24))
    generator = make(EngineConfig(engine="auto", target="tiny", draft=draft, gamma=3,
                                  device="cuda"), target, close)
    assert generator.rounds is not None
    generator.rounds.speculation.policy = random_policy(5)
    try:
        result = generator.run(request)
    finally:
        generator.close()
    assert tokens(result) == ar_tokens(target, request)
    assert generator.rounds.stats.drafted > 0


def test_a_failed_mixed_forward_runs_the_rows_and_the_prefill_apart(
    target: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every forward that carries a joining group's prefill fails in its second layer (after
    the chains' first keys were appended): the rows and the prefill then run apart, once
    each, and every output is still ``ar``'s."""
    from seedq.decoding import attention, packed

    real = packed.packed_attention
    failures = [0]

    def failing(plan: packed.PackedPlan, layer_idx: int, *args: object) -> torch.Tensor:
        if plan.chains and layer_idx == 1:
            failures[0] += 1
            raise RuntimeError("planted failure")
        return real(plan, layer_idx, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(attention, "packed_attention", failing)
    auto = make(EngineConfig(engine="auto", target="tiny"), target, None,
                DecodingOptions(prefill_chunk=4, prefix_cache_mb=0))
    batch = generator_from_models(EngineConfig(engine="batch", target="tiny"), target, None,
                                  hub=auto.hub)
    jobs = [(batch, GroupRequest(PROMPTS[:2], SamplingParams(max_new_tokens=30))),
            (auto, GroupRequest((" ".join(PROMPTS[2:5]),) * 2,
                                SamplingParams(max_new_tokens=10))),
            (batch, GroupRequest((PROMPTS[6],), SamplingParams(max_new_tokens=8)))]
    try:
        expected = [ar_tokens(target, r) for _, r in jobs]
        results = [f.result(timeout=WAIT) for f in submit_staggered(monkeypatch, jobs)]
        assert [tokens(r) for r in results] == expected
        stats = auto.rounds.stats  # type: ignore[union-attr]
        assert stats.failed_mixes == failures[0] > 0
        assert stats.mixed_prefills == 0  # none of them succeeded
        assert stats.steps_between_chunks > 0  # the plain way: a step between two chunks
    finally:
        auto.close()
