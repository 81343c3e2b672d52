"""A prefix cache of KV entries shared across groups and trees: a radix tree over token ids.

Every edge of the tree is a run of token ids and its node holds that run's KV segment, per
layer ``(keys, values)`` of shape [1, kv_heads, run, head_dim] (one model: the target and the
draft each have their own cache). Prompts that share a prefix share the nodes of that prefix,
so a task's instructions and few-shot examples are stored once, and a child's prompt finds
its parent's.

- ``match(tokens)`` returns the length of the longest cached prefix and a FRESH
  ``DynamicCache`` holding its KV (new tensors: the caller may extend or crop it freely).
- ``longest(tokens)`` is the length ``match`` would find, without copying (or counting) it.
- ``insert(tokens, cache)`` stores the KV of ``tokens`` from a cache holding at least
  ``len(tokens)`` positions; only the part not yet cached is copied in (a new leaf, or a
  leaf extended by a new child: the prefix already stored is shared, never copied again).
- Entries are evicted least-recently-used first (leaves only, so a stored prefix never loses
  its beginning) once the KV bytes exceed the limit (``DecodingOptions.prefix_cache_mb``,
  ``SEEDQ_PREFIX_CACHE_MB``; 0 disables).

Stored tensors are never modified in place (a split copies both halves), so a match can
assemble its copy outside the lock. One lock makes the cache safe to share between the seed
verifier thread and engines running in worker threads.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from seedq.decoding.options import DecodingOptions

Segment = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, H, run, D]


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]  # the run of token ids on the edge into this node
    kv: Segment
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: int = 0

    @property
    def nbytes(self) -> int:
        return segment_bytes(self.kv)


@dataclass(frozen=True)
class PrefixStats:
    lookups: int
    queried_tokens: int
    reused_tokens: int
    bytes: int
    nodes: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        return self.reused_tokens / self.queried_tokens if self.queried_tokens else 0.0


def segment_bytes(kv: Segment) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def cache_segment(cache: DynamicCache, start: int, stop: int) -> Segment:
    """Positions [start, stop) of every layer of ``cache``, as new (owned) tensors."""
    layers: list[Any] = [x for x in cache.layers if getattr(x, "is_initialized", False)]
    return [
        (layer.keys[..., start:stop, :].clone(), layer.values[..., start:stop, :].clone())
        for layer in layers
    ]


def split_segment(kv: Segment, at: int) -> tuple[Segment, Segment]:
    head = [(k[..., :at, :].clone(), v[..., :at, :].clone()) for k, v in kv]
    tail = [(k[..., at:, :].clone(), v[..., at:, :].clone()) for k, v in kv]
    return head, tail


def join_segments(pieces: Sequence[tuple[Segment, int]]) -> DynamicCache:
    """A new DynamicCache of the first ``n`` positions of each segment, concatenated (one
    copy: the cache owns its tensors)."""
    if not pieces:
        return DynamicCache()
    # empty slices initialise the layers (dtype, device); the joined tensors replace them
    cache = DynamicCache(ddp_cache_data=[(k[..., :0, :], v[..., :0, :]) for k, v in pieces[0][0]])
    layers: list[Any] = list(cache.layers)
    for li, layer in enumerate(layers):
        layer.keys = torch.cat([kv[li][0][..., :n, :] for kv, n in pieces], dim=-2)
        layer.values = torch.cat([kv[li][1][..., :n, :] for kv, n in pieces], dim=-2)
    return cache


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _next_edge(node: _Node, tokens: Sequence[int], at: int) -> tuple[_Node, int] | None:
    """The child of ``node`` that ``tokens[at:]`` goes on into, and how many tokens they
    share; None at the end of ``tokens`` or where no child starts with ``tokens[at]``."""
    if at >= len(tokens):
        return None
    child = node.children.get(tokens[at])
    if child is None:
        return None
    return child, common_length(child.tokens, tokens[at:])


class PrefixCache:
    """Radix tree of KV segments for one model, LRU-evicted under ``limit_bytes``."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = max(int(limit_bytes), 0)
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self._root = _Node((), [], None)
        self._bytes = 0
        self._nodes = 0
        self._lookups = self._queried = self._reused = self._evictions = 0

    @property
    def enabled(self) -> bool:
        return self.limit_bytes > 0

    def match(self, tokens: Sequence[int]) -> tuple[int, DynamicCache]:
        """Longest cached prefix of ``tokens``: its length and a fresh cache holding its KV."""
        if not self.enabled:
            return 0, DynamicCache()
        with self._lock:
            pieces = self._walk(tokens)
            length = sum(n for _, n in pieces)
            self._lookups += 1
            self._queried += len(tokens)
            self._reused += length
        return length, join_segments(pieces)  # stored tensors are immutable: no lock needed

    def longest(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` are cached, without copying anything, counting a
        lookup or refreshing the entries (so a caller can choose which prefix to match)."""
        if not self.enabled:
            return 0
        with self._lock:
            node, at = self._root, 0
            while (edge := _next_edge(node, tokens, at)) is not None:
                child, n = edge
                at += n
                if n < len(child.tokens):
                    break
                node = child
            return at

    def _walk(self, tokens: Sequence[int]) -> list[tuple[Segment, int]]:
        node, at, pieces = self._root, 0, []
        now = next(self._clock)
        while (edge := _next_edge(node, tokens, at)) is not None:
            child, n = edge
            child.last_used = now
            pieces.append((child.kv, n))
            at += n
            if n < len(child.tokens):
                break
            node = child
        return pieces

    def insert(self, tokens: Sequence[int], cache: DynamicCache) -> None:
        """Store the KV of ``tokens`` (positions [0, len(tokens)) of ``cache``)."""
        if not self.enabled or not tokens:
            return
        if cache.get_seq_length() < len(tokens):
            raise ValueError(f"the cache holds {cache.get_seq_length()} positions, "
                             f"fewer than the {len(tokens)} tokens to insert")
        with self._lock:
            node, at = self._descend(tokens)
            if at < len(tokens):
                kv = cache_segment(cache, at, len(tokens))
                if segment_bytes(kv) <= self.limit_bytes:
                    leaf = _Node(tuple(tokens[at:]), kv, node, last_used=next(self._clock))
                    node.children[tokens[at]] = leaf
                    self._bytes += leaf.nbytes
                    self._nodes += 1
            self._evict()

    def _descend(self, tokens: Sequence[int]) -> tuple[_Node, int]:
        """Follow ``tokens`` down the tree, splitting an edge where they diverge inside it;
        returns the deepest node on the path and how many tokens it covers."""
        node, at = self._root, 0
        now = next(self._clock)
        while (edge := _next_edge(node, tokens, at)) is not None:
            child, n = edge
            if n < len(child.tokens):
                child = self._split(child, n)
            child.last_used = now
            node, at = child, at + n
        return node, at

    def _split(self, child: _Node, at: int) -> _Node:
        """Cut ``child``'s edge after ``at`` tokens; returns the new upper node."""
        parent = child.parent
        assert parent is not None
        head, tail = split_segment(child.kv, at)
        upper = _Node(child.tokens[:at], head, parent, {child.tokens[at]: child},
                      child.last_used)
        parent.children[child.tokens[0]] = upper
        child.tokens, child.kv, child.parent = child.tokens[at:], tail, upper
        self._nodes += 1
        return upper

    def _evict(self) -> None:
        if self._bytes <= self.limit_bytes:
            return
        leaves = [(n.last_used, id(n), n) for n in self._iter_nodes() if not n.children]
        heapq.heapify(leaves)
        while self._bytes > self.limit_bytes and leaves:
            _, _, leaf = heapq.heappop(leaves)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.tokens[0]]
            self._bytes -= leaf.nbytes
            self._nodes -= 1
            self._evictions += 1
            if parent is not self._root and not parent.children:
                heapq.heappush(leaves, (parent.last_used, id(parent), parent))

    def _iter_nodes(self) -> list[_Node]:
        out, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def clear(self) -> None:
        with self._lock:
            self._root.children.clear()
            self._bytes = self._nodes = 0

    def stats(self) -> PrefixStats:
        with self._lock:
            return PrefixStats(self._lookups, self._queried, self._reused, self._bytes,
                               self._nodes, self._evictions)


@dataclass
class PrefixCaches:
    """One prefix cache per model of a runtime (shared by generators derived from it)."""

    target: PrefixCache
    draft: PrefixCache

    @classmethod
    def with_limit(cls, limit_bytes: int) -> PrefixCaches:
        return cls(PrefixCache(limit_bytes), PrefixCache(limit_bytes))

    @classmethod
    def default(cls) -> PrefixCaches:
        """Caches with the default limit (``DecodingOptions.prefix_cache_mb``)."""
        return cls.with_limit(DecodingOptions().prefix_cache_bytes)
