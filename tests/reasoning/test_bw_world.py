"""The Blocksworld simulator on every gold plan of the shared data set, and on broken plans."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest

from seedq.reasoning.tasks.bw_world import (
    Action,
    BlocksworldError,
    IllegalAction,
    apply,
    check_plan,
    legal_actions,
    parse_action,
    parse_pddl_atoms,
    parse_state,
    render_state,
)
from tests.reasoning.scripted import SHARED_DATA

BW_FILE = SHARED_DATA / "blocksworld.jsonl"
needs_data = pytest.mark.skipif(not BW_FILE.is_file(), reason="shared data not present")


@cache
def instances() -> list[dict[str, Any]]:
    with BW_FILE.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@needs_data
def test_all_602_gold_plans_are_legal_and_reach_the_goal() -> None:
    rows = instances()
    assert len(rows) == 602
    for row in rows:
        init, goal = parse_state(row["init"]), parse_state(row["goal"])
        nl = check_plan(init, goal, row["plan"])
        assert nl.success, (row["id"], nl.reason)
        pddl = check_plan(parse_pddl_atoms(row["init_pddl"]), parse_pddl_atoms(row["goal_pddl"]),
                          row["plan_pddl"])
        assert pddl.success, (row["id"], pddl.reason)
        assert nl.final_state == pddl.final_state


@needs_data
def test_nl_and_pddl_agree_and_render_exactly_as_upstream() -> None:
    for row in instances():
        init = parse_pddl_atoms(row["init_pddl"])
        assert parse_state(row["init"]) == init
        assert parse_state(row["goal"]) == parse_pddl_atoms(row["goal_pddl"])
        assert render_state(init) == row["init"]
        assert render_state(parse_pddl_atoms(row["goal_pddl"])) == row["goal"]
        assert [parse_action(a).to_pddl() for a in row["plan"]] == row["plan_pddl"]
        assert [parse_action(a).to_nl() for a in row["plan_pddl"]] == row["plan"]


@needs_data
def test_states_after_every_second_action_match_the_data() -> None:
    for row in instances():
        state, seen = parse_state(row["init"]), []
        for i, action in enumerate(row["plan"]):
            state = apply(state, parse_action(action))
            if i % 2 == 1:
                seen.append(render_state(state))
        assert seen == row["states"], row["id"]


@needs_data
def test_swapped_first_actions_are_rejected_with_the_reason() -> None:
    for row in instances():
        plan = [row["plan"][1], row["plan"][0], *row["plan"][2:]]
        check = check_plan(parse_state(row["init"]), parse_state(row["goal"]), plan)
        assert not check.legal and check.failed_step == 0, row["id"]
        assert "the hand is not holding" in str(check.reason)


@needs_data
def test_truncated_plans_are_legal_but_miss_the_goal() -> None:
    for row in instances():
        check = check_plan(parse_state(row["init"]), parse_state(row["goal"]), row["plan"][:-1])
        assert check.legal and not check.reached_goal and not check.success, row["id"]
        assert check.reason == "the goal is not reached"


@needs_data
def test_dropping_the_first_action_breaks_every_plan() -> None:
    for row in instances():
        check = check_plan(parse_state(row["init"]), parse_state(row["goal"]), row["plan"][1:])
        assert not check.success, row["id"]
        if not check.legal:
            assert check.reason and check.reason.startswith("cannot ")


INIT = ("the red block is clear, the yellow block is clear, the hand is empty, the red block is "
        "on top of the blue block, the yellow block is on top of the orange block, the blue "
        "block is on the table and the orange block is on the table")


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("pick up the blue block", "the blue block is not clear"),
        ("pick up the red block", "the red block is not on the table"),
        ("put down the red block", "the hand is not holding the red block"),
        ("stack the red block on top of the yellow block", "the hand is not holding the red"),
        ("unstack the red block from on top of the orange block",
         "the red block is not on top of the orange block"),
        ("unstack the blue block from on top of the red block",
         "the blue block is not on top of the red block"),
        ("pick up the white block", "there is no white block"),
    ],
)
def test_illegal_actions_name_the_failed_condition(action: str, reason: str) -> None:
    with pytest.raises(IllegalAction, match=reason):
        apply(parse_state(INIT), parse_action(action))


def test_hand_must_be_empty_to_pick_up() -> None:
    unstack = parse_action("unstack the red block from on top of the blue block")
    state = apply(parse_state(INIT), unstack)
    with pytest.raises(IllegalAction, match="the hand is not empty"):
        apply(state, parse_action("unstack the yellow block from on top of the orange block"))
    assert "the hand is holding the red block" in render_state(state)
    assert parse_state(render_state(state)) == state


def test_corrupted_plan_reports_the_failing_step() -> None:
    goal = parse_state("the orange block is on top of the red block")
    plan = ["unstack the yellow block from on top of the orange block", "put down the yellow block",
            "pick up the orange block", "stack the orange block on top of the red block"]
    assert check_plan(parse_state(INIT), goal, plan).success
    broken = [*plan[:2], "pick up the blue block", *plan[3:]]
    check = check_plan(parse_state(INIT), goal, broken)
    assert not check.legal and not check.success and check.failed_step == 2
    assert check.reason == "cannot pick up the blue block: the blue block is not clear"


def test_unparsable_action_in_a_plan_is_reported() -> None:
    check = check_plan(parse_state(INIT), parse_state("the hand is empty"), ["fly the red block"])
    assert not check.legal and check.failed_step == 0
    assert "not a Blocksworld action" in str(check.reason)


def test_parsers_accept_variants_and_reject_garbage() -> None:
    assert parse_action("Pick up the Red block.") == Action("pick-up", ("red",))
    assert parse_action("(stack a b)") == Action("stack", ("red", "blue"))
    assert parse_state("I have that, the hand is empty, and the red block is clear.") == {
        ("handempty",), ("clear", "red")}
    assert parse_state("the blue block is in the hand") == {("holding", "blue")}
    with pytest.raises(BlocksworldError, match="takes 2 block"):
        parse_action("(stack a)")
    with pytest.raises(BlocksworldError, match="not a Blocksworld fact"):
        parse_state("the red block is happy")
    with pytest.raises(BlocksworldError, match="empty state"):
        parse_state(" . ")
    with pytest.raises(BlocksworldError, match="not a PDDL atom"):
        parse_pddl_atoms(["on a b"])


def test_legal_actions_are_exactly_the_applicable_ones() -> None:
    legal = {a.to_nl() for a in legal_actions(parse_state(INIT))}
    assert legal == {"unstack the red block from on top of the blue block",
                     "unstack the yellow block from on top of the orange block"}
