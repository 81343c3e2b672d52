"""What a task plugin provides: input validation, prompts, output parsing and scoring.

A :class:`Task` validates a job line into a normalized ``input`` dict and binds it to a
:class:`Problem`, which the search asks for prompts and which parses what the model wrote.
Steps are plain strings; the state of a search node is the tuple of steps from the root.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.judging import ValueRule, format_choices
from seedq.reasoning.params import SearchParams

Steps = tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """One parsed thought: the normalized step, or the reason it cannot be used."""

    text: str | None
    failure: str | None = None
    terminal: bool = False  # the state ending with this step needs no further steps

    @classmethod
    def failed(cls, reason: str) -> Step:
        return cls(text=None, failure=reason)


@dataclass(frozen=True)
class Outcome:
    """The answer of a finished tree and how it scored against the task's check."""

    answer: str | None
    correct: bool | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JudgePrompt:
    """A final judgement of the answer (e.g. coherence), read with ``rule``."""

    prompt: str
    rule: ValueRule
    name: str = "judge_score"  # the key of the judged value in the tree's details


class Problem(ABC):
    """One bound task input. Methods receive ``steps``: the state being expanded/scored."""

    value_rule: ValueRule

    @abstractmethod
    def thought_prompt(self, steps: Steps) -> str: ...

    def thought_stop(self, steps: Steps) -> tuple[str, ...]:
        return ()

    def thought_tokens(self, steps: Steps, limit: int) -> int:
        """Token budget of the next thought given the job's ``max_new_tokens``."""
        return limit

    @abstractmethod
    def propose_prompt(self, steps: Steps, n: int) -> str: ...

    def split_proposals(self, text: str) -> list[str]:
        """One proposal per non-empty line, list markers removed."""
        return [line for line in (_strip_marker(x) for x in text.splitlines()) if line]

    @abstractmethod
    def parse_thought(self, steps: Steps, text: str) -> Step: ...

    @abstractmethod
    def value_prompt(self, steps: Steps, candidate: str) -> str: ...

    @abstractmethod
    def vote_prompt(self, steps: Steps, candidates: list[str]) -> str: ...

    def solution_prompt(self, steps: Steps) -> str | None:
        """Prompt for the final step from ``steps``; None when the state is the answer."""
        return None

    def solution_stop(self) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def outcome(self, steps: Steps, solution: str | None) -> Outcome: ...

    def judge_prompt(self, outcome: Outcome) -> JudgePrompt | None:
        """An extra judgement of the final answer (creative writing's coherence)."""
        return None


class Task(ABC):
    """A task plugin: its name, the job-line fields it reads and how it binds them."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]  # fields this task reads from a line
    ignored: ClassVar[tuple[str, ...]] = ()  # known metadata fields, accepted and dropped

    @abstractmethod
    def validate(self, line: Mapping[str, Any]) -> dict[str, Any]:
        """The normalized input of ``line``; raises :class:`JobSpecError` naming the field.
        Must accept its own output unchanged (specs are re-validated when loaded)."""

    def search_defaults(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Search parameters this task sets unless the line sets them."""
        return {}

    def check_search(self, data: Mapping[str, Any], params: SearchParams) -> None:
        """Reject parameter combinations this input cannot run with."""
        return None

    @abstractmethod
    def bind(self, data: Mapping[str, Any]) -> Problem: ...


def require_text(line: Mapping[str, Any], name: str) -> str:
    value = line.get(name)
    if value is None:
        raise JobSpecError(name, "missing")
    if not isinstance(value, str) or not value.strip():
        raise JobSpecError(name, "must be a non-empty string")
    return value


def optional_text(line: Mapping[str, Any], name: str) -> str | None:
    if line.get(name) is None:
        return None
    value = line[name]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise JobSpecError(name, "must be a string")
    return value


def text_list(line: Mapping[str, Any], name: str) -> list[str]:
    value = line.get(name)
    if not isinstance(value, list):
        raise JobSpecError(name, "must be a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise JobSpecError(f"{name}[{i}]", "must be a non-empty string")
    return list(value)


_MARKER = re.compile(r"^\s*(?:[-*•]|\(?\d+[.):]|step\s*\d+\s*[.:]|choice\s*\d+\s*[.:])\s*", re.I)


def _strip_marker(line: str) -> str:
    return _MARKER.sub("", line, count=1).strip()


def vote_instructions(kind: str) -> str:
    return (
        f"Analyze each choice in detail, then conclude in the last line "
        f'"The best choice is {{s}}", where s is the integer id of the best {kind}.'
    )


def choices_block(candidates: list[str]) -> str:
    return format_choices(candidates)
