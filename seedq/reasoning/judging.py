"""Reading a model's judgement: values (numbers or words) and votes, with explicit rules.

Value rules (:meth:`ValueRule.parse`), in order:

1. With a ``cue`` (a regex such as ``score is``), only the text after the cue's *last* match
   counts, and its first token must be a label word or a number inside the scale; a missing
   cue or anything else there is unparsable.
2. Without a cue, labels are read per line, from the last line up: the first line whose
   first or last word is a label word gives that label ("sure", "Likely.", "**impossible**",
   "The step is right: sure"). A label inside a sentence ("make sure to") does not count.
3. Without a label word and with a numeric scale, a first line that is just a number
   (``7``, ``7/10``, ``7.5.``) is read.
4. Everything else is unparsable: ``None``. Callers record it, never crash.

Numbers map linearly from ``[low, high]`` to ``[0, 1]``; labels map to their own value.
A vote (:func:`parse_vote`) is the last ``best choice is N`` (``choice`` and ``#`` optional),
or an answer that is just ``N``; N must be within 1..n, else the vote is unparsable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_TOKEN = re.compile(rf"({_NUMBER})|([a-z]+)")
_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
_BARE_NUMBER = re.compile(rf"^\s*\**\s*({_NUMBER})\s*(?:/\s*\d+)?\s*\**\s*\.?\s*$")
_VOTE = re.compile(r"best\s+choice\s+is\s*:?\s*(?:choice\s*)?#?\s*(\d+)", re.IGNORECASE)
_BARE_VOTE = re.compile(r"^\s*(?:choice\s*)?#?\s*(\d+)\s*\.?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ValueRule:
    """How a value judgement is read. See the module docstring for the rules."""

    labels: tuple[tuple[str, float], ...] = ()
    low: float | None = None
    high: float | None = None
    cue: str | None = None

    def __post_init__(self) -> None:
        if (self.low is None) != (self.high is None):
            raise ValueError("a numeric scale needs both low and high")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError("scale low must be below high")
        if not self.labels and self.low is None:
            raise ValueError("a value rule needs labels or a numeric scale")

    @property
    def numeric(self) -> bool:
        return self.low is not None

    def describe(self) -> str:
        parts = [f"'{word}'" for word, _ in self.labels]
        if self.numeric:
            parts.append(f"a number from {self.low:g} to {self.high:g}")
        return " or ".join(parts)

    def parse(self, text: str) -> float | None:
        lowered = text.lower()
        if self.cue is not None:
            matches = list(re.finditer(self.cue, lowered))
            if not matches:
                return None
            token = _TOKEN.search(lowered[matches[-1].end():])
            return self._token_value(token) if token else None
        labels = dict(self.labels)
        for line in reversed(lowered.splitlines()):
            words = _WORD.findall(line)
            for word in (words[-1:] + words[:1]) if words else ():
                if word in labels:
                    return labels[word]
        if self.numeric:
            first_line = lowered.strip().split("\n", 1)[0]
            bare = _BARE_NUMBER.match(first_line)
            if bare:
                return self._number_value(float(bare.group(1)))
        return None

    def _token_value(self, token: re.Match[str]) -> float | None:
        if token.group(1) is not None:
            return self._number_value(float(token.group(1))) if self.numeric else None
        return dict(self.labels).get(token.group(2))

    def _number_value(self, value: float) -> float | None:
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return None
        return (value - self.low) / (self.high - self.low)

    def raw_value(self, score: float) -> float:
        """Back from [0, 1] to the rule's numeric scale (e.g. a 1-10 coherence score)."""
        if self.low is None or self.high is None:
            return score
        return self.low + score * (self.high - self.low)


SURE_LIKELY_IMPOSSIBLE = (("sure", 1.0), ("likely", 0.5), ("impossible", 0.0))


def parse_vote(text: str, n: int) -> int | None:
    """The 0-based index of the candidate a vote names, or None when unparsable."""
    matches = list(_VOTE.finditer(text))
    if matches:
        choice = int(matches[-1].group(1))
    else:
        bare = _BARE_VOTE.match(text.strip().split("\n", 1)[0]) if text.strip() else None
        if not bare:
            return None
        choice = int(bare.group(1))
    return choice - 1 if 1 <= choice <= n else None


def format_choices(candidates: list[str]) -> str:
    """Candidates numbered as a vote prompt shows them: ``Choice 1:\\n...``."""
    return "\n\n".join(f"Choice {i}:\n{text}" for i, text in enumerate(candidates, 1))
