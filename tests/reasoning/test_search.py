"""Search mechanics with a scripted generator: shapes, selection, pruning, budgets,
failures, strategies, callbacks and determinism."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from seedq.decoding.types import GroupRequest, SamplingParams
from seedq.reasoning import JobSpec, Node, ReasoningError, TreeResult, parse_job, run_tree
from tests.reasoning.scripted import ScriptedGenerator

TEMPLATES = {"thought": "T|{state}|{step}", "evaluation": "E|{candidate}",
             "solution": "S|{state}", "propose": "P|{step}|{n}", "vote": "V|{candidates}"}
VALUES = {0: "3", 1: "9", 2: "6"}  # value of the i-th sibling, on the 0-10 scale


def custom_spec(**search: Any) -> JobSpec:
    return parse_job({"id": "job-1", "task": "custom", "input": "x", "answer": "s3-1",
                      "templates": TEMPLATES, "search": search})


def respond(prompt: str, index: int, params: SamplingParams) -> str:
    kind, _, rest = prompt.partition("|")
    if kind == "T":
        return f"s{rest.rsplit('|', 1)[1]}-{index}"
    if kind == "E":
        return VALUES[int(rest.rsplit("-", 1)[1])]
    if kind == "S":
        return f"S from {rest.splitlines()[-1] if rest else 'root'}"
    raise AssertionError(f"unexpected prompt {prompt!r}")


def run(spec: JobSpec, generator: ScriptedGenerator, **kwargs: Any) -> TreeResult:
    return asyncio.run(run_tree(spec, generator, **kwargs))


def groups(generator: ScriptedGenerator, prefix: str) -> list[GroupRequest]:
    return [r for r in generator.requests if r.prompts[0].startswith(prefix)]


def test_bfs_has_breadth_times_beam_nodes_per_depth() -> None:
    generator = ScriptedGenerator(respond)
    result = run(custom_spec(breadth=3, beam=2, depth=3), generator)
    tree = result.tree
    assert [len(tree.at_depth(d)) for d in (1, 2, 3)] == [3, 6, 6]
    assert [sum(n.selected for n in tree.at_depth(d)) for d in (1, 2, 3)] == [2, 2, 2]
    assert [n.node_id for n in tree.at_depth(1) if n.selected] == ["0.2", "0.3"]  # scores 9, 6
    assert [n.node_id for n in tree.at_depth(2) if n.selected] == ["0.2.2", "0.3.2"]
    assert len(tree.nodes) == 1 + 3 + 6 + 6 + 1
    assert tree.nodes[0].kind == "root" and tree.nodes[-1].kind == "solution"
    assert tree.best_path == ("0", "0.2", "0.2.2", "0.2.2.2", "0.2.2.2.s")
    assert result.answer == "S from s3-1" and result.correct is True
    # one group of N thoughts and one group of N evaluations per expansion (1 + 2 + 2)
    assert [len(r.prompts) for r in groups(generator, "T|")] == [3] * 5
    assert [len(r.prompts) for r in groups(generator, "E|")] == [3] * 5
    assert len(groups(generator, "S|")) == 1
    assert all(r.chat for r in generator.requests)


def test_every_thought_node_carries_texts_score_and_metrics() -> None:
    result = run(custom_spec(breadth=3, beam=2, depth=2), ScriptedGenerator(respond))
    for node in result.tree.nodes:
        if node.kind != "thought":
            continue
        assert node.thought and node.evaluation and node.failure is None
        assert node.score == pytest.approx(int(VALUES[int(node.node_id[-1]) - 1]) / 10)
        assert node.metrics["thought"]["new_tokens"] == 1
        assert node.metrics["thought"]["drafted_tokens"] == 2
        assert node.metrics["evaluation"]["new_tokens"] == 1
        assert node.metrics["evaluation_samples"] == 1
        assert node.metrics["evaluation_unparsed"] == 0
    metrics = result.metrics
    assert metrics["engine"] == "scripted"
    assert metrics["phases"]["thought"]["groups"] == 3
    assert metrics["phases"]["evaluation"]["sequences"] == 9
    assert metrics["phases"]["solution"]["groups"] == 1
    assert metrics["acceptance_rate"] == pytest.approx(0.5)
    assert metrics["nodes"] == 1 + 3 + 6 + 1 and metrics["failed_nodes"] == 0


def test_sampling_parameters_and_seeds() -> None:
    generator = ScriptedGenerator(respond)
    run(custom_spec(breadth=3, beam=2, depth=2, temperature=0.9, top_k=5), generator)
    thoughts = groups(generator, "T|")
    assert all(len(set(r.prompts)) == 1 for r in thoughts)
    assert all(r.params.temperature == 0.9 and r.params.top_k == 5 for r in thoughts)
    assert len({r.params.seed for r in thoughts}) == len(thoughts)
    assert all(r.params.greedy for r in groups(generator, "E|"))  # value_samples 1: greedy
    assert all(r.params.greedy for r in groups(generator, "S|"))


def test_runs_are_deterministic() -> None:
    first, second = ScriptedGenerator(respond), ScriptedGenerator(respond)
    a = run(custom_spec(breadth=3, beam=2, depth=3), first)
    b = run(custom_spec(breadth=3, beam=2, depth=3), second)
    assert a.tree == b.tree
    assert sorted(str(r) for r in first.requests) == sorted(str(r) for r in second.requests)


def test_on_node_sees_every_node_once_as_soon_as_final() -> None:
    seen: list[Node] = []

    async def on_node(node: Node) -> None:
        seen.append(node)

    result = run(custom_spec(breadth=2, beam=1, depth=3), ScriptedGenerator(respond),
                 on_node=on_node)
    assert seen == list(result.tree.nodes)
    assert len({n.node_id for n in seen}) == len(seen)
    assert seen[0].node_id == "0" and seen[-1].kind == "solution"
    depths = [n.depth for n in seen]
    assert depths == sorted(depths)


def test_unparsable_value_is_recorded_not_fatal() -> None:
    def vague(prompt: str, index: int, params: SamplingParams) -> str:
        if prompt.startswith("E|") and prompt.endswith("-0"):
            return "hard to say"
        return respond(prompt, index, params)

    result = run(custom_spec(breadth=3, beam=3, depth=1), ScriptedGenerator(vague))
    first = result.tree.node("0.1")
    assert first.score is None and first.evaluation == "hard to say" and first.failure is None
    assert first.metrics["evaluation_unparsed"] == 1
    assert first.selected  # beam 3 keeps unscored nodes after the scored ones
    assert result.metrics["unscored_nodes"] == 1


def test_propose_generator_splits_one_generation() -> None:
    def proposer(prompt: str, index: int, params: SamplingParams) -> str:
        if prompt.startswith("P|"):
            return "1. alpha\n2) beta\n"
        return respond(prompt, index, params) if not prompt.startswith("E|") else "5"

    generator = ScriptedGenerator(proposer)
    result = run(custom_spec(generator="propose", breadth=3, beam=1, depth=2), generator)
    level = result.tree.at_depth(1)
    assert [n.thought for n in level[:2]] == ["alpha", "beta"]
    assert level[2].failure == "the proposal listed 2 of 3 thoughts"
    assert level[0].metrics["thought_shared"] == 3
    assert [len(r.prompts) for r in groups(generator, "P|")] == [1, 1]
    assert [len(r.prompts) for r in groups(generator, "E|")] == [2, 2]  # failed: not evaluated


def test_vote_evaluator_counts_votes_over_samples() -> None:
    votes = ["The best choice is 2", "analysis... The best choice is 2", "no idea"]

    def voter(prompt: str, index: int, params: SamplingParams) -> str:
        return votes[index] if prompt.startswith("V|") else respond(prompt, index, params)

    generator = ScriptedGenerator(voter)
    result = run(custom_spec(evaluator="vote", vote_samples=3, breadth=3, beam=1, depth=1),
                 generator)
    scores = [n.score for n in result.tree.at_depth(1)]
    assert scores == pytest.approx([0.0, 2 / 3, 0.0])
    assert result.tree.node("0.2").selected
    assert str(result.tree.node("0.2").evaluation).startswith("2 of 3 votes (1 unparsable)")
    (vote_group,) = groups(generator, "V|")
    assert len(vote_group.prompts) == 3 and not vote_group.params.greedy
    assert "Choice 3:\ns1-2" in vote_group.prompts[0]


def test_dfs_respects_the_budget_and_prunes() -> None:
    generator = ScriptedGenerator(respond)
    spec = custom_spec(search="dfs", breadth=3, depth=3, node_budget=7, value_threshold=0.5)
    tree = run(spec, generator).tree
    thoughts = [n for n in tree.nodes if n.kind == "thought"]
    assert len(thoughts) == 7
    assert sorted(n.node_id for n in thoughts) == [
        "0.1", "0.2", "0.2.1", "0.2.2", "0.2.2.1", "0.2.3", "0.3"]
    assert not tree.node("0.1").selected and not tree.node("0.2.2.1").selected  # pruned (0.3)
    assert all(tree.node(i).selected for i in ("0.2", "0.2.2", "0.2.3", "0.3"))
    assert [len(r.prompts) for r in groups(generator, "T|")] == [3, 3, 1]
    assert tree.best_path[-2:] == ("0.2.2", "0.2.2.s")  # deepest visited, best score


def test_dfs_without_budget_limit_reaches_the_depth() -> None:
    spec = custom_spec(search="dfs", breadth=2, depth=2, node_budget=100, value_threshold=0.0)
    tree = run(spec, ScriptedGenerator(respond)).tree
    assert len([n for n in tree.nodes if n.kind == "thought"]) == 2 + 2 * 2
    assert tree.best_path == ("0", "0.2", "0.2.2", "0.2.2.s")


GSM_STEP = "Question 1.{k}: What is part {v}?\nAnswer 1.{k}: It is {v}."


def gsm_respond(garbage: set[int]) -> Any:
    def inner(prompt: str, index: int, params: SamplingParams) -> str:
        if "Write only the next step" in prompt:
            k = int(re.findall(r"Question 1\.(\d+) and", prompt)[-1])
            return "I like ducks." if index in garbage else GSM_STEP.format(k=k, v=index + k)
        if "Is the new step correct" in prompt:
            return "sure"
        if "Now answer Question 1" in prompt:
            return "So the total is 18. The answer is 18."
        raise AssertionError(prompt)

    return inner


def test_garbage_thoughts_are_recorded_failures() -> None:
    generator = ScriptedGenerator(gsm_respond({0}))
    spec = parse_job({"id": "g", "question": "Ducks?", "answer": "18",
                      "search": {"breadth": 3, "beam": 1, "depth": 2}}, default_task="gsm8k")
    result = run(spec, generator)
    failed = [n for n in result.tree.nodes if n.failure]
    assert [n.node_id for n in failed] == ["0.1", "0.2.1"]
    assert all(n.thought == "I like ducks." and n.score is None and not n.selected
               and n.evaluation is None for n in failed)
    assert [len(r.prompts) for r in generator.requests if "Is the new step" in r.prompts[0]] \
        == [2, 2]
    assert result.correct is True and result.answer == "18"
    assert result.metrics["failed_nodes"] == 2


def test_all_thoughts_failing_still_gives_a_solution_from_the_root() -> None:
    spec = parse_job({"id": "g", "question": "Ducks?", "answer": "17",
                      "search": {"breadth": 2, "depth": 3}}, default_task="gsm8k")
    result = run(spec, ScriptedGenerator(gsm_respond({0, 1})))
    assert [n.node_id for n in result.tree.nodes] == ["0", "0.1", "0.2", "0.s"]
    assert result.answer == "18" and result.correct is False


def test_generator_breaking_the_group_contract_is_an_error() -> None:
    class Short(ScriptedGenerator):
        async def generate(self, request: GroupRequest) -> Any:
            result = await super().generate(request)
            result.sequences = result.sequences[:1]
            return result

    with pytest.raises(ReasoningError, match="1 sequences for 3 prompts"):
        run(custom_spec(breadth=3), Short(respond))


def test_tree_result_round_trips() -> None:
    result = run(custom_spec(breadth=2, depth=2), ScriptedGenerator(respond))
    assert TreeResult.from_json(result.to_json()) == result


def test_a_failing_expansion_cancels_its_siblings_and_propagates() -> None:
    class Failing(ScriptedGenerator):
        async def generate(self, request: GroupRequest) -> Any:
            if request.prompts[0].startswith("T|s1-1"):
                raise RuntimeError("engine fell over")
            await asyncio.sleep(0)
            return await super().generate(request)

    with pytest.raises(RuntimeError, match="engine fell over"):
        run(custom_spec(breadth=2, beam=2, depth=3), Failing(respond))


def test_nodes_keep_every_sequence_and_round_trip_through_json_text() -> None:
    generator = ScriptedGenerator(respond)
    result = run(custom_spec(breadth=3, beam=2, depth=2, value_samples=2, temperature=0.5),
                 generator)
    records = {(r["group"], r["index"]): r for n in result.tree.nodes
               for key in ("thought_sequences", "evaluation_sequences")
               for r in n.metrics.get(key, [])}
    assert len(records) == sum(len(r.prompts) for r in generator.requests) == 9 + 18 + 1
    node = result.tree.node("0.2.3")
    assert [(r["group"], r["index"], r["strategy"]) for r in node.metrics["thought_sequences"]] \
        == [("0.2/thought", 2, "sample")]
    values = node.metrics["evaluation_sequences"]
    assert [(r["group"], r["index"], r["role"]) for r in values] == [
        ("0.2/value", 4, "evaluation"), ("0.2/value", 5, "evaluation")]
    # the summed keys stay: the sum of the node's own sequences
    assert node.metrics["evaluation"]["new_tokens"] == sum(
        r["metrics"]["new_tokens"] for r in values)
    assert node.metrics["evaluation_samples"] == 2 and node.metrics["thought_shared"] == 1
    again = TreeResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result
