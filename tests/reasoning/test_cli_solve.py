"""``seedq solve`` plumbing with a scripted generator in place of the engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from seedq.cli import main
from seedq.cli import solve as solve_module
from seedq.decoding.config import EngineConfig
from seedq.decoding.types import SamplingParams
from tests.reasoning.scripted import ScriptedGenerator

GOOD = {"id": "q1", "question": "Ducks?", "answer": "18"}


def answer(prompt: str, index: int, params: SamplingParams) -> str:
    if "Write only the next step" in prompt:
        return f"Question 1.1: Part {index}?\nAnswer 1.1: The answer is 18."
    return "sure"


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[EngineConfig, ScriptedGenerator]]:
    made: list[tuple[EngineConfig, ScriptedGenerator]] = []

    def fake(config: EngineConfig) -> ScriptedGenerator:
        generator = ScriptedGenerator(answer)
        made.append((config, generator))
        return generator

    monkeypatch.setattr(solve_module, "open_generator", fake)
    return made


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_lines_are_named_and_the_others_still_run(tmp_path: Path, scripted: list) -> None:
    path = write(tmp_path, [
        json.dumps(GOOD),
        json.dumps({**GOOD, "id": "q2", "search": {"breadth": 0}}),
        "{not json",
        "",
        json.dumps({**GOOD, "id": "q3", "colour": "red"}),
        json.dumps({**GOOD, "id": "q4"}),
    ])
    result = CliRunner().invoke(main, ["solve", str(path), "--task", "gsm8k", "--json",
                                       "--breadth", "2", "--depth", "1"])
    assert result.exit_code == 1
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["custom_id"] for o in outputs] == ["q1", "q4"]
    assert set(outputs[0]) == {"custom_id", "task", "answer", "correct", "tree", "metrics"}
    assert outputs[0]["answer"] == "18" and outputs[0]["correct"] is True
    assert len(outputs[0]["tree"]["nodes"]) == 1 + 2 + 1
    assert "line 2: search.breadth: must be in 1..32, got 0" in result.stderr
    assert "line 3: invalid JSON" in result.stderr
    assert "line 5: colour: unknown field for task 'gsm8k'" in result.stderr
    ((config, generator),) = scripted
    assert config == EngineConfig() and generator.closed


def test_engine_options_limit_and_text_output(tmp_path: Path, scripted: list) -> None:
    path = write(tmp_path, [json.dumps({**GOOD, "id": f"q{i}"}) for i in range(4)])
    result = CliRunner().invoke(main, [
        "solve", str(path), "--task", "gsm8k", "--limit", "2", "--engine", "seed",
        "--draft", "smollm2-int8", "--k-config", "2,1,1", "--verify-batch", "2",
        "--depth", "1", "--search", "dfs", "--evaluator", "vote",
    ])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["q0", "q1"]
    ((config, _),) = scripted
    assert (config.engine, config.draft, config.k_config, config.verify_batch) == (
        "seed", "smollm2-int8", (2, 1, 1), 2)


def test_gamma_with_k_config_is_a_usage_error_naming_both(tmp_path: Path, scripted: list) -> None:
    path = write(tmp_path, [json.dumps(GOOD)])
    result = CliRunner().invoke(main, [
        "solve", str(path), "--task", "gsm8k", "--engine", "seed", "--draft", "smollm2-int8",
        "--k-config", "2,1,1", "--gamma", "3",
    ])
    assert result.exit_code == 2
    assert "--gamma: cannot be given together with --k-config" in result.output
    assert scripted == []


def test_line_search_overrides_command_options(tmp_path: Path, scripted: list) -> None:
    path = write(tmp_path, [json.dumps({**GOOD, "search": {"breadth": 3}})])
    result = CliRunner().invoke(main, ["solve", str(path), "--task", "gsm8k", "--json",
                                       "--breadth", "2", "--depth", "1"])
    assert result.exit_code == 0, result.output
    tree = json.loads(result.stdout)["tree"]
    assert len([n for n in tree["nodes"] if n["kind"] == "thought"]) == 3


def test_bad_engine_options_are_usage_errors(tmp_path: Path, scripted: list) -> None:
    path = write(tmp_path, [json.dumps(GOOD)])
    result = CliRunner().invoke(main, ["solve", str(path), "--task", "gsm8k", "--engine", "sd"])
    assert result.exit_code == 2 and "needs a draft" in result.stderr
    result = CliRunner().invoke(main, ["solve", str(path), "--task", "gsm8k",
                                       "--k-config", "2,x"])
    assert result.exit_code == 2 and "--k-config" in result.stderr
    assert scripted == []


def test_missing_task_is_reported_per_line(tmp_path: Path, scripted: list) -> None:
    path = write(tmp_path, [json.dumps(GOOD)])
    result = CliRunner().invoke(main, ["solve", str(path)])
    assert result.exit_code == 1
    assert "line 1: task: missing" in result.stderr
    assert scripted == []  # no engine is loaded when no line is valid
