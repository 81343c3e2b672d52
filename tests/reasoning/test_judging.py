"""Reading value judgements and votes from model output."""

from __future__ import annotations

import pytest

from seedq.reasoning.judging import SURE_LIKELY_IMPOSSIBLE, ValueRule, parse_vote

LABELS = ValueRule(labels=SURE_LIKELY_IMPOSSIBLE)
SCORE = ValueRule(cue=r"score\s*(?:is|of|=)?\s*:?\s*", low=1.0, high=10.0)
NUMERIC = ValueRule(labels=SURE_LIKELY_IMPOSSIBLE, low=0.0, high=10.0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The step is correct. sure", 1.0),
        ("It might be impossible at first, but on reflection: likely", 0.5),
        ("IMPOSSIBLE.", 0.0),
        ("Surely this works", None),  # whole words only
        ("I'm glad. I'll make sure to be more helpful.", None),  # inside a sentence
        ("Sure, the arithmetic is right.\nSo the step helps a lot", 1.0),  # first word
        ("**Likely**\n\nBecause 16 - 3 - 4 = 9.", 0.5),  # the last line with a label
        ("no judgement at all", None),
        ("", None),
    ],
)
def test_labels(text: str, value: float | None) -> None:
    assert LABELS.parse(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Nice flow.\nThus the coherency score is 10", 1.0),
        ("Thus the coherency score is 1.", 0.0),
        ("Score: 4/10", 1 / 3),
        ("The score is 7 but later the score is 4", 1 / 3),  # the last cue counts
        ("Thus the coherency score is 11", None),  # outside the scale
        ("Thus the coherency score is high", None),
        ("I rate it 7", None),  # the cue is required
    ],
)
def test_cue_and_scale(text: str, value: float | None) -> None:
    parsed = SCORE.parse(text)
    assert parsed == pytest.approx(value) if value is not None else parsed is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("7", 0.7), ("**8/10**", 0.8), ("3.\nbecause ...", 0.3), ("likely 9", 0.5),
     ("it is about 7 or so", None), ("12", None)],
)
def test_bare_numbers(text: str, value: float | None) -> None:
    parsed = NUMERIC.parse(text)
    assert parsed == pytest.approx(value) if value is not None else parsed is None


def test_raw_value_maps_back_to_the_scale() -> None:
    assert SCORE.raw_value(1.0) == 10.0
    assert SCORE.raw_value(0.0) == 1.0
    assert LABELS.raw_value(0.5) == 0.5


def test_rules_must_be_well_formed() -> None:
    with pytest.raises(ValueError, match="labels or a numeric scale"):
        ValueRule()
    with pytest.raises(ValueError, match="both low and high"):
        ValueRule(low=1.0)
    with pytest.raises(ValueError, match="below high"):
        ValueRule(low=2.0, high=1.0)


@pytest.mark.parametrize(
    ("text", "n", "index"),
    [
        ("Choice 1 is weak... The best choice is 2", 3, 1),
        ("The best choice is choice 3.", 3, 2),
        ("the best choice is #1; no wait, the best choice is 2", 2, 1),
        ("2", 3, 1),
        ("The best choice is 4", 3, None),  # out of range
        ("The best choice is 0", 3, None),
        ("I like the second one", 3, None),
        ("", 3, None),
    ],
)
def test_votes(text: str, n: int, index: int | None) -> None:
    assert parse_vote(text, n) == index
