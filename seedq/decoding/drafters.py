"""Drafters: strategies that propose a draft tree for one sequence.

``ModelDrafter`` runs a small causal LM (chain of gamma tokens, or a k-config token tree
drafted one depth per forward with a tree attention mask); ``NgramDrafter`` proposes
continuations of earlier occurrences of the sequence's last tokens (prompt lookup), with no
model at all. Each keeps its per-sequence state in ``SequenceState.draft``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from seedq.decoding import kvcache
from seedq.decoding.batching import RowInput, forward_rows
from seedq.decoding.models import LanguageModel
from seedq.decoding.sampling import one_hot, sample, sample_without_replacement, warp_probs
from seedq.decoding.sequence import ModelCache, SequenceState
from seedq.decoding.speculative import Verdict
from seedq.decoding.tree import DraftTree, tree_attention_mask, tree_position_ids


@dataclass(frozen=True)
class DraftShape:
    """Candidates per depth: (1,) * gamma is a chain, (2, 1, 1) a tree."""

    k_per_depth: tuple[int, ...]
    with_replacement: bool = False

    @classmethod
    def chain(cls, gamma: int) -> DraftShape:
        return cls((1,) * gamma)

    def limited(self, max_depth: int) -> tuple[int, ...]:
        return self.k_per_depth[: max(max_depth, 0)]


class Drafter(Protocol):
    shape: DraftShape

    def start(self, state: SequenceState, cache: ModelCache | None) -> None: ...

    def draft(self, state: SequenceState) -> DraftTree: ...

    def accept(self, state: SequenceState, verdict: Verdict) -> None: ...


def draft_depth(state: SequenceState, shape: DraftShape) -> tuple[int, ...]:
    """Leave room for the correction/bonus token inside max_new_tokens."""
    return shape.limited(state.remaining - 1)


def candidates(
    logits: torch.Tensor, probs: torch.Tensor, k: int, state: SequenceState, replacement: bool
) -> list[tuple[int, torch.Tensor]]:
    """k candidate tokens from one draft distribution, each with the distribution it was
    drawn from. logits/probs: [V]."""
    vocab = probs.shape[-1]
    if state.params.greedy:
        tokens = torch.topk(logits, min(k, vocab)).indices.tolist()
        return [(int(t), one_hot(torch.tensor(int(t)), vocab)) for t in tokens]
    if replacement or k == 1:
        return [(sample(probs, state.generator), probs) for _ in range(k)]
    tokens, sources = sample_without_replacement(probs, k, state.generator)
    return list(zip(tokens, sources, strict=True))


@dataclass
class _Growth:
    """One sequence's draft tree while it grows one depth per forward."""

    state: SequenceState
    tree: DraftTree
    depths: tuple[int, ...]
    replacement: bool = False  # tree candidates drawn with replacement
    level: int = 0  # depths drafted so far
    feed: list[int] = field(default_factory=list)  # nodes to feed in the next forward


class ModelDrafter:
    """Drafts with a small LM; every sequence keeps its own draft KV cache. Several sequences
    can be drafted together: one batched forward per depth."""

    def __init__(self, model: LanguageModel, shape: DraftShape) -> None:
        self.model = model
        self.shape = shape

    def start(self, state: SequenceState, cache: ModelCache | None) -> None:
        state.draft = cache or ModelCache(kvcache.new_cache(), 0)

    def draft(self, state: SequenceState) -> DraftTree:
        return self.draft_many([state])[0]

    def draft_many(
        self, states: list[SequenceState], shapes: Sequence[DraftShape] | None = None
    ) -> list[DraftTree]:
        """One draft per state, one batched forward per depth; ``shapes`` gives each state
        its own draft shape (the SeeD scheduler batches groups of different options)."""
        trees = [DraftTree() for _ in states]
        shapes = shapes or [self.shape] * len(states)
        growing = [
            _Growth(state, tree, draft_depth(state, shape), shape.with_replacement)
            for state, tree, shape in zip(states, trees, shapes, strict=True)
        ]
        growing = [g for g in growing if g.depths]
        for g in growing:
            g.state.draft_nodes = []
        while growing:
            growing = self._step(growing)
        for state, tree in zip(states, trees, strict=True):
            state.metrics.drafted_tokens += len(tree)
        return trees

    def _step(self, growing: list[_Growth]) -> list[_Growth]:
        """One batched draft forward, one depth more for every tree; returns the trees that
        need another. Each row is charged its share of the forward plus its own sampling."""
        began = time.perf_counter()
        logits = forward_rows(self.model, [self._row(g) for g in growing])
        share = (time.perf_counter() - began) / len(growing)
        still = []
        for g, rows in zip(growing, logits, strict=True):
            grown = time.perf_counter()
            if self._grow(g, rows):
                still.append(g)
            g.state.metrics.draft_forwards += 1
            g.state.metrics.draft_seconds += share + time.perf_counter() - grown
        return still

    def _row(self, g: _Growth) -> RowInput:
        cache = g.state.draft
        assert cache is not None
        if g.level == 0:
            return RowInput(g.state.pending(cache), cache, need=1)
        tokens = g.tree.path_tokens(g.feed)
        if g.tree.is_chain:
            return RowInput(tokens, cache)
        mask = tree_attention_mask(cache.length, g.state.draft_nodes, 0, g.feed, g.tree.parents)
        positions = tree_position_ids(cache.length, 0, [g.tree.depths[n] for n in g.feed])
        return RowInput(tokens, cache, mask, positions)

    def _grow(self, g: _Growth, logits: torch.Tensor) -> bool:
        """Add the next depth's candidates from this forward's logits [Q, V]; True while the
        tree needs another forward."""
        cache = g.state.draft
        assert cache is not None
        if g.level == 0:
            cache.length += len(g.state.pending(cache))
            frontier = [-1]
        else:
            g.state.draft_nodes.extend(g.feed)
            frontier = g.feed
        probs = warp_probs(logits, g.state.params)  # [F, V]
        k = g.depths[g.level]
        g.feed = [
            g.tree.add(token, parent, source)
            for row, parent in enumerate(frontier)
            for token, source in candidates(
                logits[row], probs[row], k, g.state, g.replacement
            )
        ]
        g.level += 1
        return g.level < len(g.depths)

    def accept(self, state: SequenceState, verdict: Verdict) -> None:
        """Keep the accepted path's entries in the draft cache, drop the rest."""
        cache = state.draft
        assert cache is not None
        slot = {node: cache.length + i for i, node in enumerate(state.draft_nodes)}
        kept = [slot[node] for node in verdict.accepted_nodes if node in slot]
        kvcache.keep_slots(cache.cache, cache.length, kept)
        cache.length += len(kept)
        state.draft_nodes = []


