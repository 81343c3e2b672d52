"""Blocksworld planning (RAP / llm-reasoners prompts): each thought is one action.

The simulator tracks the state, so a thought that is not an action or is illegal in the
current state is a recorded failed node. Success = a legal plan that reaches the goal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.judging import ValueRule
from seedq.reasoning.resources import load_json
from seedq.reasoning.tasks.base import (
    Outcome,
    Problem,
    Step,
    Steps,
    Task,
    choices_block,
    require_text,
    text_list,
    vote_instructions,
)
from seedq.reasoning.tasks.bw_world import (
    BlocksworldError,
    IllegalAction,
    State,
    apply,
    check_plan,
    find_action,
    legal_actions,
    parse_action,
    parse_pddl_atoms,
    parse_state,
    render_state,
    satisfies,
)

POOL_FILE = ("blocksworld", "pool_prompt_v1.json")
SHOTS = 4
THOUGHT_TOKENS = 40
_LINE_NOISE = re.compile(
    r"^\s*(?:\d+[.)]\s*|[-*]\s*|\[?action\]?\s*:?\s*|next action\s*:?\s*)+", re.I
)
_GOOD_BAD = ValueRule(labels=(("good", 1.0), ("bad", 0.0)))


def _statement(init: str, goal: str) -> str:
    return (f"[STATEMENT]\nAs initial conditions I have that, {init}.\n"
            f"My goal is to have that {goal}.\n\nMy plan is as follows:\n\n[PLAN]")


def _clean_line(text: str) -> str:
    for line in text.splitlines():
        cleaned = _LINE_NOISE.sub("", line).strip().strip("`\"'*").strip()
        if cleaned:
            return cleaned
    return ""


@dataclass(frozen=True)
class BlocksworldProblem(Problem):
    init_text: str
    goal_text: str
    init: State
    goal: State
    gold_plan: tuple[str, ...]
    gold_length: int | None
    value_rule: ValueRule = _GOOD_BAD

    def state_after(self, steps: Steps) -> State:
        state = self.init
        for step in steps:
            state = apply(state, parse_action(step))
        return state

    def _context(self, steps: Steps) -> str:
        pool = load_json(*POOL_FILE)
        shots = [ex for ex in pool["example_pool"]
                 if (ex["init"], ex["goal"]) != (self.init_text, self.goal_text)][:SHOTS]
        examples = "\n".join(_statement(ex["init"], ex["goal"]) + ex["plan"] for ex in shots)
        plan = "".join(f"\n{step}" for step in steps)
        return f"{pool['intro']}\n{examples}\n{_statement(self.init_text, self.goal_text)}{plan}\n"

    def _options(self, steps: Steps) -> str:
        state = self.state_after(steps)
        actions = "; ".join(a.to_nl() for a in legal_actions(state))
        return (f"\nThe current state is: {render_state(state)}.\n"
                f"The actions I can take now are: {actions}.\n")

    def thought_prompt(self, steps: Steps) -> str:
        return (self._context(steps) + self._options(steps)
                + "Write the next action of my plan as one line, in the same words, "
                  "and nothing else.")

    def thought_stop(self, steps: Steps) -> tuple[str, ...]:
        return ("[PLAN END]",)

    def thought_tokens(self, steps: Steps, limit: int) -> int:
        return min(limit, THOUGHT_TOKENS)

    def propose_prompt(self, steps: Steps, n: int) -> str:
        return (self._context(steps) + self._options(steps)
                + f"List the {n} most promising next actions, chosen from the actions I can "
                  "take now, one per line and nothing else.")

    def parse_thought(self, steps: Steps, text: str) -> Step:
        line = _clean_line(text)
        if not line:
            return Step.failed("empty output: no action")
        try:
            action = parse_action(line)
        except BlocksworldError as exc:
            found = find_action(text)  # the first line is chatter: the first action phrase
            if found is None:
                return Step.failed(f"{exc}; no action phrase in the output")
            action = found
        try:
            state = apply(self.state_after(steps), action)
        except IllegalAction as exc:
            return Step.failed(f"illegal action: {exc}")
        return Step(text=action.to_nl(), terminal=satisfies(state, self.goal))

    def value_prompt(self, steps: Steps, candidate: str) -> str:
        template: str = load_json(*POOL_FILE)["self-eval"]
        state = render_state(self.state_after(steps))
        return (template.replace("<init_state>", f"{state}.")
                .replace("<goals>", f"have that {self.goal_text}.")
                .replace("<action>", candidate))

    def vote_prompt(self, steps: Steps, candidates: list[str]) -> str:
        intro = load_json(*POOL_FILE)["intro"]
        state = render_state(self.state_after(steps))
        return (f"{intro}\n[STATEMENT]\nAs initial conditions I have that, {state}.\n"
                f"My goal is to have that {self.goal_text}.\n\n"
                f"Which next action brings me closest to the goal?\n\n"
                f"{choices_block(candidates)}\n\n{vote_instructions('action')}")

    def outcome(self, steps: Steps, solution: str | None) -> Outcome:
        check = check_plan(self.init, self.goal, steps)
        details: dict[str, Any] = {
            "plan": list(steps),
            "legal": check.legal,
            "reached_goal": check.reached_goal,
            "failed_step": check.failed_step,
            "reason": check.reason,
            "gold_plan": list(self.gold_plan),
            "gold_length": self.gold_length,
            "optimal": check.success and self.gold_length == len(steps),
        }
        return Outcome(answer="\n".join(steps), correct=check.success, details=details)


class BlocksworldTask(Task):
    name = "blocksworld"
    fields = ("init", "goal", "plan", "init_pddl", "goal_pddl", "plan_pddl", "num_steps")
    ignored = ("states", "instance_file", "num_blocks", "split_v1_test", "split_v1_index",
               "split_v2_test", "split_v2_index", "pool_v1", "pool_v2")

    def validate(self, line: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {"init": _facts(line, "init"), "goal": _facts(line, "goal")}
        plan = _plan(line)
        if plan is not None:
            data["plan"] = plan
        steps = line.get("num_steps")
        if steps is not None:
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
                raise JobSpecError("num_steps", "must be an integer >= 0")
            data["num_steps"] = steps
        return data

    def search_defaults(self, data: Mapping[str, Any]) -> dict[str, Any]:
        length = data.get("num_steps", len(data.get("plan", ())))
        return {"depth": min(max(length, 1), 32)} if length else {"depth": 6}

    def bind(self, data: Mapping[str, Any]) -> BlocksworldProblem:
        plan = tuple(data.get("plan", ()))
        return BlocksworldProblem(
            init_text=data["init"], goal_text=data["goal"],
            init=parse_state(data["init"]), goal=parse_state(data["goal"]),
            gold_plan=plan, gold_length=data.get("num_steps", len(plan) if plan else None),
        )


def _facts(line: Mapping[str, Any], name: str) -> str:
    """NL facts from ``name`` (NL text) or ``name_pddl`` (PDDL atoms), rendered canonically."""
    try:
        if line.get(name) is not None:
            return render_state(parse_state(require_text(line, name)))
        if line.get(f"{name}_pddl") is not None:
            atoms = text_list(line, f"{name}_pddl")
            return render_state(parse_pddl_atoms(atoms))
    except BlocksworldError as exc:
        field = name if line.get(name) is not None else f"{name}_pddl"
        raise JobSpecError(field, str(exc)) from exc
    raise JobSpecError(name, f"missing (give '{name}' or '{name}_pddl')")


def _plan(line: Mapping[str, Any]) -> list[str] | None:
    name = "plan" if line.get("plan") is not None else "plan_pddl"
    if line.get(name) is None:
        return None
    plan = []
    for i, action in enumerate(text_list(line, name)):
        try:
            plan.append(parse_action(action).to_nl())
        except BlocksworldError as exc:
            raise JobSpecError(f"{name}[{i}]", str(exc)) from exc
    return plan
