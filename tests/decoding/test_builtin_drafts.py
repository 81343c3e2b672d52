"""The built-in ``smollm2-*`` names: the same converted weights, loaded as a float32 target,
an int8 copy or a bfloat16 copy; speculation with either copy as the draft is greedy-
identical to ``ar`` (the draft's precision changes acceptance, never the output)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seedq.decoding import loading
from seedq.decoding.config import EngineConfig
from seedq.decoding.factory import generator_from_models
from seedq.decoding.options import DecodingOptions
from seedq.decoding.tiny import tiny_model, tiny_tokenizer
from seedq.decoding.types import GroupRequest, SamplingParams

PROMPTS = ("the red block is on", "how many eggs she sold", "Question 1: what is 3 + 4")


@pytest.fixture
def converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A saved tiny model standing in for the converted SmolLM2 copy (same code path)."""
    path = tmp_path / "models" / "SmolLM2-135M-Instruct"
    tiny_model(0).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    monkeypatch.setattr(loading, "smollm2_path", lambda cache_dir: path)
    return path


@pytest.mark.parametrize(("name", "dtype"), [("smollm2", torch.float32),
                                              ("smollm2-bf16", torch.bfloat16)])
def test_built_in_names_load_the_converted_weights(converted: Path, name: str,
                                                   dtype: torch.dtype) -> None:
    loaded = loading.load(name, "cpu", "float32", DecodingOptions(cache_dir=str(converted)))
    assert loaded.model.dtype == dtype
    assert loading.resolve(name, converted) == str(converted)


@pytest.mark.parametrize("draft", ["smollm2-bf16", "smollm2-int8"])
@pytest.mark.parametrize("engine", ["sd", "seed"])
def test_speculation_with_a_reduced_precision_copy_is_greedy_identical(
        converted: Path, draft: str, engine: str) -> None:
    options = DecodingOptions(cache_dir=str(converted))
    target = loading.load("smollm2", "cpu", "float32", options)
    copy = loading.load(draft, "cpu", "float32", options)
    request = GroupRequest(PROMPTS, SamplingParams(max_new_tokens=24))
    plain = generator_from_models(EngineConfig(engine="ar"), target, options=options)
    spec = generator_from_models(EngineConfig(engine=engine, draft=draft), target, copy,
                                 options=options)
    try:
        expected = [s.token_ids for s in plain.run(request).sequences]
        result = spec.run(request)
        assert [s.token_ids for s in result.sequences] == expected
        drafted = sum(s.metrics.drafted_tokens for s in result.sequences)
        accepted = sum(s.metrics.accepted_tokens for s in result.sequences)
        assert drafted > 0 and accepted > 0.5 * drafted  # a close copy: mostly accepted
    finally:
        plain.close()
        spec.close()
