"""The engine's outer surface: model pairing, config checks, async use, the CLI."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from seedq.cli import main
from seedq.decoding.config import EngineConfig
from seedq.decoding.engines.round_batch import SEED
from seedq.decoding.engines.seed import SeedScheduler
from seedq.decoding.factory import generator_from_models
from seedq.decoding.loading import LoadedModel, wrap
from seedq.decoding.tiny import tiny_model, tiny_tokenizer
from seedq.decoding.types import DecodingError, GroupRequest, SamplingParams


def test_draft_with_another_vocabulary_is_refused(target: LoadedModel) -> None:
    other = tiny_tokenizer(300)
    draft = wrap(tiny_model(3), other, "other")
    with pytest.raises(DecodingError, match="does not share the target's tokenizer"):
        generator_from_models(EngineConfig(engine="sd", target="tiny", draft="other"), target,
                              draft)


def test_config_is_checked() -> None:
    with pytest.raises(DecodingError, match="needs a draft"):
        EngineConfig(engine="seed")
    with pytest.raises(DecodingError, match="engine must be one of"):
        EngineConfig(engine="fast")
    with pytest.raises(DecodingError, match="k_config"):
        EngineConfig(engine="mcsd", draft="x", k_config=(2, 0))


def test_concurrent_groups_share_one_seed_scheduler(target: LoadedModel,
                                                    close_draft: LoadedModel) -> None:
    """Two groups awaited at once through one scheduler give what each gives alone."""
    config = EngineConfig(engine="seed", target="tiny", draft="d", verify_batch=2)
    generator = generator_from_models(config, target, close_draft)
    first = GroupRequest(("the red block", "how many"), SamplingParams(max_new_tokens=20))
    second = GroupRequest(("she sold", "a", "the blue"), SamplingParams(max_new_tokens=15))

    async def both() -> tuple:  # type: ignore[type-arg]
        return tuple(await asyncio.gather(generator.generate(first), generator.generate(second)))

    try:
        together = asyncio.run(both())
        alone = (generator.run(first), generator.run(second))
    finally:
        generator.close()
    for a, b in zip(together, alone, strict=True):
        assert [s.token_ids for s in a.sequences] == [s.token_ids for s in b.sequences]
        assert 0 < a.stats["target_busy_fraction"] <= 1.0


def test_generate_command_json() -> None:
    result = CliRunner().invoke(main, [
        "generate", "--engine", "mcsd", "--target", "tiny", "--draft", "tiny-draft",
        "--prompt", "the red block", "--prompt", "how many", "-n", "2", "--k-config", "2,1",
        "--max-new-tokens", "12", "--temperature", "0.8", "--top-k", "20", "--seed", "1",
        "--json",
    ])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["engine"] == "mcsd" and len(payload["sequences"]) == 4
    assert [s["prompt_index"] for s in payload["sequences"]] == [0, 0, 1, 1]
    for seq in payload["sequences"]:
        assert 1 <= seq["metrics"]["new_tokens"] <= 12
        assert set(seq["metrics"]) >= {"drafted_tokens", "accepted_tokens", "target_forwards",
                                       "draft_forwards", "draft_seconds", "verify_seconds",
                                       "wait_seconds", "wall_seconds"}
    assert payload["metrics"]["peak_memory_bytes"] > 0


def test_generate_command_table_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["generate", "--target", "tiny", "--prompt", "a",
                              "--max-new-tokens", "5"])
    assert ok.exit_code == 0 and "tokens/s" in ok.output
    bad_k = runner.invoke(main, ["generate", "--engine", "mcsd", "--target", "tiny", "--draft",
                                 "tiny-draft", "--prompt", "a", "--k-config", "2,x"])
    assert bad_k.exit_code != 0 and "--k-config" in bad_k.output
    no_draft = runner.invoke(main, ["generate", "--engine", "sd", "--target", "tiny",
                                    "--prompt", "a"])
    assert no_draft.exit_code != 0 and "needs a draft" in no_draft.output
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"prompt": 3}\n', encoding="utf-8")
    bad_file = runner.invoke(main, ["generate", "--target", "tiny", "--prompts-file",
                                    str(prompts)])
    assert bad_file.exit_code != 0 and "line 2" in bad_file.output


@pytest.mark.parametrize("where", ["scheduler", "round"])
def test_closing_the_scheduler_never_leaves_a_caller_hanging(
    where: str, target: LoadedModel, close_draft: LoadedModel
) -> None:
    options = {"verify_batch": 2} if where == "scheduler" else {}
    generator = generator_from_models(EngineConfig(engine="seed", target="tiny", draft="d",
                                                   **options), target, close_draft)
    request = GroupRequest(("a",) * 8, SamplingParams(max_new_tokens=400))
    engine = generator.engine
    if where == "scheduler":
        assert isinstance(engine, SeedScheduler)
        future = engine.submit(request)
    else:
        assert generator.rounds is not None
        future = generator.rounds.submit(request, generator.runtime, SEED)
    generator.close()
    try:
        result = future.result(timeout=30)
    except RuntimeError as exc:
        assert "closed" in str(exc)
    else:
        assert len(result.sequences) == 8


def test_derived_generators_share_the_loaded_models(target: LoadedModel,
                                                    close_draft: LoadedModel) -> None:
    from seedq.decoding.factory import derive_generator

    base = generator_from_models(EngineConfig(engine="seed", target="tiny", draft="d"), target,
                                 close_draft)
    request = GroupRequest(("the red block", "how many"), SamplingParams(max_new_tokens=16))
    expected = [s.token_ids for s in base.run(request).sequences]
    for config in (EngineConfig(engine="ar", target="tiny"),
                   EngineConfig(engine="mcsd", target="tiny", draft="d", k_config=(2, 2)),
                   EngineConfig(engine="sd", target="tiny", draft="ngram")):
        derived = derive_generator(base, config)
        assert derived.runtime.target is base.runtime.target
        assert [s.token_ids for s in derived.run(request).sequences] == expected
        derived.close()
    with pytest.raises(DecodingError, match="needs draft 'other'"):
        derive_generator(base, EngineConfig(engine="sd", target="tiny", draft="other"))
    plain = generator_from_models(EngineConfig(engine="ar", target="tiny"), target)
    with pytest.raises(DecodingError, match="no draft model"):
        derive_generator(plain, EngineConfig(engine="sd", target="tiny", draft="d"))
    base.close()
