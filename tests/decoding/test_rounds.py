"""The round batcher (``batch`` groups of every caller decoded in shared target forwards):
greedy output identical to ``ar`` while groups join and leave mid-round, sampled output
identical to the per-group ``batch`` engine (each sequence samples with its own generator),
cancellation and failures confined to their group.

Groups are submitted while the loop is held admitting the first one (``Hold``), so the
first group decodes alone for one forward and the others join it mid-round: the batch
compositions, and so the tests, are deterministic."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import pytest
import torch

from seedq.decoding.config import EngineConfig
from seedq.decoding.engines import round_admission, round_budget, rounds
from seedq.decoding.engines.batch import BatchEngine
from seedq.decoding.engines.round_slots import SlotRoundBatch
from seedq.decoding.engines.rounds import RoundBatcher
from seedq.decoding.factory import LocalGenerator, generator_from_models
from seedq.decoding.loading import LoadedModel
from seedq.decoding.models import Tokenizer
from seedq.decoding.options import DecodingOptions
from seedq.decoding.types import DecodingError, GroupRequest, GroupResult, SamplingParams
from tests.decoding.conftest import PROMPTS, make
from tests.decoding.hooks import WAIT, Hold, tokens
from tests.decoding.test_shared_target import in_new_thread

BATCH = EngineConfig(engine="batch", target="tiny")


def requests(tokenizer: Any, stop: str) -> list[GroupRequest]:
    """Groups of 1-3 sequences, different prompts, lengths, per-sequence params, a stop
    string: they finish at different steps."""
    return [
        GroupRequest((PROMPTS[0],) * 3, SamplingParams(max_new_tokens=9)),
        GroupRequest((PROMPTS[1], PROMPTS[2]), SamplingParams(max_new_tokens=26)),
        GroupRequest((PROMPTS[5],), SamplingParams(max_new_tokens=4)),
        GroupRequest((PROMPTS[6], PROMPTS[3], PROMPTS[7]), SamplingParams(max_new_tokens=18),
                     sequence_params=(SamplingParams(max_new_tokens=18, stop=(stop,)),
                                      SamplingParams(max_new_tokens=7),
                                      SamplingParams(max_new_tokens=30))),
        GroupRequest((PROMPTS[4], PROMPTS[4]), SamplingParams(max_new_tokens=14)),
    ]


def ar_tokens(model: LoadedModel, request: GroupRequest) -> list[list[int]]:
    generator = make(EngineConfig(engine="ar", target="tiny"), model, None)
    try:
        return tokens(generator.run(request))
    finally:
        generator.close()


@pytest.fixture
def batch(target: LoadedModel) -> Iterator[LocalGenerator]:
    # groups wait for rows to leave
    generator = make(BATCH, target, None, DecodingOptions(round_token_budget=6))
    assert generator.rounds is not None and generator.rounds.budget == 6
    yield generator
    generator.close()


def submit_staggered(monkeypatch: pytest.MonkeyPatch,
                     jobs: Sequence[tuple[LocalGenerator, GroupRequest]]
                     ) -> list[Future[GroupResult]]:
    """Submit the first job, hold the loop while it admits it, queue the rest, release."""
    hold = Hold()
    real = round_admission.prepare_group

    def held(runtime: Any, request: GroupRequest, *chunks: Any, **draft: Any) -> Any:
        if request is jobs[0][1]:
            hold.stop_here()
        return real(runtime, request, *chunks, **draft)

    monkeypatch.setattr(round_admission, "prepare_group", held)
    first = jobs[0][0]
    assert first.rounds is not None
    futures = [first.rounds.submit(jobs[0][1], first.runtime)]
    assert hold.reached.wait(WAIT)
    for generator, request in jobs[1:]:
        assert generator.rounds is not None
        futures.append(generator.rounds.submit(request, generator.runtime))
    hold.release.set()
    return futures


def eos_generator(target: LoadedModel, base: LocalGenerator, eos: int
                  ) -> tuple[LoadedModel, LocalGenerator]:
    """The same target, a tokenizer that calls ``eos`` an EOS, sharing base's round."""
    model = LoadedModel(target.model, Tokenizer(target.tokenizer.tokenizer, [eos]))
    return model, generator_from_models(BATCH, model, hub=base.hub)


