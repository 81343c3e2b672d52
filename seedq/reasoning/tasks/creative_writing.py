"""Creative writing (Tree-of-Thoughts' text task): plan, then passage.

Step 1 writes a plan (generation stops at "\\nPassage:"), step 2 the passage of 4 short
paragraphs, which must end with the 4 given sentences in order. The constraint is checked
and reported (``correct`` = satisfied); coherence (1-10) is judged by the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.judging import ValueRule
from seedq.reasoning.tasks.base import (
    JudgePrompt,
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

# How the upstream data was split into sentences (see the shared SOURCES.md).
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]?\s+")
_COHERENCE = ValueRule(cue=r"score\s*(?:is|of|=)?\s*:?\s*", low=1.0, high=10.0)
_FORMAT = "Plan:\n<your plan>\n\nPassage:\n<your passage>"
_PREFIX = re.compile(r"^\s*\**\s*(?:plan|passage)\s*\**\s*:\s*\**", re.I)
_PASSAGE_ONLY = "Write the passage only: 4 paragraphs separated by blank lines."
_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'})


def split_sentences(text: str) -> list[str]:
    parts = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.start() + len(match.group(0).rstrip())
        parts.append(text[start:end].strip())
        start = match.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _norm(text: str) -> str:
    return " ".join(text.translate(_QUOTES).split()).lower()


def paragraphs_of(passage: str) -> list[str]:
    """Paragraphs split on blank lines; a passage of exactly 4 single-spaced lines counts
    as 4 paragraphs."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", passage.strip()) if p.strip()]
    lines = [line.strip() for line in passage.splitlines() if line.strip()]
    if len(paragraphs) != 4 and len(lines) == 4:
        return lines
    return paragraphs


def check_endings(passage: str, sentences: list[str]) -> dict[str, Any]:
    """Whether paragraph i ends with sentence i (whitespace, case and curly quotes ignored)."""
    paragraphs = paragraphs_of(passage)
    endings = [i < len(paragraphs) and _norm(paragraphs[i]).endswith(_norm(s))
               for i, s in enumerate(sentences)]
    return {
        "paragraphs": len(paragraphs),
        "endings": endings,
        "satisfied": len(paragraphs) == len(sentences) and all(endings),
    }


def _strip_prefix(text: str) -> str:
    return _PREFIX.sub("", text.strip(), count=1).strip()


@dataclass(frozen=True)
class CreativeWritingProblem(Problem):
    sentences: tuple[str, ...]
    text: str
    value_rule: ValueRule = _COHERENCE

    @property
    def instruction(self) -> str:
        return ("Write a coherent passage of 4 short paragraphs. The end sentence of each "
                f"paragraph must be: {self.text}")

    def thought_prompt(self, steps: Steps) -> str:
        if not steps:
            return f"{self.instruction}\n\nMake a plan, then write. Use this format:\n\n{_FORMAT}"
        return f"{self.instruction}\n\nFollow this plan:\n{steps[0]}\n\n{_PASSAGE_ONLY}"

    def thought_stop(self, steps: Steps) -> tuple[str, ...]:
        return ("\nPassage:",) if not steps else ()

    def propose_prompt(self, steps: Steps, n: int) -> str:
        if steps:  # a list of whole passages cannot be parsed reliably: one per prompt
            return self.thought_prompt(steps)
        return (f"{self.instruction}\n\nWrite {n} different short plans for this passage, "
                "one plan per line, numbered 1., 2., ...")

    def split_proposals(self, text: str) -> list[str]:
        if not re.search(r"(?m)^\s*\d+[.)]", text):
            return [text.strip()] if text.strip() else []
        return super().split_proposals(text)

    def parse_thought(self, steps: Steps, text: str) -> Step:
        if len(steps) >= 2:
            return Step.failed("the passage is already written")
        if not steps:
            plan = _strip_prefix(re.split(r"(?im)^\s*\**\s*passage\s*\**\s*:", text, maxsplit=1)[0])
            return Step(text=plan) if plan else Step.failed("empty plan")
        passage = _strip_prefix(text)
        return Step(text=passage, terminal=True) if passage else Step.failed("empty passage")

    def value_prompt(self, steps: Steps, candidate: str) -> str:
        kind = "plan for the passage" if not steps else "passage"
        return (f"{self.instruction}\n\nAnalyze the following {kind}, then conclude in the "
                'last line "Thus the coherency score is {s}", where s is an integer from 1 '
                f"to 10.\n\n{candidate}")

    def vote_prompt(self, steps: Steps, candidates: list[str]) -> str:
        kind = "plan" if not steps else "passage"
        return (f"Given an instruction and several choices, decide which choice is most "
                f"promising.\n\nInstruction: {self.instruction}\n\n{choices_block(candidates)}"
                f"\n\n{vote_instructions(kind)}")

    def solution_prompt(self, steps: Steps) -> str | None:
        if len(steps) >= 2:
            return None
        if steps:
            return self.thought_prompt(steps)
        return f"{self.instruction}\n\n{_PASSAGE_ONLY}"

    def outcome(self, steps: Steps, solution: str | None) -> Outcome:
        if solution is not None:
            passage = _strip_prefix(solution)
        else:
            passage = steps[1] if len(steps) >= 2 else ""
        check = check_endings(passage, list(self.sentences))
        details = {**check, "plan": steps[0] if steps else None}
        return Outcome(answer=passage or None, correct=check["satisfied"], details=details)

    def judge_prompt(self, outcome: Outcome) -> JudgePrompt | None:
        if not outcome.answer:
            return None
        return JudgePrompt(prompt=self.value_prompt(("plan",), outcome.answer), rule=_COHERENCE,
                           name="coherence")


class CreativeWritingTask(Task):
    name = "creative_writing"
    fields = ("sentences", "input")
    ignored = ("has_fragment",)

    def validate(self, line: Mapping[str, Any]) -> dict[str, Any]:
        if line.get("sentences") is not None:
            sentences = [s.strip() for s in text_list(line, "sentences")]
            field = "sentences"
        else:
            sentences = split_sentences(require_text(line, "input"))
            field = "input"
        if len(sentences) != 4:
            raise JobSpecError(field, f"needs exactly 4 sentences, found {len(sentences)}")
        text = line.get("input")
        if not isinstance(text, str) or not text.strip():
            text = " ".join(sentences)
        return {"sentences": sentences, "input": text.strip()}

    def search_defaults(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return {"depth": 2, "max_new_tokens": 512, "eval_max_new_tokens": 128}

    def bind(self, data: Mapping[str, Any]) -> CreativeWritingProblem:
        return CreativeWritingProblem(sentences=tuple(data["sentences"]), text=data["input"])
