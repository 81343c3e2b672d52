"""One option set for ``generate``, ``solve``, ``submit`` and ``run``: engine flags from the
engine registry, tree flags from SearchParams, ``--task`` a choice. Nothing is silently
dropped, and a bad flag is ONE error naming it, before any line is read or service opened."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from seedq.cli import main
from seedq.cli import solve as solve_module
from seedq.decoding import registry
from seedq.decoding.config import EngineConfig
from seedq.reasoning.params import SearchParams

NO_SERVICES = {  # nothing may be reached: the flags are refused before
    "SEEDQ_REDIS_URL": "redis://127.0.0.1:1/0",
    "SEEDQ_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
    "SEEDQ_ENGINE": "ar",
}
LINE = {"question": "Ducks?", "answer": "18"}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({**LINE, "id": f"q{i}"}) + "\n" for i in range(1320)))
    return path


def invoke(args: Sequence[str]) -> Result:
    return CliRunner().invoke(main, list(args), env=NO_SERVICES)


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if "Error" in line or "line " in line]


def _params(name: str) -> set[str]:
    command = main.commands[name]
    assert isinstance(command, click.Command)
    return {p.name for p in command.params if p.name}


def test_the_commands_share_one_option_set() -> None:
    search = {f.name for f in SearchParams.__dataclass_fields__.values()}
    for name in ("solve", "submit", "run"):
        missing = (search | {"task", "limit"}) - _params(name)
        assert not missing, f"seedq {name} lacks {sorted(missing)}"
    for name in ("generate", "solve", "submit", "run"):
        missing = ({"engine", *registry.OPTIONS}) - _params(name)
        assert not missing, f"seedq {name} lacks {sorted(missing)}"
    for name in ("generate", "solve", "run", "worker"):
        assert {"target_model", "draft_model", "device", "dtype"} <= _params(name), name


@pytest.mark.parametrize("command", ["submit", "run"])
def test_a_task_typo_is_one_error(command: str, dataset: Path) -> None:
    result = invoke([command, str(dataset), "--task", "gsm8kk"])
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert "--task" in line and "'gsm8kk' is not one of" in line and "gsm8k" in line


@pytest.mark.parametrize(
    ("args", "flag", "engine"),
    [
        (["submit", "{file}", "--engine", "ar", "--gamma", "4"], "--gamma", "ar"),
        (["submit", "{file}", "--engine", "sd", "--verify-batch", "2"], "--verify-batch", "sd"),
        (["run", "{file}", "--gamma", "3"], "--gamma", "ar"),  # SEEDQ_ENGINE=ar runs it
        (["run", "{file}", "--engine", "mcsd", "--draft", "d", "--gamma", "3"], "--gamma", "mcsd"),
        (["solve", "{file}", "--task", "gsm8k", "--gamma", "2"], "--gamma", "ar"),
        (["solve", "{file}", "--engine", "sd", "--draft", "d", "--draft-batch", "2"],
         "--draft-batch", "sd"),
        (["generate", "--prompt", "hi", "--k-config", "2,1"], "--k-config", "ar"),
    ],
)
def test_options_the_engine_does_not_use_are_refused(
    args: list[str], flag: str, engine: str, dataset: Path
) -> None:
    result = invoke([a.format(file=dataset) for a in args])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert flag in line and f"does not apply to engine '{engine}'" in line


def test_search_flag_errors_are_one_error(dataset: Path) -> None:
    for command in ("solve", "submit", "run"):
        result = invoke([command, str(dataset), "--task", "gsm8k", "--breadth", "0"])
        assert result.exit_code == 2, result.output
        (line,) = error_lines(result)
        assert "--breadth" in line and "must be in 1..32" in line


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``seedq solve`` would run: its engine config and its parsed jobs."""
    seen: dict[str, Any] = {}

    def fake_open(config: EngineConfig) -> object:
        seen["config"] = config
        return object()

    async def fake_run(jobs: list[solve_module.LineJob], *args: object, **kwargs: object) -> int:
        seen["jobs"] = jobs
        return 0

    monkeypatch.setattr(solve_module, "open_generator", fake_open)
    monkeypatch.setattr(solve_module, "run_jobs", fake_run)
    return seen


def test_solve_passes_every_engine_option_through(dataset: Path, solved: dict[str, Any]) -> None:
    result = invoke([
        "solve", str(dataset), "--task", "gsm8k", "--limit", "1", "--engine", "seed",
        "--draft", "tiny-draft", "--k-config", "2,1", "--mcsd-rule", "with",
        "--verify-batch", "2", "--draft-batch", "3", "--draft-threads", "4",
    ])
    assert result.exit_code == 0, result.output
    assert solved["config"] == EngineConfig(
        engine="seed", draft="tiny-draft", k_config=(2, 1), mcsd_rule="with", verify_batch=2,
        draft_batch=3, draft_threads=4,
    )


def test_solve_takes_every_search_flag(dataset: Path, solved: dict[str, Any]) -> None:
    result = invoke([
        "solve", str(dataset), "--task", "gsm8k", "--limit", "2", "--seed", "7",
        "--top-k", "5", "--top-p", "0.9", "--eval-max-new-tokens", "9", "--vote-samples", "4",
        "--value-samples", "2", "--node-budget", "10", "--value-threshold", "0.5",
        "--search", "dfs",
    ])
    assert result.exit_code == 0, result.output
    for job in solved["jobs"]:
        params = job.spec.search
        assert (params.seed, params.top_k, params.top_p, params.eval_max_new_tokens) == (
            7, 5, 0.9, 9)
        assert (params.vote_samples, params.value_samples, params.node_budget) == (4, 2, 10)
        assert (params.value_threshold, params.search) == (0.5, "dfs")
