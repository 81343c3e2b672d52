"""Speculation inside the round (the ``auto`` engine): per step, which rows draft how many
tokens, the drafts themselves, and settling each row after the shared verify forward.

Rows of ``auto`` groups draft with their runtime's drafter: prompt lookup (free, the
default) or a draft model (one batched draft forward per depth for all drafting rows). The
plan (:func:`~seedq.decoding.engines.round_plan.plan_lengths`) weighs each row's expected
accepted tokens against the measured cost of the extra tokens in the target forward (and of
the draft forwards); rows of ``batch`` groups, and every row when speculation does not pay,
decode one token as plain batched decoding does. Verification is the exact speculative rule
(:func:`~seedq.decoding.engines.speculative.decide`), so the output distribution is the
target's whatever the plan.

Each row keeps its own n-gram index (:class:`~seedq.decoding.drafters.NgramIndex`), so a
lookup costs O(1) per step instead of a scan of its prompt. Prompt lookup also learns while
it does not draft: the token it would have proposed is compared with the one committed (for
a point-mass draft, P(equal) is exactly its acceptance probability), so a label's
acceptance estimate never goes stale at draft length 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from seedq.decoding import kvcache
from seedq.decoding.drafters import DraftShape, ModelDrafter, NgramDrafter, NgramIndex
from seedq.decoding.engines.round_batch import Row
from seedq.decoding.engines.round_plan import (
    Acceptance,
    DraftCost,
    ForwardCost,
    calibrate,
    plan_lengths,
)
from seedq.decoding.engines.speculative import decide
from seedq.decoding.models import LanguageModel
from seedq.decoding.sampling import one_hot
from seedq.decoding.tree import DraftTree

log = logging.getLogger(__name__)


@dataclass
class Planned:
    """One row's draft for this step (None: it decodes one token) and, for prompt-lookup
    rows that do not draft, the token lookup would have proposed (the shadow trial)."""

    tree: DraftTree | None = None
    shadow: int | None = None


class RoundSpeculation:
    """The auto engine's state in a round batcher: cost models and acceptance."""

    def __init__(self, target: LanguageModel, budget: int) -> None:
        self.target = target
        self.budget = budget
        self.cost: ForwardCost | None = None
        self.draft_costs: dict[int, DraftCost] = {}
        self.acceptance = Acceptance()
        self.calibration_seconds = 0.0
        # the planning rule: (alphas, caps) -> lengths; None = the cost model's plan_lengths.
        # Tests and benchmarks install fixed or random lengths (any choice stays lossless).
        self.policy: Callable[[list[float | None], list[int]], list[int]] | None = None

    def calibrate(self, drafter: object, max_draft: int) -> None:
        """Measure the target's cost curve once, and a draft model's on first use."""
        began = time.perf_counter()
        if self.cost is None:
            self.cost = calibrate(self.target, self.budget, max_draft + 1)
            log.info("auto: target forward %.2f ms + %.3f ms/token", self.cost.a * 1e3,
                     self.cost.b * 1e3)
        if isinstance(drafter, ModelDrafter) and id(drafter.model) not in self.draft_costs:
            fit = calibrate(drafter.model, self.budget, 1)
            self.draft_costs[id(drafter.model)] = DraftCost(fit.a, fit.b)
        self.calibration_seconds += time.perf_counter() - began

    def observe_forward(self, tokens: int, seconds: float) -> None:
        if self.cost is not None:
            self.cost.observe(tokens, seconds)

    # -- planning and drafting -----------------------------------------------------------
    def plan(self, rows: list[Row]) -> list[Planned]:
        """Each row's draft for the next forward."""
        plans = [Planned() for _ in rows]
        if not any(row.group.speculate for row in rows):
            return plans
        alphas: list[float | None] = []
        caps, lookups = [], []
        for row in rows:
            cap, lookup = self._cap(row)
            alphas.append(self._alpha(row) if cap else None)
            caps.append(cap)
            lookups.append(lookup)
        if self.policy is not None:
            lengths = [min(n, cap) for n, cap in zip(self.policy(alphas, caps), caps, strict=True)]
        elif self.cost is not None:
            lengths = plan_lengths(alphas, caps, self.cost, self._draft_cost(rows),
                                   max_tokens=self.budget)
        else:
            lengths = [0] * len(rows)
        model_rows = []
        for i, (row, length, lookup) in enumerate(zip(rows, lengths, lookups, strict=True)):
            if lookup is not None:
                plans[i] = self._lookup_plan(row, lookup[:length])
            elif length:
                model_rows.append((i, length))
        self._draft_model_rows(rows, plans, model_rows)
        return plans

    def _cap(self, row: Row) -> tuple[int, list[int] | None]:
        """The longest draft a row may get now, and its lookup continuation (prompt
        lookup rows; None for model-drafted rows)."""
        drafter = row.group.runtime.drafter
        if not row.group.speculate or drafter is None:
            return 0, None
        room = max(0, min(row.group.runtime.config.gamma, row.state.remaining - 1))
        if isinstance(drafter, NgramDrafter):
            if row.ngram is None:
                row.ngram = NgramIndex(drafter.max_ngram)
            row.ngram.sync(row.state.prompt_ids, row.state.output_ids)
            lookup = row.ngram.lookup(max(room, 1))
            return min(room, len(lookup)), lookup
        return (room if isinstance(drafter, ModelDrafter) else 0), None

    def _alpha(self, row: Row) -> float:
        return self.acceptance.of_row(row.group.request.label, row.hits, row.trials)

    def _draft_cost(self, rows: list[Row]) -> DraftCost:
        models = {id(row.group.runtime.drafter.model) for row in rows  # type: ignore[union-attr]
                  if row.group.speculate and isinstance(row.group.runtime.drafter, ModelDrafter)}
        costs = [self.draft_costs.get(key, DraftCost()) for key in models]
        return DraftCost(sum(c.per_depth for c in costs), max([0.0, *(c.per_token for c in costs)]))

    def _lookup_plan(self, row: Row, tokens: list[int]) -> Planned:
        vocab = self.target.vocab_size
        lookup = row.ngram.lookup(1) if row.ngram is not None else []
        if not tokens:
            return Planned(shadow=lookup[0] if lookup else None)
        tree = DraftTree()
        for token in tokens:
            tree.add(token, len(tree) - 1, one_hot(torch.tensor(token), vocab))
        row.state.metrics.drafted_tokens += len(tree)
        return Planned(tree=tree)

    def _draft_model_rows(self, rows: list[Row], plans: list[Planned],
                          chosen: list[tuple[int, int]]) -> None:
        """One batched draft per draft model over its drafting rows."""
        by_drafter: dict[int, list[tuple[int, int]]] = {}
        for i, length in chosen:
            by_drafter.setdefault(id(rows[i].group.runtime.drafter), []).append((i, length))
        for picks in by_drafter.values():
            drafter = rows[picks[0][0]].group.runtime.drafter
            assert isinstance(drafter, ModelDrafter)
            states = [rows[i].state for i, _ in picks]
            trees = drafter.draft_many(states, [DraftShape.chain(n) for _, n in picks])
            for (i, _), tree in zip(picks, trees, strict=True):
                plans[i] = Planned(tree=tree)

    # -- settling ------------------------------------------------------------------------
    def settle(self, row: Row, plan: Planned, logits: torch.Tensor) -> int:
        """Verify a drafting row from its logits [1 + draft, V], commit its tokens; or
        record a lookup row's shadow trial after its plain commit. Returns the draft tokens
        accepted into the cache (0 for a plain row)."""
        tree, state = plan.tree, row.state
        if tree is None:
            raise ValueError("settle() is for drafting rows")
        verdict = decide(state, tree, logits, self.target.vocab_size)
        drafter = row.group.runtime.drafter
        if isinstance(drafter, ModelDrafter):
            drafter.accept(state, verdict)
        accepted = len(verdict.accepted_nodes)
        self._record(row, accepted, len(tree))
        before = len(state.output_ids)
        row.group.runtime.stop_rule.commit(state, [*tree.path_tokens(verdict.accepted_nodes),
                                                   verdict.next_token])
        state.metrics.accepted_tokens += min(accepted, len(state.output_ids) - before)
        row.token = verdict.next_token
        return accepted

    def shadow(self, row: Row, plan: Planned, committed: int) -> None:
        """A lookup row decoded one token: was its lookup right? (one trial)"""
        if plan.shadow is not None and row.group.speculate:
            self._record(row, int(plan.shadow == committed), 1)

    def _record(self, row: Row, accepted: int, drafted: int) -> None:
        hits, trials = self.acceptance.record(row.group.request.label, accepted, drafted)
        row.hits += hits
        row.trials += trials


    def rewind(self, row: Row) -> None:
        """After a failed draft: the row's draft cache back to its committed tokens."""
        draft = row.state.draft
        if draft is not None:
            kvcache.crop(draft.cache, draft.length)
        row.state.draft_nodes = []