class NgramDrafter:
    """Prompt-lookup drafting: find the last earlier occurrence of the sequence's trailing
    n-gram and propose what followed it. Candidates are point masses (deterministic), so the
    acceptance test stays exact for sampling too. With a k-config, the children of the
    prefix are the distinct continuations of up to k[0] matches, each followed as a chain."""

    def __init__(
        self, shape: DraftShape, vocab_size: int, max_ngram: int = 3, min_ngram: int = 1
    ) -> None:
        self.shape = shape
        self.vocab_size = vocab_size
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def start(self, state: SequenceState, cache: ModelCache | None) -> None:
        state.draft = None

    def draft(self, state: SequenceState) -> DraftTree:
        began = time.perf_counter()
        tree = DraftTree()
        depths = draft_depth(state, self.shape)
        if depths:
            for continuation in self._continuations(state.ids, depths[0], len(depths)):
                parent = -1
                for token in continuation:
                    parent = tree.add(token, parent, one_hot(torch.tensor(token), self.vocab_size))
        state.metrics.draft_seconds += time.perf_counter() - began
        state.metrics.drafted_tokens += len(tree)
        return tree

    def lookup(self, ids: list[int], length: int) -> list[int]:
        """The continuation of the latest match of the sequence's trailing n-gram (up to
        ``length`` tokens, [] when nothing matches): a chain draft, no metrics counted."""
        found = self._continuations(ids, 1, length) if length > 0 else []
        return found[0] if found else []

    def _continuations(self, ids: list[int], branches: int, length: int) -> list[list[int]]:
        found: list[list[int]] = []
        firsts: set[int] = set()
        for n in range(min(self.max_ngram, len(ids) - 1), self.min_ngram - 1, -1):
            tail = ids[-n:]
            for start in range(len(ids) - n - 1, -1, -1):
                if ids[start : start + n] != tail:
                    continue
                follow = ids[start + n : start + n + length]
                if follow and follow[0] not in firsts:
                    firsts.add(follow[0])
                    found.append(follow)
                    if len(found) >= branches:
                        return found
        return found

    def accept(self, state: SequenceState, verdict: Verdict) -> None:
        return None


@dataclass
class NgramIndex:
    """Prompt lookup for one row in O(1) per step: the latest start of every 1..3-gram that
    has a token after it (the same answer as :meth:`NgramDrafter.lookup`)."""

    max_ngram: int = 3
    ids: list[int] = field(default_factory=list)
    latest: dict[tuple[int, ...], int] = field(default_factory=dict)

    def sync(self, prompt: list[int], output: list[int]) -> None:
        """Index the tokens of ``prompt + output`` not indexed yet."""
        known = len(self.ids)
        new = prompt[known:] + output[max(0, known - len(prompt)):]
        for token in new:
            i = len(self.ids)  # the n-grams ending at i - 1 now have a follower
            for n in range(1, self.max_ngram + 1):
                if i - n >= 0:
                    self.latest[tuple(self.ids[i - n:i])] = i - n
            self.ids.append(token)

    def lookup(self, length: int) -> list[int]:
        ids = self.ids
        for n in range(min(self.max_ngram, len(ids) - 1), 0, -1):
            start = self.latest.get(tuple(ids[-n:]))
            if start is not None:
                return ids[start + n:start + n + length]
        return []
