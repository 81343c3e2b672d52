"""README's tour after ``make demo`` and the demo's description in docs/DEPLOY.md agree with
the code: every command and option the tour names exists, every sample file it names is
shipped, and the demo's draft model is the one DEPLOY.md names."""

from __future__ import annotations

import re
import shlex

import click

from seedq.cli import main
from seedq.service.oneshot import DEMO_ENGINE
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
DEPLOY = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def commands(block: str) -> list[list[str]]:
    """The ``seedq ...`` lines of the fenced blocks of ``block``, as tokens (no comments)."""
    out = []
    for fenced in re.findall(r"```sh\n(.*?)```", block, re.S):
        for line in fenced.splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens[:1] == ["seedq"]:
                out.append(tokens)
    return out


def options_of(command: click.Command) -> set[str]:
    return {opt for p in command.params for opt in getattr(p, "opts", ()) if opt.startswith("-")}


def test_the_tour_names_real_commands_and_options() -> None:
    tour = section(README, "After `make demo`")
    found = commands(tour)
    assert {tokens[1] for tokens in found} >= {"show", "report", "status", "run"}
    ctx = click.Context(main)
    for tokens in found:
        command = main.get_command(ctx, tokens[1])
        assert command is not None, tokens
        for token in tokens[2:]:
            if token.startswith("-"):
                assert token in options_of(command), (tokens[1], token)
    assert ".venv/bin/seedq" in tour and "source .venv/bin/activate" in tour


def test_the_tour_names_shipped_samples() -> None:
    tour = section(README, "After `make demo`")
    assert "seedq/data/samples" in tour
    names = set(re.findall(r"(\w+_demo\.jsonl)", tour))
    shipped = {p.name for p in (REPO / "seedq" / "data" / "samples").glob("*.jsonl")}
    assert names == shipped


def test_deploy_describes_the_demo_draft_model() -> None:
    demo = section(DEPLOY, "One machine, no setup")
    assert DEMO_ENGINE["draft_model"] == "smollm2-int8"
    assert f"`{DEMO_ENGINE['draft_model']}`" in demo
    assert "n-gram" not in demo and "prompt lookup" not in demo
    assert "seedq show BATCH" in demo and "seedq report BATCH" in demo
