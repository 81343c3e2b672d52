"""Tree search over thoughts: BFS with a beam, and DFS with pruning and a node budget.

Ranking: scored nodes by score (high first), then unscored ones; ties keep creation order.
Failed nodes are never kept. A terminal state (the task says no further step is needed)
is not expanded and is preferred when the final state is chosen.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any

from seedq.reasoning.strategies import SearchContext
from seedq.reasoning.tasks.base import Steps
from seedq.reasoning.tree import Node, child_id


@dataclass(frozen=True)
class State:
    """A node together with the steps from the root that it stands for."""

    node: Node
    steps: Steps
    terminal: bool = False

    @property
    def usable(self) -> bool:
        return self.node.failure is None


def rank_key(state: State) -> float:
    return state.node.score if state.node.score is not None else -1.0


def ranked(states: list[State]) -> list[State]:
    return sorted(states, key=rank_key, reverse=True)  # sorted() is stable


def _final_key(state: State) -> tuple[int, float, float]:
    if state.terminal:  # finished: the best score, then the shortest
        return (1, rank_key(state), -state.node.depth)
    return (0, state.node.depth, rank_key(state))  # unfinished: the deepest, then the best


def best_final(states: list[State]) -> State:
    """Terminal states first (best score, then shortest), else the deepest (best score);
    ties keep the given order."""
    return max(states, key=_final_key)  # max() keeps the first of equals


async def expand(ctx: SearchContext, parent: State, n: int) -> list[State]:
    """Generate ``n`` children of ``parent`` (one group) and evaluate them (one group).
    The children are returned unselected and not yet emitted."""
    key = parent.node.node_id
    candidates = await ctx.thoughts.generate(ctx, parent.steps, key, n)
    judgements = await ctx.evaluator.evaluate(ctx, parent.steps, key, candidates)
    children = []
    for i, (candidate, judgement) in enumerate(zip(candidates, judgements, strict=True), 1):
        step = candidate.step
        node = Node(
            node_id=child_id(key, i), parent_id=key, depth=parent.node.depth + 1,
            kind="thought", thought=step.text if step.text is not None else candidate.raw,
            evaluation=judgement.text if judgement else None,
            score=judgement.score if judgement else None,
            failure=step.failure,
            metrics={**candidate.metrics, **(judgement.metrics if judgement else {})},
        )
        steps = (*parent.steps, step.text) if step.text is not None else parent.steps
        children.append(State(node, steps, step.terminal))
    return children


async def _all(calls: list[Coroutine[Any, Any, list[State]]]) -> list[list[State]]:
    """Run expansions concurrently; if one fails, cancel the others and re-raise."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _select(state: State, selected: bool) -> State:
    return replace(state, node=replace(state.node, selected=selected))


class Search(ABC):
    @abstractmethod
    async def run(self, ctx: SearchContext, root: State) -> State:
        """Search from ``root`` (already emitted), emit every other node, return the
        state the solution is written from."""


class BreadthFirst(Search):
    """Per depth: expand every kept non-terminal state into ``breadth`` children
    (expansions run concurrently), keep the best ``beam`` of the children and the carried
    terminal states."""

    async def run(self, ctx: SearchContext, root: State) -> State:
        p = ctx.params
        frontier = [root]
        for _ in range(p.depth):
            open_states = [s for s in frontier if not s.terminal]
            if not open_states:
                break
            groups = await _all([expand(ctx, s, p.breadth) for s in open_states])
            children = [child for group in groups for child in group]
            pool = [s for s in frontier if s.terminal] + [c for c in children if c.usable]
            kept = {id(s) for s in ranked(pool)[: p.beam]}
            for child in children:
                await ctx.emit(_select(child, id(child) in kept).node)
            if not kept:
                break  # every thought failed: keep the previous frontier
            frontier = [_select(s, True) for s in pool if id(s) in kept]
        return best_final(frontier)


class DepthFirst(Search):
    """Best child first; children that failed, are unscored or score below
    ``value_threshold`` are pruned. At most ``node_budget`` thought nodes are generated.
    Stops at the first terminal state; otherwise returns the best leaf at the depth
    limit, else the deepest visited state. ``selected`` marks visited nodes."""

    async def run(self, ctx: SearchContext, root: State) -> State:
        walk = _Walk(ctx)
        await walk.visit(root)
        if walk.found is not None:
            return walk.found
        leaves = [s for s in walk.visited if s.node.depth == ctx.params.depth]
        return best_final(leaves or walk.visited)


class _Walk:
    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.budget = ctx.params.node_budget
        self.found: State | None = None
        self.visited: list[State] = []

    def pruned(self, state: State) -> bool:
        score = state.node.score
        return not state.usable or score is None or score < self.ctx.params.value_threshold

    async def visit(self, state: State) -> None:
        self.visited.append(state)
        if state.terminal:
            self.found = state
            return
        if state.node.depth >= self.ctx.params.depth or self.budget <= 0:
            return
        n = min(self.ctx.params.breadth, self.budget)
        self.budget -= n
        children = await expand(self.ctx, state, n)
        for child in children:
            if self.pruned(child):
                await self.ctx.emit(child.node)
        for child in ranked([c for c in children if not self.pruned(c)]):
            go = self.found is None
            await self.ctx.emit(_select(child, go).node)
            if go:
                await self.visit(_select(child, True))


SEARCH_STRATEGIES: dict[str, type[Search]] = {"bfs": BreadthFirst, "dfs": DepthFirst}
