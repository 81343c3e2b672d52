"""Whole trees of the built-in tasks with scripted model outputs."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from seedq.decoding.types import SamplingParams
from seedq.reasoning import TreeResult, parse_job, run_tree
from tests.reasoning.scripted import ScriptedGenerator

GOLD = ["unstack the orange block from on top of the blue block", "put down the orange block",
        "pick up the blue block", "stack the blue block on top of the orange block"]
BW_LINE: dict[str, Any] = {
    "id": "bw-demo",
    "init": "the red block is clear, the orange block is clear, the hand is empty, the orange "
            "block is on top of the blue block, the red block is on the table and the blue "
            "block is on the table",
    "goal": "the blue block is on top of the orange block",
    "plan": GOLD,
    "num_steps": 4,
}
WRONG = ["pick up the white block", "dance around the table"]


def bw_oracle(prompt: str, index: int, params: SamplingParams) -> str:
    """Sample 0 writes the gold next action, the others an unknown block and nonsense; the
    self-evaluation calls gold actions good."""
    if "[EVALUATION]" in prompt:
        action = prompt.rstrip().rsplit("[ACTION]\n", 1)[1].split("\n", 1)[0]
        return "good" if action in GOLD else "bad"
    body = prompt.rsplit("[PLAN]", 1)[1].split("\nThe current state is", 1)[0]
    done = [line for line in body.splitlines() if line.strip()]
    return GOLD[len(done)] + "\n" if index == 0 else WRONG[(index - 1) % 2]


def solve(line: dict[str, Any], task: str, generator: ScriptedGenerator) -> TreeResult:
    return asyncio.run(run_tree(parse_job(line, default_task=task), generator))


@pytest.mark.parametrize("search", ["bfs", "dfs"])
def test_blocksworld_tree_finds_the_gold_plan(search: str) -> None:
    result = solve({**BW_LINE, "search": {"search": search, "breadth": 3}}, "blocksworld",
                   ScriptedGenerator(bw_oracle))
    assert result.correct is True
    assert result.answer == "\n".join(GOLD)
    assert result.tree.details["optimal"] is True
    failures = [n.failure for n in result.tree.nodes if n.failure]
    assert len(failures) == 2 * 4
    assert "illegal action: cannot pick up the white block: there is no white block" in failures
    assert any(f.startswith("not a Blocksworld action") for f in failures)
    solution = result.tree.nodes[-1]
    assert solution.kind == "solution" and solution.thought == result.answer
    assert result.metrics["phases"]["solution"]["groups"] == 0  # the plan is the answer


def test_blocksworld_terminal_state_stops_the_search() -> None:
    line = {**BW_LINE, "search": {"breadth": 2, "depth": 8}}
    result = solve(line, "blocksworld", ScriptedGenerator(bw_oracle))
    assert result.correct is True
    assert result.metrics["max_depth"] == 4  # the goal was reached at depth 4


def test_blocksworld_illegal_only_plan_is_not_a_success() -> None:
    def clumsy(prompt: str, index: int, params: SamplingParams) -> str:
        return "bad" if "[EVALUATION]" in prompt else "pick up the blue block"

    result = solve({**BW_LINE, "search": {"breadth": 2}}, "blocksworld", ScriptedGenerator(clumsy))
    assert result.correct is False and result.answer == ""
    assert result.tree.details["reached_goal"] is False


SENTENCES = ["It was cold.", "She smiled.", "The dog barked!", "Nobody knew why?"]
GOOD = "A storm came. It was cold.\n\nHe waved. She smiled.\n\nA cat. The dog barked!\n\n" \
       "Rain fell. Nobody knew why?"


def writer(prompt: str, index: int, params: SamplingParams) -> str:
    if "coherency score" in prompt:
        return "Flows well.\nThus the coherency score is " + ("8" if "A storm came" in prompt
                                                              or "plan 0" in prompt else "3")
    if "Follow this plan" in prompt:
        return f"Passage:\n{GOOD}" if "plan 0" in prompt else "Just one paragraph."
    return f"Plan:\nplan {index}\n\nPassage:\nnot part of the plan"


def test_creative_writing_plan_then_passage() -> None:
    line = {"id": "cw", "sentences": SENTENCES, "input": " ".join(SENTENCES),
            "has_fragment": False, "search": {"breadth": 2, "max_new_tokens": 64}}
    generator = ScriptedGenerator(writer)
    result = solve(line, "creative_writing", generator)
    tree = result.tree
    assert [n.thought for n in tree.at_depth(1)] == ["plan 0", "plan 1"]
    assert tree.node("0.1").selected and not tree.node("0.2").selected
    assert tree.node("0.1.1").thought == GOOD
    assert result.answer == GOOD and result.correct is True
    assert tree.details["endings"] == [True] * 4 and tree.details["coherence"] == 8.0
    assert tree.nodes[-1].score == pytest.approx(7 / 9)
    assert [r.params.stop for r in generator.requests[:1]] == [("\nPassage:",)]
    assert result.metrics["phases"]["judge"]["groups"] == 1


def test_creative_writing_depth_one_writes_the_passage_as_the_solution() -> None:
    line = {"sentences": SENTENCES, "search": {"breadth": 2, "depth": 1}}
    generator = ScriptedGenerator(writer)
    result = solve(line, "creative_writing", generator)
    assert result.correct is True
    assert result.metrics["phases"]["solution"]["groups"] == 1
    assert re.search(r"Follow this plan:\nplan 0", generator.requests[2].prompts[0])
