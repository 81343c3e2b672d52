"""Thought generators (``sample``, ``propose``) and state evaluators (``value``, ``vote``).

Each strategy turns one expansion into ONE group request: the N thoughts of a node, or the
evaluations of its N children, so the engine can draft them in parallel.
"""

from __future__ import annotations

import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from seedq.decoding.types import GroupGenerator, GroupRequest, SamplingParams, SequenceResult
from seedq.reasoning.errors import ReasoningError
from seedq.reasoning.judging import ValueRule, parse_vote
from seedq.reasoning.metrics import Ledger, sequence_metrics, sequence_record
from seedq.reasoning.params import SearchParams
from seedq.reasoning.tasks.base import Problem, Step, Steps
from seedq.reasoning.tree import Node

log = logging.getLogger(__name__)
SEPARATOR = "\n---\n"


def group_seed(base: int | None, key: str) -> int:
    """A per-group seed that depends only on the job seed and the group's key (node id and
    phase), never on the order in which groups run."""
    return zlib.crc32(f"{base}:{key}".encode()) & 0x3FFFFFFF


@dataclass
class SearchContext:
    """Everything one tree's search needs; collects the nodes it emits."""

    problem: Problem
    params: SearchParams
    generator: GroupGenerator
    thoughts: ThoughtGenerator
    evaluator: Evaluator
    on_node: Callable[[Node], Awaitable[None]] | None = None
    ledger: Ledger = field(default_factory=Ledger)
    nodes: list[Node] = field(default_factory=list)

    def sampling(self, key: str, *, max_new_tokens: int, stop: tuple[str, ...] = (),
                 greedy: bool = False) -> SamplingParams:
        p = self.params
        return SamplingParams(
            temperature=0.0 if greedy else p.temperature, top_k=p.top_k, top_p=p.top_p,
            max_new_tokens=max_new_tokens, stop=stop, seed=group_seed(p.seed, key),
        )

    async def call(self, phase: str, strategy: str, group: str, prompts: list[str],
                   params: SamplingParams) -> Generated:
        """Send ``prompts`` as ONE group request; ``group`` is its key (it seeded ``params``)."""
        request = GroupRequest(prompts=tuple(prompts), params=params, chat=True,
                               label=f"{type(self.problem).__name__}/{phase}")
        result = await self.generator.generate(request)
        if len(result.sequences) != len(prompts):
            raise ReasoningError(
                f"generator returned {len(result.sequences)} sequences for {len(prompts)} prompts"
            )
        self.ledger.record(phase, result)
        return Generated(group, phase, strategy, list(result.sequences))

    async def emit(self, node: Node) -> None:
        self.nodes.append(node)
        if self.on_node is not None:
            await self.on_node(node)


@dataclass(frozen=True)
class Generated:
    """The sequences of one group request: its key, phase (``role``) and strategy."""

    group: str
    role: str
    strategy: str
    sequences: list[SequenceResult]

    def metrics(self, key: str, start: int = 0, stop: int | None = None, *,
                shared: int = 1) -> dict[str, Any]:
        """A node's metrics for ``sequences[start:stop]`` under ``key`` (``thought`` or
        ``evaluation``): their sum, how many sibling nodes share them, and one record per
        sequence (``<key>_sequences``, see ``metrics.sequence_record``)."""
        chosen = self.sequences[start:stop]
        records = [
            sequence_record(self.group, start + i, self.role, self.strategy, shared, seq)
            for i, seq in enumerate(chosen)
        ]
        return {key: sequence_metrics(chosen), f"{key}_shared": shared,
                f"{key}_sequences": records}


@dataclass(frozen=True)
class Candidate:
    """A generated thought before evaluation."""

    step: Step
    raw: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Judgement:
    """An evaluator's verdict on one candidate. ``score`` None: nothing parsable."""

    score: float | None
    text: str
    metrics: dict[str, Any]


class ThoughtGenerator(ABC):
    @abstractmethod
    async def generate(self, ctx: SearchContext, steps: Steps, key: str, n: int
                       ) -> list[Candidate]:
        """``n`` candidate next steps after ``steps``; ``key`` seeds the group."""


class SampleGenerator(ThoughtGenerator):
    """N samples of one prompt (prompts = (p,) * N, temperature > 0, seeded)."""

    async def generate(self, ctx: SearchContext, steps: Steps, key: str, n: int
                       ) -> list[Candidate]:
        problem, group = ctx.problem, f"{key}/thought"
        params = ctx.sampling(
            group, stop=problem.thought_stop(steps),
            max_new_tokens=problem.thought_tokens(steps, ctx.params.max_new_tokens),
        )
        out = await ctx.call("thought", "sample", group, [problem.thought_prompt(steps)] * n,
                             params)
        return [
            Candidate(problem.parse_thought(steps, s.text), s.text,
                      out.metrics("thought", i, i + 1))
            for i, s in enumerate(out.sequences)
        ]


