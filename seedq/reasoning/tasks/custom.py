"""A task whose job line brings its own prompt templates.

``templates`` maps template names to strings with named placeholders (``str.format``
syntax; ``{{``/``}}`` for literal braces). Unknown template names, unknown placeholders,
positional ``{}`` and attribute access are rejected up front, naming the field.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.judging import SURE_LIKELY_IMPOSSIBLE, ValueRule, format_choices
from seedq.reasoning.params import SearchParams
from seedq.reasoning.tasks.base import (
    Outcome,
    Problem,
    Step,
    Steps,
    Task,
    optional_text,
    require_text,
    vote_instructions,
)
from seedq.reasoning.tasks.gsm8k import extract_answer, normalize_number

PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "thought": ("input", "state", "step"),
    "propose": ("input", "state", "step", "n"),
    "evaluation": ("input", "state", "candidate", "step"),
    "vote": ("input", "state", "candidates", "step"),
    "solution": ("input", "state"),
}
REQUIRED = ("thought", "evaluation")
DEFAULT_VOTE = ("{input}\n\nSteps so far:\n{state}\n\nWhich next step is best?\n\n{candidates}"
                "\n\n" + vote_instructions("choice").replace("{", "{{").replace("}", "}}"))
DEFAULT_SCALE = (0.0, 10.0)


def check_template(name: str, template: Any) -> str:
    """``template`` if every placeholder is allowed for ``name``, else JobSpecError."""
    field = f"templates.{name}"
    if not isinstance(template, str) or not template.strip():
        raise JobSpecError(field, "must be a non-empty string")
    allowed = PLACEHOLDERS[name]
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise JobSpecError(field, f"malformed template: {exc}") from exc
    for _, placeholder, spec, _ in parsed:
        if placeholder is None:
            continue
        if spec and "{" in spec:
            raise JobSpecError(field, f"nested placeholder in {{{placeholder}:{spec}}}")
        if placeholder not in allowed:
            shown = ", ".join(f"{{{p}}}" for p in allowed)
            raise JobSpecError(field, f"unknown placeholder {{{placeholder}}} (allowed: {shown})")
    return template


def _render(template: str, **values: Any) -> str:
    return template.format(**values)


@dataclass(frozen=True)
class CustomProblem(Problem):
    text: str
    templates: Mapping[str, str]
    gold: str | None
    stop: tuple[str, ...]
    value_rule: ValueRule

    def _state(self, steps: Steps) -> str:
        return "\n".join(steps)

    def thought_prompt(self, steps: Steps) -> str:
        return _render(self.templates["thought"], input=self.text, state=self._state(steps),
                       step=len(steps) + 1)

    def thought_stop(self, steps: Steps) -> tuple[str, ...]:
        return self.stop

    def propose_prompt(self, steps: Steps, n: int) -> str:
        return _render(self.templates["propose"], input=self.text, state=self._state(steps),
                       step=len(steps) + 1, n=n)

    def parse_thought(self, steps: Steps, text: str) -> Step:
        cleaned = text.strip()
        return Step(text=cleaned) if cleaned else Step.failed("empty output")

    def value_prompt(self, steps: Steps, candidate: str) -> str:
        return _render(self.templates["evaluation"], input=self.text,
                       state=self._state((*steps, candidate)), candidate=candidate,
                       step=len(steps) + 1)

    def vote_prompt(self, steps: Steps, candidates: list[str]) -> str:
        template = self.templates.get("vote", DEFAULT_VOTE)
        return _render(template, input=self.text, state=self._state(steps),
                       candidates=format_choices(candidates), step=len(steps) + 1)

    def solution_prompt(self, steps: Steps) -> str | None:
        if "solution" not in self.templates:
            return None
        return _render(self.templates["solution"], input=self.text, state=self._state(steps))

    def outcome(self, steps: Steps, solution: str | None) -> Outcome:
        answer = (solution if solution is not None else (steps[-1] if steps else "")).strip()
        return Outcome(answer=answer or None, correct=matches_gold(answer, self.gold),
                       details={"gold": self.gold})


def matches_gold(answer: str, gold: str | None) -> bool | None:
    """None without gold; numeric gold: the answer's final number equals it; text gold: the
    answer ends with it (case, spacing and trailing punctuation ignored)."""
    if gold is None:
        return None
    number = normalize_number(gold)
    if number is not None:
        return extract_answer(answer) == number
    norm_gold = " ".join(gold.lower().split()).rstrip(".!?")
    norm_answer = " ".join(answer.lower().split()).rstrip(".!? ")
    return re.search(rf"(?:^|\W){re.escape(norm_gold)}$", norm_answer) is not None


class CustomTask(Task):
    name = "custom"
    fields = ("input", "templates", "answer", "value_scale", "stop")

    def validate(self, line: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {"input": require_text(line, "input"),
                                "templates": _templates(line.get("templates"))}
        gold = optional_text(line, "answer")
        if gold is not None:
            data["answer"] = gold
        data["value_scale"] = _scale(line.get("value_scale"))
        data["stop"] = _stops(line.get("stop"))
        return data

    def check_search(self, data: Mapping[str, Any], params: SearchParams) -> None:
        if params.generator == "propose" and "propose" not in data["templates"]:
            raise JobSpecError("templates.propose", "required with generator 'propose'")

    def bind(self, data: Mapping[str, Any]) -> CustomProblem:
        low, high = data["value_scale"]
        rule = ValueRule(labels=SURE_LIKELY_IMPOSSIBLE, low=low, high=high)
        return CustomProblem(text=data["input"], templates=dict(data["templates"]),
                             gold=data.get("answer"), stop=tuple(data["stop"]), value_rule=rule)


def _templates(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise JobSpecError("templates", "missing or not an object of template strings")
    for name in value:
        if name not in PLACEHOLDERS:
            raise JobSpecError(f"templates.{name}",
                               f"unknown template (known: {', '.join(PLACEHOLDERS)})")
    for name in REQUIRED:
        if name not in value:
            raise JobSpecError(f"templates.{name}", "missing")
    return {name: check_template(name, template) for name, template in value.items()}


def _scale(value: Any) -> list[float]:
    if value is None:
        return list(DEFAULT_SCALE)
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or value[0] >= value[1]):
        raise JobSpecError("value_scale", "must be [low, high] numbers with low < high")
    return [float(value[0]), float(value[1])]


def _stops(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise JobSpecError("stop", "must be a list of non-empty strings")
    return list(value)
