"""Speculation inside the round (the ``auto`` engine): per step, which rows draft how many
tokens, the drafts themselves, and settling each row after the shared verify forward.

Rows of ``auto`` and ``seed`` groups draft with their runtime's drafter: prompt lookup
(free, ``auto``'s default) or a draft model (one batched in-place draft forward per depth
for all of the round's rows that draft with it, :mod:`~seedq.decoding.engines.round_drafts`;
its cost per forward is refitted online from every draft). ``auto`` rows draft as the plan
says; ``seed`` rows draft their full chain at every step (within the token budget). The
plan (:func:`~seedq.decoding.engines.round_plan.plan_lengths`) weighs each row's expected
accepted tokens against the measured cost of the extra tokens in the target forward (and of
the draft forwards); rows of ``batch`` groups, and every row when speculation does not pay,
decode one token as plain batched decoding does. Whether an ``auto`` group uses its draft
model at all is decided once, when it joins (:meth:`RoundSpeculation.worth_drafting`): a
group whose plan would never draft is not prefilled on the draft model. Verification is
the exact speculative rule (:func:`~seedq.decoding.engines.speculative.decide`), so the
output distribution is the target's whatever the plan.

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

from seedq.decoding.drafters import ModelDrafter, NgramDrafter, NgramIndex
from seedq.decoding.engines.round_batch import Riders, RoundGroup, Row
from seedq.decoding.engines.round_drafts import DraftSlots
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
        self.draft_fits: dict[int, ForwardCost] = {}  # per draft model: seconds per forward
        self.draft_slots: dict[int, DraftSlots] = {}  # per draft model: its rows' KV
        self.draft_width: dict[int, float] = {}  # per draft model: mean tokens fed per row
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
            log.info("auto: target forward %.2f ms + %.3f ms/token + %.3f ms/row",
                     self.cost.a * 1e3, self.cost.b * 1e3, self.cost.c * 1e3)
        if isinstance(drafter, ModelDrafter) and id(drafter.model) not in self.draft_fits:
            self.draft_fits[id(drafter.model)] = calibrate(drafter.model, self.budget, 1,
                                                            per_row=False)
        self.calibration_seconds += time.perf_counter() - began

    def observe_forward(self, tokens: int, seconds: float, rows: int) -> None:
        if self.cost is not None:
            self.cost.observe(tokens, seconds, rows)

    # -- planning and drafting -----------------------------------------------------------
    def drafts_with(self, model: LanguageModel) -> bool:
        """Whether some live row drafts with ``model`` (its slots hold rows)."""
        slots = self.draft_slots.get(id(model))
        return slots is not None and bool(slots.rows)

    def plan(self, rows: list[Row], riders: Riders | None = None) -> list[Planned]:
        """Each row's draft for the next forward; a draft model's ``riders`` (prefill
        chunks of a joining group) are fed in that model's first draft forward, if it
        drafts this step (else ``riders.logits`` stays None)."""
        plans = [Planned() for _ in rows]
        self._hold(rows)
        if not any(row.group.speculate for row in rows):
            return plans
        alphas, caps, lookups = self._inputs(rows)
        lengths = self._lengths(rows, alphas, caps)
        model_rows = []
        for i, (row, length, lookup) in enumerate(zip(rows, lengths, lookups, strict=True)):
            if lookup is not None:
                plans[i] = self._lookup_plan(row, lookup[:length])
            elif length:
                model_rows.append((i, length))
        self._draft_model_rows(rows, plans, model_rows, riders)
        return plans

    def _inputs(self, rows: list[Row]
                ) -> tuple[list[float | None], list[int], list[list[int] | None]]:
        """Per row: its acceptance estimate (None unless an ``auto`` row that may draft),
        the longest draft it may get, its lookup continuation (see :meth:`_cap`)."""
        alphas: list[float | None] = []
        caps, lookups = [], []
        for row in rows:
            cap, lookup = self._cap(row)
            alphas.append(self._alpha(row) if cap and row.group.mode.planned else None)
            caps.append(cap)
            lookups.append(lookup)
        return alphas, caps, lookups

    @staticmethod
    def _planned(rows: list[Row], caps: list[int]) -> list[int]:
        """The caps of the rows the plan decides (``auto``), 0 for the others."""
        return [cap if row.group.mode.planned else 0 for row, cap in zip(rows, caps,
                                                                          strict=True)]

    def _lengths(self, rows: list[Row], alphas: list[float | None], caps: list[int]
                 ) -> list[int]:
        """Planned rows (``auto``) get the plan's lengths, the others (``seed``) their
        full draft (``caps``)."""
        planned = self._planned(rows, caps)
        if not any(planned):
            lengths = [0] * len(rows)
        elif self.policy is not None:
            lengths = [min(n, cap) for n, cap in zip(self.policy(alphas, planned), planned,
                                                     strict=True)]
        elif self.cost is not None:
            lengths = plan_lengths(alphas, planned, self.cost, self._draft_cost(),
                                   max_tokens=self.budget)
        else:
            lengths = [0] * len(rows)
        widest = max(0, self.budget // len(rows) - 1)  # rows x (1 + depth) within budget
        return [n if row.group.mode.planned else min(cap, widest)
                for row, n, cap in zip(rows, lengths, caps, strict=True)]

    def _cap(self, row: Row) -> tuple[int, list[int] | None]:
        """The longest draft a row may get now, and its lookup continuation (prompt
        lookup rows; None for model-drafted rows)."""
        drafter = row.group.runtime.drafter
        if not row.group.speculate or drafter is None:
            return 0, None
        room = _room(row.group.runtime.config.gamma, row.state.remaining)
        if isinstance(drafter, NgramDrafter):
            if row.ngram is None:
                row.ngram = NgramIndex(drafter.max_ngram)
            row.ngram.sync(row.state.prompt_ids, row.state.output_ids)
            lookup = row.ngram.lookup(max(room, 1))
            return min(room, len(lookup)), lookup
        return (room if isinstance(drafter, ModelDrafter) else 0), None

    def _alpha(self, row: Row) -> float:
        return self.acceptance.of_row(row.group.request.label, row.hits, row.trials)

    def _draft_cost(self, joining: dict[int, int] | None = None) -> DraftCost:
        """A draft forward per depth and draft model computes every row that model holds
        (the others catch up or pad; ``joining``: rows about to join, per model), each as
        wide as the model's forwards have been on average (depth 0 feeds each row's pending
        tokens): ``a + b * held * width``."""
        per_depth = 0.0
        for key, fit in self.draft_fits.items():
            held = len(self.draft_slots[key].rows) if key in self.draft_slots else 0
            held += (joining or {}).get(key, 0)
            if held:
                per_depth += fit.seconds(round(held * self.draft_width.get(key, 1.0)))
        return DraftCost(per_depth=per_depth)

    def worth_drafting(self, rows: list[Row], group: RoundGroup) -> bool:
        """Whether an ``auto`` group joining the live ``rows`` should draft with its draft
        model at all: would the cost model's plan draft for its rows, at its label's
        acceptance, with them added to the round? Decided once, at admission: a group that
        does not is never prefilled on the draft model (its prefill, its KV and the draft
        forwards would cost more than the tokens they save; on a CPU they do). Prompt lookup
        is free: always True; so is any installed ``policy`` (tests choose lengths)."""
        drafter = group.runtime.drafter
        if not isinstance(drafter, ModelDrafter) or self.policy is not None:
            return True
        if self.cost is None:  # not calibrated: nothing to weigh against
            return True
        alphas, caps, _ = self._inputs(rows)  # the live rows as the plan sees them
        caps = self._planned(rows, caps)
        request, gamma = group.request, group.runtime.config.gamma
        joining = len(request.prompts)
        alphas += [self.acceptance.of_label(request.label)] * joining
        caps += [_room(gamma, request.params_for(i).max_new_tokens) for i in range(joining)]
        draft = self._draft_cost({id(drafter.model): joining})
        return any(plan_lengths(alphas, caps, self.cost, draft, max_tokens=self.budget))

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

    def _hold(self, rows: list[Row]) -> None:
        """Each draft model's slots hold exactly the round's rows that draft with it."""
        held: dict[int, list[Row]] = {}
        for row in rows:
            drafter = row.group.runtime.drafter
            if row.group.speculate and isinstance(drafter, ModelDrafter):
                held.setdefault(id(drafter.model), []).append(row)
                if id(drafter.model) not in self.draft_slots:
                    self.draft_slots[id(drafter.model)] = DraftSlots(drafter.model)
        for key in list(self.draft_slots):
            if key in held:
                self.draft_slots[key].sync(held[key])
            else:
                del self.draft_slots[key]  # frees its KV

    def release(self) -> None:
        """The round is over (or was cleared after a failure): drop every draft KV."""
        self.draft_slots.clear()

    def _draft_model_rows(self, rows: list[Row], plans: list[Planned],
                          chosen: list[tuple[int, int]], riders: Riders | None = None) -> None:
        """One in-place batched draft per draft model over the rows it holds (``riders``
        in the first forward of theirs)."""
        by_model: dict[int, list[tuple[int, int]]] = {}
        for i, length in chosen:
            drafter = rows[i].group.runtime.drafter
            assert isinstance(drafter, ModelDrafter)
            by_model.setdefault(id(drafter.model), []).append((i, length))
        for key, picks in by_model.items():
            slots = self.draft_slots[key]
            mine = riders if riders is not None and id(riders.model) == key else None
            trees, run = slots.draft([(rows[i], n) for i, n in picks], mine)
            fit = self.draft_fits.get(key)
            if fit is not None and run.forwards and not run.mixed:  # rows alone
                fit.observe(run.computed // run.forwards, run.seconds / run.forwards)
                width = run.computed / (run.forwards * len(slots.rows))
                self.draft_width[key] = 0.8 * self.draft_width.get(key, width) + 0.2 * width
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
        accepted = len(verdict.accepted_nodes)
        slots = self._slots_of(row)
        if slots is not None:
            slots.accept(row, accepted)
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
        """After a failed draft: nothing of it is kept (a slot's length is reset from the
        row's committed draft length before its next draft)."""
        slots = self._slots_of(row)
        if slots is not None:
            slots.accept(row, 0)
        row.state.draft_nodes = []

    def _slots_of(self, row: Row) -> DraftSlots | None:
        drafter = row.group.runtime.drafter
        if not isinstance(drafter, ModelDrafter):
            return None
        return self.draft_slots.get(id(drafter.model))


def _room(gamma: int, remaining: int) -> int:
    """The longest draft a row with ``remaining`` tokens to go may get (its last token is
    the verify forward's own)."""
    return max(0, min(gamma, remaining - 1))