class ProposeGenerator(ThoughtGenerator):
    """One prompt asking for N next steps; its output is split into N thoughts. Missing
    proposals become failed candidates; the one generation's metrics are shared."""

    async def generate(self, ctx: SearchContext, steps: Steps, key: str, n: int
                       ) -> list[Candidate]:
        problem = ctx.problem
        budget = problem.thought_tokens(steps, ctx.params.max_new_tokens) * n
        group = f"{key}/propose"
        params = ctx.sampling(group, max_new_tokens=min(budget, 8192))
        out = await ctx.call("thought", "propose", group, [problem.propose_prompt(steps, n)],
                             params)
        (sequence,) = out.sequences
        pieces = problem.split_proposals(sequence.text)[:n]
        metrics = out.metrics("thought", shared=n)
        candidates = [Candidate(problem.parse_thought(steps, p), p, metrics) for p in pieces]
        missing = Step.failed(f"the proposal listed {len(pieces)} of {n} thoughts")
        candidates += [Candidate(missing, sequence.text, metrics)] * (n - len(pieces))
        return candidates


class Evaluator(ABC):
    async def evaluate(self, ctx: SearchContext, steps: Steps, key: str,
                       candidates: list[Candidate]) -> list[Judgement | None]:
        """One judgement per usable candidate, None for failed ones."""
        live = [i for i, c in enumerate(candidates) if c.step.text is not None]
        judgements: list[Judgement | None] = [None] * len(candidates)
        if live:
            texts = [str(candidates[i].step.text) for i in live]
            for i, judgement in zip(live, await self.judge(ctx, steps, key, texts), strict=True):
                judgements[i] = judgement
        return judgements

    @abstractmethod
    async def judge(self, ctx: SearchContext, steps: Steps, key: str,
                    texts: list[str]) -> list[Judgement]:
        """One judgement per usable candidate text (at least one), in order."""


def read_values(rule: ValueRule, out: Generated, start: int = 0, stop: int | None = None
                ) -> Judgement:
    """Mean of the parsable values of ``out.sequences[start:stop]``; unparsable ones are
    counted."""
    sequences = out.sequences[start:stop]
    values = [rule.parse(s.text) for s in sequences]
    parsed = [v for v in values if v is not None]
    if len(parsed) < len(values):
        log.debug("unparsable value judgement(s): %d of %d", len(values) - len(parsed), len(values))
    metrics = {
        **out.metrics("evaluation", start, stop),
        "evaluation_samples": len(sequences),
        "evaluation_unparsed": len(values) - len(parsed),
    }
    score = sum(parsed) / len(parsed) if parsed else None
    return Judgement(score, SEPARATOR.join(s.text for s in sequences), metrics)


class ValueEvaluator(Evaluator):
    """Each usable candidate judged on its own (``value_samples`` times; greedy when 1)."""

    async def judge(self, ctx: SearchContext, steps: Steps, key: str,
                    texts: list[str]) -> list[Judgement]:
        k = ctx.params.value_samples
        prompts = [ctx.problem.value_prompt(steps, text) for text in texts for _ in range(k)]
        group = f"{key}/value"
        params = ctx.sampling(group, max_new_tokens=ctx.params.eval_max_new_tokens,
                              greedy=k == 1)
        out = await ctx.call("evaluation", "value", group, prompts, params)
        return [read_values(ctx.problem.value_rule, out, j * k, (j + 1) * k)
                for j in range(len(texts))]


class VoteEvaluator(Evaluator):
    """All usable candidates in one vote prompt, sampled ``vote_samples`` times; a
    candidate's score is its share of the samples (unparsable votes are abstentions)."""

    async def judge(self, ctx: SearchContext, steps: Steps, key: str,
                    texts: list[str]) -> list[Judgement]:
        k = ctx.params.vote_samples
        prompt = ctx.problem.vote_prompt(steps, texts)
        group = f"{key}/vote"
        params = ctx.sampling(group, max_new_tokens=ctx.params.eval_max_new_tokens,
                              greedy=k == 1)
        out = await ctx.call("evaluation", "vote", group, [prompt] * k, params)
        votes = [parse_vote(s.text, len(texts)) for s in out.sequences]
        parsed = sum(v is not None for v in votes)
        metrics = {
            **out.metrics("evaluation", shared=len(texts)),
            "evaluation_samples": k,
            "evaluation_unparsed": k - parsed,
        }
        answers = SEPARATOR.join(s.text for s in out.sequences)
        judgements = []
        for j in range(len(texts)):
            count = votes.count(j)
            header = f"{count} of {k} votes ({k - parsed} unparsable)"
            judgements.append(
                Judgement(count / k if parsed else None, f"{header}\n{answers}", metrics)
            )
        return judgements


GENERATOR_STRATEGIES: dict[str, Callable[[], ThoughtGenerator]] = {
    "sample": SampleGenerator,
    "propose": ProposeGenerator,
}
EVALUATOR_STRATEGIES: dict[str, Callable[[], Evaluator]] = {
    "value": ValueEvaluator,
    "vote": VoteEvaluator,
}
