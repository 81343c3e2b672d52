"""Greedy losslessness: every engine's token ids equal plain autoregressive decoding."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from seedq.decoding.config import EngineConfig
from seedq.decoding.factory import round_mode
from seedq.decoding.loading import LoadedModel
from seedq.decoding.models import Tokenizer
from seedq.decoding.types import GroupRequest, GroupResult, SamplingParams
from tests.decoding.conftest import PROMPTS, make

CONFIGS = [
    dict(engine="batch"),
    dict(engine="sd", gamma=1),
    dict(engine="sd", gamma=3),
    dict(engine="sd", gamma=6),
    dict(engine="mcsd", k_config=(2, 1, 1)),
    dict(engine="mcsd", k_config=(3, 2)),
    dict(engine="mcsd", k_config=(2, 2, 2), mcsd_rule="with"),
    dict(engine="mcsd", k_config=(1, 1, 1, 1)),
    dict(engine="seed", gamma=4),
    dict(engine="seed", k_config=(2, 1, 1)),
    dict(engine="seed", gamma=3, verify_batch=3),
    dict(engine="seed", k_config=(2, 2), verify_batch=4, draft_batch=4, draft_threads=1),
    dict(engine="sd", gamma=4, draft="ngram"),
    dict(engine="mcsd", k_config=(3, 1, 1), draft="ngram"),
    dict(engine="seed", gamma=4, draft="ngram", verify_batch=2),
    # in the round batcher (a chain, the scheduler's options at their defaults)
    dict(engine="seed", gamma=1),
    dict(engine="seed", gamma=6, draft="ngram"),
]


def _run(config: EngineConfig, target: LoadedModel, draft: LoadedModel | None,
         request: GroupRequest) -> GroupResult:
    generator = make(config, target, draft)
    try:
        return generator.run(request)
    finally:
        generator.close()


def _config(**kwargs: Any) -> EngineConfig:
    kwargs.setdefault("draft", "tiny-draft" if kwargs["engine"] in ("sd", "mcsd", "seed") else None)
    return EngineConfig(target="tiny", **kwargs)


@pytest.fixture(scope="module")
def baseline(target: LoadedModel) -> GroupResult:
    request = GroupRequest(PROMPTS, SamplingParams(max_new_tokens=30))
    return _run(_config(engine="ar"), target, None, request)


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: "-".join(f"{v}" for v in o.values()))
@pytest.mark.parametrize("which", ["close", "far"])
def test_greedy_identical_to_ar(options: dict[str, Any], which: str, target: LoadedModel,
                                close_draft: LoadedModel, far_draft: LoadedModel,
                                baseline: GroupResult) -> None:
    draft = close_draft if which == "close" else far_draft
    request = GroupRequest(PROMPTS, SamplingParams(max_new_tokens=30))
    result = _run(_config(**options), target, draft, request)
    for expected, got in zip(baseline.sequences, result.sequences, strict=True):
        assert got.token_ids == expected.token_ids
        assert got.text == expected.text
        assert got.finish_reason == expected.finish_reason
    if options["engine"] in ("sd", "mcsd", "seed"):
        drafted = sum(s.metrics.drafted_tokens for s in result.sequences)
        accepted = sum(s.metrics.accepted_tokens for s in result.sequences)
        assert 0 <= accepted <= drafted
        if which == "close" and options.get("draft") != "ngram":
            assert accepted > 0


@pytest.mark.parametrize("options", [dict(engine="sd"), dict(engine="seed", verify_batch=2),
                                     dict(engine="seed")], ids=["sd", "seed-scheduler",
                                                                "seed-round"])
def test_identical_draft_accepts_every_draft(options: dict[str, Any], target: LoadedModel
                                             ) -> None:
    """Every draft accepted in full: gamma + 1 tokens per verify forward. In the round
    batcher the prefill forward commits the first token too (one forward more)."""
    gamma, rounds = 4, 5
    config = _config(gamma=gamma, **options)
    first = 1 if round_mode(config) is not None else 0
    request = GroupRequest(PROMPTS, SamplingParams(max_new_tokens=first + rounds * (gamma + 1)))
    result = _run(config, target, target, request)
    for seq in result.sequences:
        if seq.finish_reason != "length":
            continue  # the random model hit EOS early
        m = seq.metrics
        assert m.accepted_tokens == m.drafted_tokens == rounds * gamma
        assert m.target_forwards == first + rounds
        assert m.new_tokens == first + rounds * (gamma + 1)


def _stop_cases(baseline: GroupResult, tokenizer: Tokenizer) -> list[tuple[int, int]]:
    """(sequence, position) pairs whose token at that position we turn into an EOS."""
    cases = []
    for index, seq in enumerate(baseline.sequences):
        for position in (3, 7, 11):
            if len(seq.token_ids) > position + 1:
                cases.append((index, position))
                break
    return cases


@pytest.mark.parametrize("engine", ["batch", "sd", "mcsd", "seed"])
def test_eos_inside_a_draft(engine: str, target: LoadedModel, baseline: GroupResult) -> None:
    """Declare a token the model emits mid-sequence to be EOS: every engine stops right
    after it, even when it falls in the middle of an accepted draft (identical draft, gamma 5:
    rounds of 6 tokens, positions 3/7/11 are inside rounds)."""
    for index, position in _stop_cases(baseline, target.tokenizer):
        token = baseline.sequences[index].token_ids[position]
        first = baseline.sequences[index].token_ids.index(token)
        tokenizer = Tokenizer(target.tokenizer.tokenizer, [token])
        model = LoadedModel(target.model, tokenizer)
        request = GroupRequest((PROMPTS[index],), SamplingParams(max_new_tokens=30))
        config = _config(engine=engine, gamma=5, k_config=(2, 1, 1, 1, 1) if engine == "mcsd"
                         else ())
        draft = model if engine != "batch" else None
        got = _run(config, model, draft, request).sequences[0]
        assert got.token_ids == baseline.sequences[index].token_ids[: first + 1]
        assert got.finish_reason == "eos"


@pytest.mark.parametrize("engine", ["ar", "batch", "sd", "mcsd", "seed"])
def test_stop_string_and_max_tokens_inside_a_draft(engine: str, target: LoadedModel,
                                                    baseline: GroupResult) -> None:
    seq = baseline.sequences[0]
    stop_text = target.tokenizer.decode(seq.token_ids[4:6])
    if not stop_text.strip():
        pytest.skip("tokens decode to whitespace only")
    params = SamplingParams(max_new_tokens=30, stop=(stop_text,))
    config = _config(engine=engine, gamma=5)
    draft = target if engine not in ("ar", "batch") else None
    got = _run(config, target, draft, GroupRequest((PROMPTS[0],), params)).sequences[0]
    full = target.tokenizer.decode(seq.token_ids)
    assert got.finish_reason == "stop"
    assert got.text == full[: full.find(stop_text)]
    assert stop_text in target.tokenizer.decode(got.token_ids)
    assert stop_text not in target.tokenizer.decode(got.token_ids[:-1])
    # max_new_tokens = 8 with rounds of 6: the second round is cut inside its draft
    short = replace(params, stop=(), max_new_tokens=8)
    got = _run(config, target, draft, GroupRequest((PROMPTS[0],), short)).sequences[0]
    assert got.token_ids == seq.token_ids[:8] and got.finish_reason in ("length", "eos")


def test_chat_template_and_shared_prefix(target: LoadedModel, close_draft: LoadedModel) -> None:
    prompts = ("two plus two", "two plus three", "two plus two")
    request = GroupRequest(prompts, SamplingParams(max_new_tokens=12), chat=True)
    expected = _run(_config(engine="ar"), target, None, request)
    user = target.tokenizer.tokenizer.convert_tokens_to_ids("<|user|>")
    assert target.tokenizer.encode(prompts[0], chat=True)[0] == user
    for engine in ("batch", "sd", "seed"):
        got = _run(_config(engine=engine), target, close_draft, request)
        assert [s.token_ids for s in got.sequences] == [s.token_ids for s in expected.sequences]
    assert expected.sequences[0].token_ids == expected.sequences[2].token_ids


@pytest.mark.parametrize("engine", ["batch", "sd", "mcsd", "seed"])
def test_per_sequence_params(engine: str, target: LoadedModel, close_draft: LoadedModel,
                             baseline: GroupResult) -> None:
    """Each sequence of one group with its own max_new_tokens and stop strings gives what
    it gives alone under ar."""
    stop = target.tokenizer.decode(baseline.sequences[2].token_ids[5:7])
    own = (
        SamplingParams(max_new_tokens=7),
        SamplingParams(max_new_tokens=30),
        SamplingParams(max_new_tokens=30, stop=(stop,)),
        SamplingParams(max_new_tokens=13),
    )
    prompts = PROMPTS[:4]
    request = GroupRequest(prompts, sequence_params=own)
    got = _run(_config(engine=engine), target, close_draft, request)
    for prompt, params, seq in zip(prompts, own, got.sequences, strict=True):
        alone = _run(_config(engine="ar"), target, None, GroupRequest((prompt,), params))
        assert seq.token_ids == alone.sequences[0].token_ids
        assert seq.finish_reason == alone.sequences[0].finish_reason
    assert len(got.sequences[0].token_ids) <= 7
