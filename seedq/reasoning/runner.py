"""Run one job's tree: search, final solution step, optional judgement, scoring."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from seedq.decoding.types import GroupGenerator
from seedq.reasoning.jobs import JobSpec
from seedq.reasoning.search import SEARCH_STRATEGIES, State
from seedq.reasoning.strategies import (
    EVALUATOR_STRATEGIES,
    GENERATOR_STRATEGIES,
    Judgement,
    SearchContext,
    read_values,
)
from seedq.reasoning.tasks import get_task
from seedq.reasoning.tasks.base import Outcome
from seedq.reasoning.tree import Node, Tree, solution_id

log = logging.getLogger(__name__)
OnNode = Callable[[Node], Awaitable[None]]


@dataclass
class TreeResult:
    """A finished job: its answer, whether it is correct (None: no gold to compare with),
    the whole tree and the tree's engine metrics by phase."""

    custom_id: str | None
    task: str
    answer: str | None
    correct: bool | None
    tree: Tree
    metrics: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "task": self.task,
            "answer": self.answer,
            "correct": self.correct,
            "tree": self.tree.to_json(),
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TreeResult:
        return cls(
            custom_id=data.get("custom_id"), task=data["task"], answer=data.get("answer"),
            correct=data.get("correct"), tree=Tree.from_json(data["tree"]),
            metrics=dict(data.get("metrics") or {}),
        )


async def run_tree(spec: JobSpec, generator: GroupGenerator, *,
                   on_node: OnNode | None = None) -> TreeResult:
    """Build the tree of ``spec`` with ``generator``. ``on_node`` is awaited with every node
    as soon as it is final (root first, solution last). Deterministic given the spec and a
    deterministic generator: node ids and group seeds depend only on the spec."""
    start = time.perf_counter()
    params = spec.search
    ctx = SearchContext(
        problem=get_task(spec.task).bind(spec.input), params=params, generator=generator,
        thoughts=GENERATOR_STRATEGIES[params.generator](),
        evaluator=EVALUATOR_STRATEGIES[params.evaluator](), on_node=on_node,
    )
    root = Node(node_id="0", parent_id=None, depth=0, kind="root", selected=True)
    await ctx.emit(root)
    final = await SEARCH_STRATEGIES[params.search]().run(ctx, State(root, ()))
    solution, outcome = await _solve(ctx, final)
    await ctx.emit(solution)
    tree = Tree(
        task=spec.task, nodes=tuple(ctx.nodes), answer=outcome.answer, correct=outcome.correct,
        score=solution.score if solution.score is not None else final.node.score,
        best_path=_path(ctx.nodes, solution), details=outcome.details,
    )
    wall = time.perf_counter() - start
    metrics = {**ctx.ledger.to_dict(wall), **_node_counts(tree)}
    log.info("tree %s (%s): %d nodes, answer %r, correct %s, %.2fs", spec.custom_id,
             spec.task, len(tree.nodes), outcome.answer, outcome.correct, wall)
    return TreeResult(spec.custom_id, spec.task, outcome.answer, outcome.correct, tree, metrics)


async def _solve(ctx: SearchContext, final: State) -> tuple[Node, Outcome]:
    """The solution node written from ``final`` (a generation only when the task needs one)
    and the scored outcome, judged when the task asks for it."""
    problem, key = ctx.problem, final.node.node_id
    prompt = problem.solution_prompt(final.steps)
    text: str | None = None
    metrics: dict[str, Any] = {}
    if prompt is not None:
        group = f"{key}/solution"
        params = ctx.sampling(group, max_new_tokens=ctx.params.max_new_tokens,
                              stop=problem.solution_stop(), greedy=True)
        out = await ctx.call("solution", "solution", group, [prompt], params)
        text = out.sequences[0].text
        metrics = out.metrics("thought")
    outcome = problem.outcome(final.steps, text)
    judgement = await _judge(ctx, key, outcome)
    if judgement is not None:
        metrics.update(judgement.metrics)
        outcome = Outcome(outcome.answer, outcome.correct, {**outcome.details, **judgement.details})
    node = Node(
        node_id=solution_id(key), parent_id=key, depth=final.node.depth + 1, kind="solution",
        thought=text if text is not None else outcome.answer,
        evaluation=judgement.text if judgement else None,
        score=judgement.score if judgement else None, selected=True,
        failure=None if outcome.answer is not None else "no answer in the solution",
        metrics=metrics,
    )
    return node, outcome


@dataclass(frozen=True)
class _Judged(Judgement):
    details: dict[str, Any]


async def _judge(ctx: SearchContext, key: str, outcome: Outcome) -> _Judged | None:
    """The task's judgement of the answer, sampled ``value_samples`` times (greedy when 1);
    its mean on the rule's own scale goes to ``details[<name>]``."""
    request = ctx.problem.judge_prompt(outcome)
    if request is None:
        return None
    k = ctx.params.value_samples
    group = f"{key}/judge"
    params = ctx.sampling(group, max_new_tokens=ctx.params.eval_max_new_tokens, greedy=k == 1)
    out = await ctx.call("judge", "judge", group, [request.prompt] * k, params)
    judgement = read_values(request.rule, out)
    raw = None if judgement.score is None else request.rule.raw_value(judgement.score)
    unparsed = judgement.metrics["evaluation_unparsed"]
    details = {request.name: raw, f"{request.name}_unparsed": unparsed}
    return _Judged(judgement.score, judgement.text, judgement.metrics, details)


def _path(nodes: list[Node], solution: Node) -> tuple[str, ...]:
    parents = {n.node_id: n.parent_id for n in nodes}
    path = [solution.node_id]
    while parents.get(path[-1]) is not None:
        path.append(str(parents[path[-1]]))
    return tuple(reversed(path))


def _node_counts(tree: Tree) -> dict[str, Any]:
    thoughts = [n for n in tree.nodes if n.kind == "thought"]
    return {
        "nodes": len(tree.nodes),
        "thought_nodes": len(thoughts),
        "failed_nodes": sum(n.failure is not None for n in thoughts),
        "unscored_nodes": sum(n.score is None and n.failure is None for n in thoughts),
        "max_depth": max((n.depth for n in thoughts), default=0),
    }
