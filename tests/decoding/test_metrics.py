"""Per-sequence metrics: accepted tokens count only what survives EOS / stop cuts, and a
batched forward's time is split over its rows instead of charged whole to each."""

from __future__ import annotations

import time
from typing import Any

import pytest

from seedq.decoding.config import EngineConfig
from seedq.decoding.drafters import ModelDrafter
from seedq.decoding.engines.base import prepare_group
from seedq.decoding.engines.speculative import verify
from seedq.decoding.factory import round_mode
from seedq.decoding.loading import LoadedModel
from seedq.decoding.models import Tokenizer
from seedq.decoding.types import GroupRequest, SamplingParams
from tests.decoding.conftest import PROMPTS, make

GAMMA = 5  # an identical draft: rounds of GAMMA accepted tokens + 1 bonus token


def _eos_inside_a_round(target: LoadedModel) -> tuple[str, int, int]:
    """A prompt, a token of its greedy output and where that token first appears, such that
    the output cut after it ends inside a round's accepted draft tokens."""
    ar = make(EngineConfig(engine="ar", target="tiny"), target, None)
    baseline = ar.run(GroupRequest(PROMPTS, SamplingParams(max_new_tokens=20)))
    for prompt, seq in zip(PROMPTS, baseline.sequences, strict=True):
        for position, token in enumerate(seq.token_ids):
            first = seq.token_ids.index(token)
            if first == position and first >= 7 and first % (GAMMA + 1) in (1, 2, 3):
                return prompt, token, first
    raise AssertionError("no usable token in the baseline outputs")


@pytest.mark.parametrize(
    "options",
    [dict(engine="sd"), dict(engine="mcsd", k_config=(2, 1, 1, 1, 1)), dict(engine="seed"),
     dict(engine="seed", verify_batch=2)],
    ids=["sd", "mcsd", "seed-round", "seed-scheduler"],
)
def test_accepted_tokens_count_only_kept_tokens(options: dict[str, Any],
                                                target: LoadedModel) -> None:
    prompt, token, first = _eos_inside_a_round(target)
    model = LoadedModel(target.model, Tokenizer(target.tokenizer.tokenizer, [token]))
    config = EngineConfig(target="tiny", draft="tiny", gamma=GAMMA, **options)
    offset = 1 if round_mode(config) is not None else 0  # the round's prefill commits one
    generator = make(config, model, model)
    try:
        seq = generator.run(GroupRequest((prompt,), SamplingParams(max_new_tokens=30)))
    finally:
        generator.close()
    seq_result = seq.sequences[0]
    m = seq_result.metrics
    assert seq_result.finish_reason == "eos" and m.new_tokens == first + 1
    full_rounds = m.target_forwards - 1 - offset
    assert full_rounds == (first - offset) // (GAMMA + 1)
    # every full round: GAMMA accepted + the bonus; the last round is cut inside its draft
    assert m.accepted_tokens == GAMMA * full_rounds + (
        m.new_tokens - offset - (GAMMA + 1) * full_rounds)
    assert m.accepted_tokens < m.new_tokens


def test_batch_engine_splits_forward_time(target: LoadedModel) -> None:
    generator = make(EngineConfig(engine="batch", target="tiny"), target, None)
    result = generator.run(GroupRequest(PROMPTS, SamplingParams(max_new_tokens=12)))
    total = sum(s.metrics.verify_seconds for s in result.sequences)
    assert 0 < total <= result.wall_seconds


def test_batched_draft_and_verify_split_forward_time(target: LoadedModel,
                                                     close_draft: LoadedModel) -> None:
    """Eight sequences drafted in one batched forward per depth, then verified in one
    batched target forward: the rows' times add up to the calls' time, not 8 times it."""
    generator = make(EngineConfig(engine="sd", target="tiny", draft="x", gamma=3), target,
                     close_draft)
    runtime = generator.runtime
    assert isinstance(runtime.drafter, ModelDrafter)
    states = prepare_group(runtime, GroupRequest(PROMPTS, SamplingParams(max_new_tokens=10)))
    began = time.perf_counter()
    trees = runtime.drafter.draft_many(states)
    drafting = time.perf_counter() - began
    drafted = sum(s.metrics.draft_seconds for s in states)
    assert 0.5 * drafting <= drafted <= drafting
    assert all(s.metrics.draft_forwards == 3 for s in states)
    began = time.perf_counter()
    verify(runtime, list(zip(states, trees, strict=True)))
    verifying = time.perf_counter() - began
    verified = sum(s.metrics.verify_seconds for s in states)
    assert 0.5 * verifying <= verified <= verifying
    assert all(s.metrics.target_forwards == 1 for s in states)