def test_greedy_identical_to_ar_while_groups_join_and_leave(
    batch: LocalGenerator, target: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = ar_tokens(target, GroupRequest((PROMPTS[6],), SamplingParams(max_new_tokens=18)))
    stop = target.tokenizer.decode(probe[0][5:7])
    jobs: list[tuple[LocalGenerator, GroupRequest]] = [
        (batch, r) for r in requests(target.tokenizer, stop)
    ]
    eos_request = GroupRequest((PROMPTS[1], PROMPTS[3]), SamplingParams(max_new_tokens=20))
    eos = ar_tokens(target, eos_request)[0][4]  # a token the first sequence emits mid-way
    eos_model, eos_gen = eos_generator(target, batch, eos)
    jobs.insert(2, (eos_gen, eos_request))
    expected = [ar_tokens(eos_model if g is eos_gen else target, r) for g, r in jobs]
    results = [f.result(timeout=WAIT) for f in submit_staggered(monkeypatch, jobs)]
    assert [tokens(r) for r in results] == expected
    reasons = {s.finish_reason for r in results for s in r.sequences}
    assert reasons == {"length", "stop", "eos"}
    stats = batch.rounds.stats  # type: ignore[union-attr]
    assert stats.mixed_forwards > 0  # rows of two groups in one forward
    assert stats.joined_mid_round > 0 and stats.left_mid_round > 0
    assert stats.rows / stats.forwards > 1.5
    assert max(r.stats["round_mixed_forwards"] for r in results) > 0
    assert batch.rounds.open_groups == 0  # type: ignore[union-attr]


def test_sampled_output_does_not_depend_on_the_batch(
    batch: LocalGenerator, target: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each sequence samples with its own seeded generator: shared forwards, the per-group
    engine and a second run give the same tokens."""
    sampled = [
        replace(r, params=replace(r.params, temperature=1.0, top_k=40, seed=11 + i),
                sequence_params=tuple(replace(p, temperature=0.8, seed=5)
                                      for p in r.sequence_params))
        for i, r in enumerate(requests(target.tokenizer, "zzz"))
    ]
    alone = BatchEngine(batch.runtime)
    expected = [tokens(alone.run(r)) for r in sampled]
    for _ in range(2):
        futures = submit_staggered(monkeypatch, [(batch, r) for r in sampled])
        assert [tokens(f.result(timeout=WAIT)) for f in futures] == expected
    assert batch.rounds.stats.mixed_forwards > 0  # type: ignore[union-attr]


def test_a_cancelled_group_leaves_the_others_identical(
    batch: LocalGenerator, target: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = GroupRequest((PROMPTS[2], PROMPTS[0]), SamplingParams(max_new_tokens=20))
    victim = GroupRequest((PROMPTS[1],) * 3, SamplingParams(max_new_tokens=30))
    expected = ar_tokens(target, keep)
    rows: list[int] = []
    real = SlotRoundBatch.forward
    loop_and_task: list[Any] = []

    def watched(self: SlotRoundBatch, model: Any, drafts: Any = None) -> list[torch.Tensor]:
        rows.append(len(self.rows))
        if rows[-2:] == [5, 5]:  # both groups decoding: the caller of the victim gives up
            event_loop, task = loop_and_task
            event_loop.call_soon_threadsafe(task.cancel)
        return real(self, model, drafts)

    monkeypatch.setattr(SlotRoundBatch, "forward", watched)

    async def both() -> GroupResult:
        kept = asyncio.ensure_future(batch.generate(keep))
        await asyncio.sleep(0)
        task = asyncio.ensure_future(batch.generate(victim))
        loop_and_task.extend([asyncio.get_running_loop(), task])
        with pytest.raises(asyncio.CancelledError):
            await task
        return await kept

    assert tokens(asyncio.run(both())) == expected
    assert max(rows) == 5 and rows[-1] <= 2  # the victim shared forwards, then left
    assert batch.rounds.open_groups == 0  # type: ignore[union-attr]
    assert tokens(batch.run(keep)) == expected  # the loop still serves


@pytest.mark.parametrize("where", ["forward", "commit"])
def test_a_failure_fails_only_its_group(
    where: str, batch: LocalGenerator, target: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_prompt = " ".join((PROMPTS[6], PROMPTS[2], PROMPTS[4]))
    victim = GroupRequest((long_prompt,) * 2, SamplingParams(max_new_tokens=20))
    others = [GroupRequest((PROMPTS[5],), SamplingParams(max_new_tokens=12)),
              GroupRequest((PROMPTS[1], PROMPTS[5]), SamplingParams(max_new_tokens=9))]
    expected = [ar_tokens(target, r) for r in others]
    victim_start = len(target.tokenizer.encode(long_prompt))
    assert victim_start > max(len(target.tokenizer.encode(p)) for p in PROMPTS[1:6:4]) + 12
    poison = victim_start + 3  # a position only the victim's rows reach

    if where == "forward":
        real_forward = target.model.forward

        def failing(ids: Any, cache: Any, mask: Any = None, positions: Any = None,
                    keep: int = 0) -> torch.Tensor:
            if positions is not None and int(positions.max()) == poison:
                raise RuntimeError("planted forward failure")
            return real_forward(ids, cache, mask, positions, keep)

        monkeypatch.setattr(target.model, "forward", failing)
    else:
        real_commit = rounds.commit_token

        def failing_commit(runtime: Any, state: Any, logits: torch.Tensor) -> int:
            if len(state.prompt_ids) + len(state.output_ids) == poison:
                raise RuntimeError("planted commit failure")
            return real_commit(runtime, state, logits)

        monkeypatch.setattr(rounds, "commit_token", failing_commit)
    futures = submit_staggered(monkeypatch, [(batch, r) for r in [others[0], victim, others[1]]])
    with pytest.raises(RuntimeError, match="planted"):
        futures[1].result(timeout=WAIT)
    assert [tokens(f.result(timeout=WAIT)) for f in (futures[0], futures[2])] == expected
    assert batch.rounds.stats.failed_batches == (where == "forward")  # type: ignore[union-attr]
    monkeypatch.undo()
    assert tokens(batch.run(others[1])) == expected[1]  # the loop still serves


def test_round_batcher_is_shared_per_target_and_can_be_switched_off(
    target: LoadedModel
) -> None:
    base = make(BATCH, target, None)
    derived = generator_from_models(BATCH, target, hub=base.hub)
    assert isinstance(base.rounds, RoundBatcher) and derived.rounds is base.rounds
    assert base.rounds.target_lock is base.hub.lock
    per_group = make(BATCH, target, None, DecodingOptions(round_batcher=False))
    assert per_group.rounds is None
    request = GroupRequest(PROMPTS[:3], SamplingParams(max_new_tokens=6))
    assert tokens(per_group.run(request)) == tokens(base.run(request))
    for generator in (per_group, base):
        generator.close()


def test_the_loop_thread_leaves_the_default_thread_count_alone(
    target: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop uses the count of the thread that built the batcher; threads created later
    (and the caller) keep the process default."""
    before = torch.get_num_threads()
    seen: list[int] = []
    real = SlotRoundBatch.forward

    def watched(self: SlotRoundBatch, model: Any, drafts: Any = None) -> list[torch.Tensor]:
        seen.append(torch.get_num_threads())
        return real(self, model, drafts)

    monkeypatch.setattr(SlotRoundBatch, "forward", watched)
    torch.set_num_threads(2)
    generator = make(BATCH, target, None)  # built with 2
    try:
        torch.set_num_threads(1)  # the default when the loop starts
        generator.run(GroupRequest(PROMPTS[:2], SamplingParams(max_new_tokens=4)))
        assert seen and set(seen) == {2}
        assert torch.get_num_threads() == 1
        assert in_new_thread(torch.get_num_threads) == 1
    finally:
        generator.close()
        torch.set_num_threads(before)


def kv_generator(target: LoadedModel, requests_: Sequence[
        GroupRequest], scale: float) -> tuple[LocalGenerator, int]:
    """A round batcher whose KV budget (``round_kv_mb``) is ``scale`` x the largest of the groups'
    own KV estimates (rows x (prompt + max_new_tokens) x per-token bytes)."""
    per_token = round_budget.kv_bytes_per_token(target.model)
    alone = max(len(r.prompts) * max(len(target.tokenizer.encode(p)) + r.params.max_new_tokens
                                      for p in r.prompts) * per_token for r in requests_)
    limit = int(alone * scale)
    generator = make(BATCH, target, None, DecodingOptions(round_kv_mb=limit / round_budget.MB))
    assert generator.rounds is not None and abs(generator.rounds.kv.limit - limit) <= 1
    return generator, generator.rounds.kv.limit


def test_groups_over_the_kv_budget_together_run_one_after_the_other(
    target: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [GroupRequest((PROMPTS[0], PROMPTS[2]), SamplingParams(max_new_tokens=12)),
            GroupRequest((PROMPTS[1], PROMPTS[3]), SamplingParams(max_new_tokens=10))]
    expected = [ar_tokens(target, r) for r in jobs]
    generator, limit = kv_generator(target, jobs, 1.3)  # one fits, two don't
    try:
        results = [f.result(timeout=WAIT)
                   for f in submit_staggered(monkeypatch, [(generator, r) for r in jobs])]
        assert [tokens(r) for r in results] == expected
        stats = generator.rounds.stats  # type: ignore[union-attr]
        assert stats.mixed_forwards == 0 and stats.joined_mid_round == 0
        assert stats.kv_waits > 0 and stats.kv_rejected == 0
        assert stats.peak_rows == 2 and 0 < stats.peak_kv_bytes <= limit
        for result in results:
            assert result.stats["round_peak_rows"] == 2
            assert 0 < result.stats["round_peak_kv_bytes"] <= stats.peak_kv_bytes
    finally:
        generator.close()


def test_a_group_over_the_kv_budget_alone_fails_and_the_next_completes(
    target: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = GroupRequest((PROMPTS[5],), SamplingParams(max_new_tokens=8))
    big = GroupRequest((PROMPTS[1],) * 3, SamplingParams(max_new_tokens=40))
    expected = ar_tokens(target, small)
    generator, _ = kv_generator(target, [small], 1.05)  # small alone fits
    try:
        futures = submit_staggered(monkeypatch, [(generator, small), (generator, big),
                                                 (generator, small)])
        with pytest.raises(DecodingError, match="SEEDQ_ROUND_KV_MB"):
            futures[1].result(timeout=WAIT)
        assert [tokens(f.result(timeout=WAIT)) for f in (futures[0], futures[2])] == [
            expected, expected]
        stats = generator.rounds.stats  # type: ignore[union-attr]
        assert stats.kv_rejected == 1 and stats.peak_rows == 1 and stats.kv_waits > 0
        assert generator.rounds.open_groups == 0  # type: ignore[union-attr]
    finally:
        generator.close()


def test_the_kv_estimate_matches_the_round_cache(target: LoadedModel) -> None:
    """Per-token bytes from the config are what the round cache really holds per position."""
    generator = make(BATCH, target, None)
    try:
        request = GroupRequest(PROMPTS[:3], SamplingParams(max_new_tokens=5))
        result = generator.run(request)
        stats = generator.rounds.stats  # type: ignore[union-attr]
        per_token = round_budget.kv_bytes_per_token(target.model)
        assert generator.rounds.kv.limit == 0  # type: ignore[union-attr]  # unlimited
        assert stats.peak_kv_bytes % per_token == 0 and stats.peak_rows == 3
        prompt = max(len(target.tokenizer.encode(p)) for p in PROMPTS[:3])
        assert 3 * (prompt + 1) * per_token <= stats.peak_kv_bytes  # seen after forwards too
        assert stats.peak_kv_bytes <= 3 * (prompt + 5) * per_token  # the admission bound
        assert result.stats["round_peak_kv_bytes"] == stats.peak_kv_bytes
    finally:
        generator.close()
