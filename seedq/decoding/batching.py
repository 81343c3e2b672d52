"""One forward pass over several sequences that each have their own KV cache.

The caches are stacked left-padded into one batch, every row gets its own attention mask
(padding hidden, plus the row's causal or tree mask) and position ids, and afterwards each
sequence gets its own cache back, holding its old entries plus its new inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seedq.decoding import kvcache
from seedq.decoding.models import LanguageModel
from seedq.decoding.sequence import ModelCache


@dataclass
class RowInput:
    tokens: list[int]
    cache: ModelCache
    mask: torch.Tensor | None = None  # [Q, cached + Q] bool, None = causal
    positions: torch.Tensor | None = None  # [Q], None = cached .. cached + Q - 1
    need: int = 0  # logits wanted for the last `need` inputs (0: all)

    @property
    def wanted(self) -> int:
        return self.need or len(self.tokens)


def _row_mask(row: RowInput, cached: int) -> torch.Tensor:
    queries = len(row.tokens)
    if row.mask is not None:
        return row.mask
    causal = torch.ones((queries, queries), dtype=torch.bool).tril()
    return torch.cat([torch.ones((queries, cached), dtype=torch.bool), causal], dim=1)


def forward_rows(model: LanguageModel, rows: Sequence[RowInput]) -> list[torch.Tensor]:
    """Run all rows in one batched forward; returns logits [wanted_i, V] per row (on the CPU,
    where the sampling math runs) and replaces each row's ``cache.cache`` with its own
    updated cache (its ``length`` is left to the caller)."""
    if len(rows) == 1:
        return [_single(model, rows[0])]
    lengths = [kvcache.cache_length(r.cache.cache) for r in rows]
    batched, pads = kvcache.stack([r.cache.cache for r in rows])
    longest = max(lengths)
    width = max(len(r.tokens) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), 1, width, longest + width), dtype=torch.bool)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (row, cached, pad) in enumerate(zip(rows, lengths, pads, strict=True)):
        q = len(row.tokens)
        ids[b, :q] = torch.tensor(row.tokens)
        own = _row_mask(row, cached)  # [q, cached + q]
        mask[b, 0, :q, pad:longest] = own[:, :cached]
        mask[b, 0, :q, longest : longest + q] = own[:, cached:]
        for extra in range(q, width):  # dummy queries attend to themselves only
            mask[b, 0, extra, longest + extra] = True
        pos = row.positions if row.positions is not None else torch.arange(cached, cached + q)
        positions[b, :q] = pos
    # inputs are right-padded: keep the columns from the earliest wanted one onwards
    keep = max(width - (len(r.tokens) - r.wanted) for r in rows)
    logits = model.forward(ids, batched, mask, positions, keep).cpu()  # [B, keep, V]
    caches = kvcache.unstack(
        batched, pads, [n + len(r.tokens) for n, r in zip(lengths, rows, strict=True)]
    )
    for row, cache in zip(rows, caches, strict=True):
        row.cache.cache = cache
    offset = width - keep
    return [
        logits[b, len(r.tokens) - r.wanted - offset : len(r.tokens) - offset]
        for b, r in enumerate(rows)
    ]


def _single(model: LanguageModel, row: RowInput) -> torch.Tensor:
    if row.mask is None or row.positions is None:
        return model.forward_chain(row.tokens, row.cache.cache, row.need).cpu()
    return model.forward_masked(
        row.tokens, row.cache.cache, row.mask, row.positions, row.need
    ).cpu()
