"""``sd`` and ``mcsd``: speculative decoding one sequence after another.

``sd`` drafts a chain of gamma tokens, ``mcsd`` a k-config token tree verified in ONE target
forward with a tree attention mask. Both use the same two steps, which the SeeD scheduler
also runs (draft in a drafter thread, verify in the verifier thread).
"""

from __future__ import annotations

import time

import torch

from seedq.decoding import kvcache
from seedq.decoding.batching import RowInput, forward_rows
from seedq.decoding.engines.base import (
    MemoryMeter,
    Runtime,
    group_result,
    prepare_group,
    store_prompts,
)
from seedq.decoding.sampling import warp_probs
from seedq.decoding.sequence import SequenceState
from seedq.decoding.speculative import Verdict, verify_tree
from seedq.decoding.tree import DraftTree, tree_attention_mask, tree_position_ids
from seedq.decoding.types import GroupRequest, GroupResult


def target_row(state: SequenceState, tree: DraftTree) -> RowInput:
    """The verification input of one sequence: its pending tokens then its draft; a chain
    draft needs no mask (plain causal attention), a tree gets its tree mask."""
    pending = state.pending(state.target)
    tokens = pending + tree.tokens
    need = len(tree) + 1  # after the last pending token, and after every draft node
    if tree.is_chain:
        return RowInput(tokens, state.target, need=need)
    committed = state.target.length
    mask = tree_attention_mask(committed, [], len(pending), list(range(len(tree))), tree.parents)
    positions = tree_position_ids(committed + len(pending), len(pending), tree.depths)
    return RowInput(tokens, state.target, mask, positions, need)


def decide(
    state: SequenceState, tree: DraftTree, logits: torch.Tensor, vocab_size: int
) -> Verdict:
    """Acceptance for one sequence given its verification logits [n + 1, V] (CPU)."""
    target_probs = warp_probs(logits, state.params)  # [n + 1, V]
    if len(tree):
        draft_probs = torch.stack(tree.draft_probs)  # [n, V]
    else:
        draft_probs = torch.zeros((0, vocab_size))
    return verify_tree(tree.tokens, tree.parents, draft_probs, target_probs, state.generator)


def commit(runtime: Runtime, state: SequenceState, tree: DraftTree, verdict: Verdict) -> None:
    """Roll the caches back to the accepted path and append the new tokens; the first
    commit of a sequence stores its whole prompt in the prefix caches."""
    first = state.target.length < len(state.prompt_ids)  # this verification fed its rest
    base = state.target.length + len(state.pending(state.target))
    kvcache.keep_slots(state.target.cache, base, [base + n for n in verdict.accepted_nodes])
    state.target.length = base + len(verdict.accepted_nodes)
    if runtime.drafter is not None:
        runtime.drafter.accept(state, verdict)
    if first:  # (the draft cache too, when drafting fed it the whole prompt)
        store_prompts(runtime, [state])
    state.metrics.target_forwards += 1
    new_tokens = tree.path_tokens(list(verdict.accepted_nodes)) + [verdict.next_token]
    before = len(state.output_ids)
    runtime.stop_rule.commit(state, new_tokens)
    # EOS, a stop string or max_new_tokens may cut the round: count the draft tokens kept
    kept = len(state.output_ids) - before
    state.metrics.accepted_tokens += min(len(verdict.accepted_nodes), kept)


def target_logits(runtime: Runtime, items: list[tuple[SequenceState, DraftTree]]
                  ) -> list[torch.Tensor]:
    """ONE target forward over the drafts of one or more sequences: logits per sequence.
    Several sequences change no state when it raises (their caches are only replaced after
    the forward), so each can be verified again on its own."""
    return forward_rows(runtime.target, [target_row(state, tree) for state, tree in items])


def settle(runtime: Runtime, state: SequenceState, tree: DraftTree, logits: torch.Tensor
           ) -> None:
    """Accept or correct one sequence's draft from its verification logits and commit."""
    commit(runtime, state, tree, decide(state, tree, logits, runtime.target.vocab_size))


def verify(runtime: Runtime, items: list[tuple[SequenceState, DraftTree]]) -> None:
    """ONE target forward over the drafts of one or more sequences, then commit each."""
    began = time.perf_counter()
    logits = target_logits(runtime, items)
    share = (time.perf_counter() - began) / len(items)  # the batched forward, split per row
    for (state, tree), row_logits in zip(items, logits, strict=True):
        settled = time.perf_counter()
        settle(runtime, state, tree, row_logits)
        state.metrics.verify_seconds += share + time.perf_counter() - settled


class SpeculativeEngine:
    """Draft, verify, commit, one sequence after another (``sd`` and ``mcsd``)."""

    def __init__(self, runtime: Runtime, name: str) -> None:
        if runtime.drafter is None:
            raise ValueError(f"engine {name!r} needs a drafter")
        self.runtime = runtime
        self.drafter = runtime.drafter
        self.name = name

    def run(self, request: GroupRequest) -> GroupResult:
        started = time.perf_counter()
        meter = MemoryMeter(self.runtime.target.device)
        states = prepare_group(self.runtime, request)
        for state in states:
            state.started = time.perf_counter()
            while not state.done:
                verify(self.runtime, [(state, self.drafter.draft(state))])
                meter.tick()
            meter.sample()
        return group_result(self.name, [s.result() for s in states], started, meter)
