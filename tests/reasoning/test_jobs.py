"""parse_job: every shared data line as it is, explicit lines, and an error per bad field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from seedq.reasoning.jobs import JobSpec, JobSpecError, SearchParams, derive_seed, parse_job
from tests.reasoning.scripted import SHARED_DATA

FILES = {
    "gsm8k_test.jsonl": "gsm8k",
    "gsm8k_train.jsonl": "gsm8k",
    "creative_writing.jsonl": "creative_writing",
    "blocksworld.jsonl": "blocksworld",
}


@pytest.mark.parametrize(("name", "task"), sorted(FILES.items()))
def test_every_shared_data_line_parses(name: str, task: str) -> None:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip("shared data not present")
    with path.open(encoding="utf-8") as handle:
        lines = [json.loads(raw) for raw in handle]
    specs = [parse_job(line, default_task=task) for line in lines]
    assert all(spec.task == task for spec in specs)
    assert [spec.custom_id for spec in specs] == [line["id"] for line in lines]
    assert all(spec.search.seed is not None for spec in specs)
    if task == "blocksworld":
        assert [s.search.depth for s in specs] == [line["num_steps"] for line in lines]
        assert all(s.input["init"] == line["init"] for s, line in zip(specs, lines, strict=True))


def test_a_line_that_states_its_task_and_parameters() -> None:
    spec = parse_job({"custom_id": "a1", "task": "gsm8k", "question": "How many?",
                      "answer": "18", "search": {"breadth": 3, "depth": 2}})
    assert spec == JobSpec("a1", "gsm8k", {"question": "How many?", "answer": "18"},
                           SearchParams(breadth=3, depth=2, seed=derive_seed("a1", "gsm8k", {})))
    # the line's own task wins over the default
    assert parse_job({"task": "gsm8k", "question": "q"}, default_task="custom").task == "gsm8k"


def test_parameter_precedence() -> None:
    base = SearchParams(breadth=5, depth=7, beam=2)
    line = {"id": 9, "init": "the hand is empty and the red block is on the table",
            "goal": "the red block is on the table", "plan": [], "num_steps": 3}
    spec = parse_job(line, default_task="blocksworld", defaults=base)
    assert (spec.search.breadth, spec.search.depth, spec.search.beam) == (5, 7, 2)
    assert spec.custom_id == "9"
    # a caller's field left at the class default does not hide the task's default
    spec = parse_job(line, default_task="blocksworld", defaults=SearchParams(breadth=5))
    assert (spec.search.breadth, spec.search.depth) == (5, 3)
    cw = {"sentences": ["a.", "b.", "c.", "d."]}
    spec = parse_job(cw, default_task="creative_writing", defaults=SearchParams(depth=1))
    assert (spec.search.depth, spec.search.max_new_tokens) == (1, 512)
    spec = parse_job({**line, "search": {"depth": 4, "seed": 11}}, default_task="blocksworld")
    assert (spec.search.depth, spec.search.seed) == (4, 11)


def test_seeds_are_derived_from_the_id() -> None:
    line = {"question": "q"}
    first = parse_job({**line, "id": "x"}, default_task="gsm8k").search.seed
    assert first == parse_job({**line, "custom_id": "x"}, default_task="gsm8k").search.seed
    assert first != parse_job({**line, "id": "y"}, default_task="gsm8k").search.seed
    anonymous = parse_job(line, default_task="gsm8k").search.seed
    assert anonymous == parse_job(dict(line), default_task="gsm8k").search.seed


def test_spec_json_round_trip() -> None:
    spec = parse_job({"id": "c", "task": "custom", "input": "x", "answer": "1",
                      "templates": {"thought": "{input}", "evaluation": "{candidate}"},
                      "search": {"evaluator": "vote", "vote_samples": 5}})
    again = JobSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    with pytest.raises(JobSpecError, match=r"search\.beam"):
        JobSpec.from_json({**spec.to_json(), "search": {"beam": 0}})
    with pytest.raises(JobSpecError, match="task: unknown task"):
        JobSpec.from_json({**spec.to_json(), "task": "chess"})
    with pytest.raises(JobSpecError, match="input: must be an object"):
        JobSpec.from_json({**spec.to_json(), "input": None})


GSM = {"task": "gsm8k", "question": "q"}
TEMPLATES = {"thought": "{input}", "evaluation": "{candidate}"}


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"question": "q"}, "task"),
        ({**GSM, "task": "chess"}, "task"),
        ({**GSM, "task": 3}, "task"),
        ({**GSM, "questoin": "q"}, "questoin"),
        ({"task": "gsm8k"}, "question"),
        ({**GSM, "question": "  "}, "question"),
        ({**GSM, "answer": "lots"}, "answer"),
        ({**GSM, "answer": ["1"]}, "answer"),
        ({**GSM, "custom_id": True}, "custom_id"),
        ({**GSM, "id": ""}, "id"),
        ({**GSM, "id": "x" * 300}, "id"),
        ({**GSM, "search": [1]}, "search"),
        ({**GSM, "search": {"width": 3}}, "search.width"),
        ({**GSM, "search": {"breadth": 0}}, "search.breadth"),
        ({**GSM, "search": {"breadth": 2.5}}, "search.breadth"),
        ({**GSM, "search": {"depth": 33}}, "search.depth"),
        ({**GSM, "search": {"beam": True}}, "search.beam"),
        ({**GSM, "search": {"search": "astar"}}, "search.search"),
        ({**GSM, "search": {"generator": "beam"}}, "search.generator"),
        ({**GSM, "search": {"evaluator": "llm"}}, "search.evaluator"),
        ({**GSM, "search": {"vote_samples": 0}}, "search.vote_samples"),
        ({**GSM, "search": {"value_samples": 17}}, "search.value_samples"),
        ({**GSM, "search": {"value_threshold": 1.5}}, "search.value_threshold"),
        ({**GSM, "search": {"node_budget": 0}}, "search.node_budget"),
        ({**GSM, "search": {"temperature": -1}}, "search.temperature"),
        ({**GSM, "search": {"temperature": "hot"}}, "search.temperature"),
        ({**GSM, "search": {"temperature": float("nan")}}, "search.temperature"),
        ({**GSM, "search": {"temperature": 0}}, "search.temperature"),  # sample, breadth 3
        ({**GSM, "search": {"temperature": 0, "breadth": 1, "evaluator": "vote"}},
         "search.temperature"),
        ({**GSM, "search": {"temperature": 0, "breadth": 1, "value_samples": 2}},
         "search.temperature"),
        ({**GSM, "search": {"top_k": -1}}, "search.top_k"),
        ({**GSM, "search": {"top_p": 0}}, "search.top_p"),
        ({**GSM, "search": {"max_new_tokens": 0}}, "search.max_new_tokens"),
        ({**GSM, "search": {"eval_max_new_tokens": 10**6}}, "search.eval_max_new_tokens"),
        ({**GSM, "search": {"seed": -1}}, "search.seed"),
        ({"task": "creative_writing", "input": "Only one sentence."}, "input"),
        ({"task": "creative_writing"}, "input"),
        ({"task": "creative_writing", "sentences": "a. b. c. d."}, "sentences"),
        ({"task": "blocksworld", "goal": "the red block is clear"}, "init"),
        ({"task": "blocksworld", "init": "the hand is empty", "goal": "the red block is red"},
         "goal"),
        ({"task": "blocksworld", "init_pddl": "(handempty)", "goal": "the hand is empty"},
         "init_pddl"),
        ({"task": "blocksworld", "init": "the hand is empty", "goal": "the hand is empty",
          "plan": ["fly"]}, "plan[0]"),
        ({"task": "custom", "templates": TEMPLATES}, "input"),
        ({"task": "custom", "input": "x"}, "templates"),
        ({"task": "custom", "input": "x", "templates": {"thought": "{input}"}},
         "templates.evaluation"),
        ({"task": "custom", "input": "x", "templates": {**TEMPLATES, "thought": "{foo}"}},
         "templates.thought"),
        ({"task": "custom", "input": "x", "templates": {**TEMPLATES, "plan": "{input}"}},
         "templates.plan"),
        ({"task": "custom", "input": "x", "templates": {**TEMPLATES, "vote": "{candidate}"}},
         "templates.vote"),
        ({"task": "custom", "input": "x", "templates": TEMPLATES,
          "search": {"generator": "propose"}}, "templates.propose"),
        ({"task": "custom", "input": "x", "templates": TEMPLATES, "value_scale": [5, 1]},
         "value_scale"),
        ({"task": "custom", "input": "x", "templates": TEMPLATES, "stop": [""]}, "stop"),
    ],
)
def test_bad_fields_are_named(line: dict[str, Any], field: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        parse_job(line)
    assert caught.value.field == field
    assert str(caught.value) == f"{field}: {caught.value.reason}"
    assert caught.value.reason


def test_a_line_must_be_an_object() -> None:
    with pytest.raises(JobSpecError, match="line: must be a JSON object, got list"):
        parse_job([1, 2], default_task="gsm8k")  # type: ignore[arg-type]


@pytest.mark.parametrize("task", ["gsm8k", "creative_writing", "blocksworld", "custom"])
def test_the_shipped_samples_parse(task: str) -> None:
    from seedq.reasoning.resources import data_path

    with data_path("samples", f"{task}_demo.jsonl").open(encoding="utf-8") as handle:
        specs = [parse_job(json.loads(raw), default_task=task) for raw in handle if raw.strip()]
    assert len(specs) >= 2 and all(spec.custom_id for spec in specs)
    for spec in specs:
        assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
