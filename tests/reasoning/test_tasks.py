"""Each task's prompts, parsers and scoring, on hand-written model outputs."""

from __future__ import annotations

import json

import pytest

from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.tasks import get_task
from seedq.reasoning.tasks.blocksworld import BlocksworldProblem
from seedq.reasoning.tasks.creative_writing import (
    CreativeWritingProblem,
    check_endings,
    split_sentences,
)
from seedq.reasoning.tasks.custom import CustomProblem, check_template, matches_gold
from seedq.reasoning.tasks.gsm8k import Gsm8kProblem, extract_answer, normalize_number
from tests.reasoning.scripted import SHARED_DATA

# ---------------------------------------------------------------- gsm8k


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("She makes 9 * 2 = $18 every day. The answer is 18.", "18"),
        ("The answer is $1,234.", "1234"),
        ("The answer is: 2,125", "2125"),
        ("The answer is 3.50 dollars", "3.5"),
        ("The answer is 18.00.", "18"),
        ("The answer is -4", "-4"),
        ("So 5 + 5 = 10\n#### 10", "10"),
        ("\\boxed{42}", "42"),
        ("First 3, then 7, so 21 in total", "21"),
        ("The answer is 5. Wait, the answer is 6.", "6"),
        ("no number here", None),
        ("Answer 1.2: she has 12 eggs left.\nQuestion 1.3", "12"),
        ("Question 1.1: how many?", None),
    ],
)
def test_gsm8k_answer_extraction(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


def test_normalize_number() -> None:
    assert normalize_number("$2,125") == "2125"
    assert normalize_number("0.50") == "0.5"
    assert normalize_number("abc") is None
    assert normalize_number("nan") is None


def gsm8k_problem(gold: str | None = "18") -> Gsm8kProblem:
    return Gsm8kProblem(question="Janet's ducks lay 16 eggs ...", gold=gold)


def test_gsm8k_step_parsing() -> None:
    problem = gsm8k_problem()
    step = problem.parse_thought((), "Question 1.1: How many eggs are left?\nAnswer 1.1: 16 - 3"
                                     " - 4 = 9 eggs.\n\nSome chatter afterwards")
    assert step.text == "Question 1.1: How many eggs are left?\nAnswer 1.1: 16 - 3 - 4 = 9 eggs."
    assert not step.terminal and step.failure is None
    # renumbered to the right depth, terminal when it states the answer
    last = problem.parse_thought((step.text,), "Question 1.7: How much does she make?\n"
                                               "Answer 1.7: 9 * 2 = 18. The answer is 18.")
    assert last.text is not None and last.text.startswith("Question 1.2: How much")
    assert last.terminal
    repeat = problem.parse_thought((step.text,), step.text)
    assert repeat.failure is not None and "repeats" in repeat.failure
    garbage = problem.parse_thought((), "I think the ducks are happy.")
    assert garbage.text is None and garbage.failure is not None


def test_gsm8k_outcome_and_solution_step() -> None:
    problem = gsm8k_problem()
    done = ("Question 1.1: What?\nAnswer 1.1: The answer is 18.",)
    assert problem.solution_prompt(done) is None
    assert problem.outcome(done, None).correct is True
    assert problem.solution_prompt(("Question 1.1: a\nAnswer 1.1: 9",)) is not None
    wrong = problem.outcome((), "The answer is $17.")
    assert wrong.answer == "17" and wrong.correct is False
    assert problem.outcome((), "no idea").correct is False
    assert gsm8k_problem(None).outcome((), "The answer is 3").correct is None


def test_gsm8k_prompts_and_proposals() -> None:
    problem = gsm8k_problem()
    prompt = problem.thought_prompt(("Question 1.1: a\nAnswer 1.1: 9",))
    assert "Question 1: Janet" in prompt and "Question 1.2 and Answer 1.2" in prompt
    assert "Natalia" in prompt  # few-shot examples from the train split
    assert problem.thought_stop(()) == ("\nQuestion 1.",)
    pieces = problem.split_proposals("1. Question 1.1: a?\nAnswer 1.1: 1.\n2. Question 1.1: "
                                     "b?\nAnswer 1.1: 2.")
    assert len(pieces) == 2 and pieces[1].startswith("Question 1.1: b?")
    assert "sure" in problem.value_prompt((), "x") and "best choice" in problem.vote_prompt(
        (), ["x", "y"])


def test_gsm8k_gold_forms() -> None:
    task = get_task("gsm8k")
    assert task.validate({"question": "q", "answer": "2,125"})["answer"] == "2125"
    assert task.validate({"question": "q", "answer": "blah\n#### 1,000"})["answer"] == "1000"
    assert task.validate({"question": "q", "answer": 7})["answer"] == "7"
    assert "answer" not in task.validate({"question": "q"})
    with pytest.raises(JobSpecError, match="answer: gold answer is not a number"):
        task.validate({"question": "q", "answer": "eighteen"})


# ---------------------------------------------------------------- creative writing

SENTENCES = ["It was cold.", "She smiled.", "The dog barked!", "Nobody knew why?"]


def cw_problem() -> CreativeWritingProblem:
    return CreativeWritingProblem(sentences=tuple(SENTENCES), text=" ".join(SENTENCES))


def test_creative_writing_constraint_check() -> None:
    good = "Winter came. It was cold.\n\nHe waved. She smiled.\n\nA cat ran. The dog barked!" \
           "\n\nIt rained. Nobody knew why?"
    assert check_endings(good, SENTENCES) == {"paragraphs": 4, "endings": [True] * 4,
                                              "satisfied": True}
    lines = good.replace("\n\n", "\n")  # 4 single-spaced lines count as 4 paragraphs
    assert check_endings(lines, SENTENCES)["satisfied"]
    swapped = good.replace("She smiled.", "X.").replace("It was cold.", "She smiled.")
    result = check_endings(swapped, SENTENCES)
    assert result["endings"] == [False, False, True, True] and not result["satisfied"]
    assert check_endings("One paragraph. It was cold.", SENTENCES)["paragraphs"] == 1
    quoted = ["It isn't cold.", *SENTENCES[1:]]
    curly = good.replace("It was cold.", "It isn’t COLD.").replace("She smiled.", "She\n smiled.")
    assert check_endings(curly, quoted)["satisfied"]


def test_creative_writing_steps() -> None:
    problem = cw_problem()
    assert problem.thought_stop(()) == ("\nPassage:",)
    plan = problem.parse_thought((), "Plan:\n1. cold 2. smile\n\nPassage:\nshould be cut")
    assert plan.text == "1. cold 2. smile" and not plan.terminal
    passage = problem.parse_thought(("p",), "Passage:\nA. It was cold.")
    assert passage.text == "A. It was cold." and passage.terminal
    assert problem.parse_thought((), "Plan:\n").failure == "empty plan"
    assert problem.parse_thought(("p", "x"), "more").failure is not None
    assert "Follow this plan:\np" in problem.thought_prompt(("p",))
    assert problem.solution_prompt(("p", "passage")) is None
    assert problem.solution_prompt(("p",)) is not None
    outcome = problem.outcome(("plan", "It was cold."), None)
    assert outcome.correct is False and outcome.details["plan"] == "plan"
    judge = problem.judge_prompt(outcome)
    assert judge is not None and judge.name == "coherence"
    assert judge.rule.parse("Thus the coherency score is 10") == 1.0


def test_creative_writing_input_forms() -> None:
    task = get_task("creative_writing")
    data = task.validate({"input": " ".join(SENTENCES)})
    assert data["sentences"] == SENTENCES
    with pytest.raises(JobSpecError, match="input: needs exactly 4 sentences, found 2"):
        task.validate({"input": "One. Two."})
    with pytest.raises(JobSpecError, match="sentences: needs exactly 4"):
        task.validate({"sentences": ["a."]})
    with pytest.raises(JobSpecError, match=r"sentences\[1\]: must be a non-empty string"):
        task.validate({"sentences": ["a.", 3, "c.", "d."]})


@pytest.mark.skipif(not (SHARED_DATA / "creative_writing.jsonl").is_file(), reason="no data")
def test_sentence_split_matches_the_data() -> None:
    with (SHARED_DATA / "creative_writing.jsonl").open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    for row in rows:
        if not row["has_fragment"]:
            assert split_sentences(row["input"]) == row["sentences"], row["id"]


# ---------------------------------------------------------------- blocksworld

BW_LINE = {
    "init": "the red block is clear, the orange block is clear, the hand is empty, the orange "
            "block is on top of the blue block, the red block is on the table and the blue "
            "block is on the table",
    "goal": "the blue block is on top of the orange block",
    "plan": ["unstack the orange block from on top of the blue block", "put down the orange block",
             "pick up the blue block", "stack the blue block on top of the orange block"],
}


def bw_problem() -> BlocksworldProblem:
    task = get_task("blocksworld")
    problem = task.bind(task.validate(BW_LINE))
    assert isinstance(problem, BlocksworldProblem)
    return problem


def test_blocksworld_thoughts_are_simulated() -> None:
    problem = bw_problem()
    ok = problem.parse_thought((), "1. Unstack the orange block from on top of the blue block.\n")
    assert ok.text == BW_LINE["plan"][0] and not ok.terminal
    illegal = problem.parse_thought((), "pick up the blue block")
    assert illegal.failure == ("illegal action: cannot pick up the blue block: "
                               "the blue block is not clear")
    nothing = problem.parse_thought((), "I would move things")
    assert nothing.failure == ("not a Blocksworld action: 'I would move things'; "
                               "no action phrase in the output")
    chatty = problem.parse_thought((), "As initial conditions I have that, the red block is "
                                       "clear.\nSo I unstack the orange block from on top of "
                                       "the blue block, then put down the orange block")
    assert chatty.text == BW_LINE["plan"][0]
    assert problem.parse_thought((), "  \n").failure == "empty output: no action"
    last = problem.parse_thought(tuple(BW_LINE["plan"][:3]), "stack the blue block on top of "
                                                             "the orange block")
    assert last.terminal


def test_blocksworld_prompts_and_outcome() -> None:
    problem = bw_problem()
    prompt = problem.thought_prompt((BW_LINE["plan"][0],))
    assert prompt.count("[STATEMENT]") == 5  # 4 pool examples + this instance
    assert "I can take now are: put down the orange block; stack the orange block" in prompt
    value = problem.value_prompt((), BW_LINE["plan"][0])
    assert value.rstrip().endswith("[EVALUATION]") and "<action>" not in value
    assert problem.value_rule.parse("[EVALUATION]\ngood") == 1.0
    full = problem.outcome(tuple(BW_LINE["plan"]), None)
    assert full.correct is True and full.details["optimal"] is True
    short = problem.outcome(tuple(BW_LINE["plan"][:2]), None)
    assert short.correct is False and short.details["reason"] == "the goal is not reached"


def test_blocksworld_input_forms() -> None:
    task = get_task("blocksworld")
    pddl = task.validate({"init_pddl": ["(handempty)", "(ontable a)", "(clear a)"],
                          "goal_pddl": ["(ontable a)"], "plan_pddl": []})
    assert pddl["init"] == "the red block is clear, the hand is empty and the red block is on " \
                           "the table"
    assert task.search_defaults({**BW_LINE, "num_steps": 4}) == {"depth": 4}
    with pytest.raises(JobSpecError, match="init: not a Blocksworld fact"):
        task.validate({**BW_LINE, "init": "the red block is sad"})
    with pytest.raises(JobSpecError, match=r"plan\[1\]: not a Blocksworld action"):
        task.validate({**BW_LINE, "plan": ["put down the red block", "jump"]})
    with pytest.raises(JobSpecError, match="goal: missing"):
        task.validate({"init": BW_LINE["init"]})
    with pytest.raises(JobSpecError, match="num_steps"):
        task.validate({**BW_LINE, "num_steps": "4"})


# ---------------------------------------------------------------- custom


def test_custom_templates_are_checked_up_front() -> None:
    assert check_template("thought", "Solve {input}. So far: {state}. Step {step}. {{x}}")
    with pytest.raises(JobSpecError, match=r"templates.thought: unknown placeholder \{inptu\}"):
        check_template("thought", "Solve {inptu}")
    with pytest.raises(JobSpecError, match=r"templates.solution: unknown placeholder \{candidate"):
        check_template("solution", "{candidate}")
    with pytest.raises(JobSpecError, match=r"unknown placeholder \{\}"):
        check_template("thought", "{}")
    with pytest.raises(JobSpecError, match=r"unknown placeholder \{input.x\}"):
        check_template("thought", "{input.x}")
    with pytest.raises(JobSpecError, match="malformed template"):
        check_template("thought", "{input")
    with pytest.raises(JobSpecError, match="nested placeholder"):
        check_template("thought", "{input:{step}}")


def test_custom_prompts_and_answers() -> None:
    task = get_task("custom")
    data = task.validate({"input": "2+2", "answer": "4", "templates": {
        "thought": "{input} | {state} | {step}", "evaluation": "{candidate} @ {state}",
        "solution": "final {input} {state}"}})
    problem = task.bind(data)
    assert isinstance(problem, CustomProblem)
    assert problem.thought_prompt(("a",)) == "2+2 | a | 2"
    assert problem.value_prompt(("a",), "b") == "b @ a\nb"
    assert problem.solution_prompt(("a", "b")) == "final 2+2 a\nb"
    assert "Choice 2:\ny" in problem.vote_prompt((), ["x", "y"])
    assert problem.value_rule.parse("7") == pytest.approx(0.7)
    assert problem.outcome((), "So it is 4.").correct is True
    assert problem.parse_thought((), "   ").failure == "empty output"


def test_custom_gold_matching() -> None:
    assert matches_gold("The capital is Paris.", "paris") is True
    assert matches_gold("Montparis", "paris") is False
    assert matches_gold("so 1,000 in total", "1000") is True
    assert matches_gold("anything", None) is None
