"""GSM8K math word problems, solved by sub-questions as in the SeeD and RAP papers.

Each thought is one step "Question 1.k: <sub-question>\\nAnswer 1.k: <answer>". A step
whose answer says "The answer is N" ends the chain; otherwise a final solution step asks for
it. The final number is compared with the gold ``answer`` numerically.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.judging import SURE_LIKELY_IMPOSSIBLE, ValueRule
from seedq.reasoning.resources import load_json
from seedq.reasoning.tasks.base import (
    Outcome,
    Problem,
    Step,
    Steps,
    Task,
    choices_block,
    optional_text,
    require_text,
    vote_instructions,
)

FEWSHOT_FILE = ("gsm8k", "fewshot_subquestions.json")
_NUM = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+"
_ANSWER_IS = re.compile(rf"answer\s+is\s*:?\s*\**\s*\$?\s*({_NUM})", re.I)
_HASHES = re.compile(rf"####\s*\$?\s*({_NUM})")
_BOXED = re.compile(rf"\\boxed\{{\s*\$?\s*({_NUM})")
_ANY_NUMBER = re.compile(_NUM)
_STEP_LABEL = re.compile(r"(?:question|answer)\s*\d+\.\d+", re.I)
_SURE_LIKELY_IMPOSSIBLE = ValueRule(labels=SURE_LIKELY_IMPOSSIBLE)
_STEP = re.compile(
    r"question(?:\s*\d+\.\d+)?\s*:\s*(?P<q>.+?)\s*answer(?:\s*\d+\.\d+)?\s*:\s*(?P<a>.+)",
    re.I | re.S,
)
_PROPOSAL_START = re.compile(r"(?im)^\s*(?:\d+[.)]\s*)?(?=question\s*\d+\.\d+)")
INSTRUCTIONS = (
    "Answer the math question by breaking it into sub-questions. Each step asks one "
    "sub-question and answers it, written as\nQuestion 1.k: <sub-question>\n"
    "Answer 1.k: <answer>\nThe last sub-question asks the original question, and its "
    'answer ends with "The answer is N." where N is a number.'
)


def normalize_number(text: str) -> str | None:
    """"$1,234.50" -> "1234.5", "18.00" -> "18"; None when ``text`` is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The final number of a solution: the last "The answer is N", else "#### N", else
    "\\boxed{N}", else the last number in the text."""
    for pattern in (_ANSWER_IS, _HASHES, _BOXED):
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1])
    numbers = _ANY_NUMBER.findall(_STEP_LABEL.sub(" ", text))  # "Question 1.3" is no answer
    return normalize_number(numbers[-1]) if numbers else None


def _example(example: Mapping[str, Any]) -> str:
    lines = [f"Question 1: {example['question']}"]
    for k, step in enumerate(example["steps"], 1):
        lines += [f"Question 1.{k}: {step['question']}", f"Answer 1.{k}: {step['answer']}"]
    return "\n".join(lines)


@dataclass(frozen=True)
class Gsm8kProblem(Problem):
    question: str
    gold: str | None
    value_rule: ValueRule = _SURE_LIKELY_IMPOSSIBLE

    def _context(self, steps: Steps) -> str:
        examples = "\n\n".join(_example(e) for e in load_json(*FEWSHOT_FILE)["examples"])
        body = "\n".join((f"Question 1: {self.question}", *steps))
        return f"{INSTRUCTIONS}\n\n{examples}\n\n{body}\n"

    def thought_prompt(self, steps: Steps) -> str:
        k = len(steps) + 1
        return self._context(steps) + (
            f"\nWrite only the next step: Question 1.{k} and Answer 1.{k}."
        )

    def thought_stop(self, steps: Steps) -> tuple[str, ...]:
        return ("\nQuestion 1.",)

    def propose_prompt(self, steps: Steps, n: int) -> str:
        k = len(steps) + 1
        return self._context(steps) + (
            f"\nWrite {n} different possible next steps. Each one is a Question 1.{k} line "
            f"followed by its Answer 1.{k} line."
        )

    def split_proposals(self, text: str) -> list[str]:
        return [p.strip() for p in _PROPOSAL_START.split(text) if p.strip()]

    def parse_thought(self, steps: Steps, text: str) -> Step:
        match = _STEP.search(text)
        if not match:
            return Step.failed("no 'Question 1.k: ... Answer 1.k: ...' step in the output")
        question = " ".join(match["q"].split())
        answer = " ".join(re.split(r"\n\s*\n", match["a"].strip(), maxsplit=1)[0].split())
        if not question or not answer:
            return Step.failed("empty sub-question or answer")
        if any(f": {question}\n" in step for step in steps):
            return Step.failed(f"repeats an earlier sub-question: {question!r}")
        k = len(steps) + 1
        terminal = _ANSWER_IS.search(answer) is not None
        return Step(text=f"Question 1.{k}: {question}\nAnswer 1.{k}: {answer}", terminal=terminal)

    def value_prompt(self, steps: Steps, candidate: str) -> str:
        done = "\n".join(steps) if steps else "(none)"
        return (
            f"Question: {self.question}\n\nSteps so far:\n{done}\n\nNew step:\n{candidate}\n\n"
            "Is the new step correct and useful for answering the question? Check its "
            "arithmetic, then end with one word: sure (correct and useful), likely "
            "(probably fine) or impossible (wrong or useless)."
        )

    def vote_prompt(self, steps: Steps, candidates: list[str]) -> str:
        done = "\n".join(steps) if steps else "(none)"
        return (
            f"Question: {self.question}\n\nSteps so far:\n{done}\n\n"
            f"Which next step is the most correct and useful?\n\n{choices_block(candidates)}"
            f"\n\n{vote_instructions('step')}"
        )

    def solution_prompt(self, steps: Steps) -> str | None:
        if steps and _ANSWER_IS.search(steps[-1]):
            return None
        return self._context(steps) + (
            '\nNow answer Question 1. Explain briefly and end with "The answer is N." '
            "where N is a number."
        )

    def outcome(self, steps: Steps, solution: str | None) -> Outcome:
        source = "solution" if solution is not None else "last step"
        text = solution if solution is not None else (steps[-1] if steps else "")
        answer = extract_answer(text)
        correct = None if self.gold is None else answer is not None and Decimal(answer) == Decimal(
            self.gold
        )
        details = {"gold": self.gold, "answer_from": source, "parsed": answer is not None}
        return Outcome(answer=answer, correct=correct, details=details)


class Gsm8kTask(Task):
    name = "gsm8k"
    fields = ("question", "answer")
    ignored = ("solution", "answer_raw")

    def validate(self, line: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {"question": require_text(line, "question").strip()}
        gold = optional_text(line, "answer")
        if gold is not None:
            marker = gold.rsplit("####", 1)
            number = normalize_number(marker[-1])
            if number is None:
                raise JobSpecError("answer", f"gold answer is not a number: {gold!r}")
            data["answer"] = number
        return data

    def bind(self, data: Mapping[str, Any]) -> Gsm8kProblem:
        return Gsm8kProblem(question=data["question"], gold=data.get("answer"))
