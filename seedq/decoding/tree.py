"""Pure draft-tree topology and tree attention masks.

A draft tree hangs below the last committed token. Node j has a parent (-1: the committed
prefix) and a depth (1 for children of the prefix). When a forward pass feeds new tokens on
top of a KV cache, each new tree node may attend to the committed tokens and to its own
ancestors (and itself) only; its position id is (committed length + depth - 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DraftTree:
    """Candidate tokens, their parents and the distribution each was drawn from."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    draft_probs: list[torch.Tensor] = field(default_factory=list)  # each [V]

    def add(self, token: int, parent: int, probs: torch.Tensor) -> int:
        depth = 1 if parent < 0 else self.depths[parent] + 1
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(depth)
        self.draft_probs.append(probs)
        return len(self.tokens) - 1

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_chain(self) -> bool:
        return all(parent == node - 1 for node, parent in enumerate(self.parents))

    def path_tokens(self, nodes: tuple[int, ...] | list[int]) -> list[int]:
        return [self.tokens[node] for node in nodes]


def tree_size(k_config: tuple[int, ...]) -> int:
    """Number of nodes of a full k-config tree, e.g. (2, 1, 1) -> 2 + 2 + 2 = 6."""
    total, width = 0, 1
    for k in k_config:
        width *= k
        total += width
    return total


def ancestors_or_self(parents: list[int], node: int) -> list[int]:
    chain = []
    while node >= 0:
        chain.append(node)
        node = parents[node]
    return chain


def tree_attention_mask(
    committed: int,
    cached_nodes: list[int],
    new_pending: int,
    new_nodes: list[int],
    parents: list[int],
) -> torch.Tensor:
    """Boolean attention mask [Q, K] for one forward over a cache (True = may attend).

    Cache layout (K columns): ``committed`` committed tokens, then the tree nodes
    ``cached_nodes`` fed by earlier forwards, then this forward's inputs: ``new_pending``
    committed tokens not yet cached (causal), then the tree nodes ``new_nodes``.
    Q = new_pending + len(new_nodes).
    """
    n_cached = committed + len(cached_nodes)
    queries = new_pending + len(new_nodes)
    keys = n_cached + queries
    mask = torch.zeros((queries, keys), dtype=torch.bool)
    mask[:, :committed] = True
    for row in range(new_pending):
        mask[row, n_cached : n_cached + row + 1] = True
    slot = {node: committed + i for i, node in enumerate(cached_nodes)}
    slot.update({node: n_cached + new_pending + i for i, node in enumerate(new_nodes)})
    for i, node in enumerate(new_nodes):
        row = new_pending + i
        mask[row, n_cached : n_cached + new_pending] = True
        for ancestor in ancestors_or_self(parents, node):
            mask[row, slot[ancestor]] = True
    return mask


def tree_position_ids(committed_total: int, new_pending: int, depths: list[int]) -> torch.Tensor:
    """Position ids [Q] for pending tokens then tree nodes; committed_total counts the
    committed tokens including the pending ones."""
    first = committed_total - new_pending
    pending = list(range(first, committed_total))
    nodes = [committed_total + depth - 1 for depth in depths]
    return torch.tensor(pending + nodes, dtype=torch.long)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask [..., Q, K] -> additive float mask (0 allowed, dtype minimum elsewhere)."""
    out = torch.zeros(allowed.shape, dtype=dtype)
    return out.masked_fill(~allowed, torch.finfo(dtype).min)
