"""The rows of a round and their ONE batched target KV cache, kept across forwards.

Every live sequence of every admitted group is a row of one left-padded batched
``DynamicCache`` (``[rows, kv_heads, width, head_dim]`` per layer) with a padding mask
``[rows, width]`` (1 = a real position of that row) and explicit position ids. A forward
feeds each row its one pending token; finished rows leave (``batch_select_indices``) and
columns that became padding for every row are trimmed from the left; new rows join between
forwards (their own prefilled caches left-padded onto the batch: the only copy, once per
join). No cache is stacked or split per forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from seedq.decoding import kvcache
from seedq.decoding.engines.base import Runtime
from seedq.decoding.engines.batch import attention_mask
from seedq.decoding.engines.seed_groups import OpenGroup
from seedq.decoding.models import LanguageModel
from seedq.decoding.sequence import SequenceState


@dataclass(eq=False, kw_only=True)
class RoundGroup(OpenGroup):
    """One caller's group between steps of the round loop."""

    runtime: Runtime
    mixed_forwards: int = 0  # forwards this group shared with rows of other groups
    kv_spans: list[int] | None = None  # per sequence: prompt + max_new_tokens (KV budget)
    peak_kv_bytes: int = 0  # the round cache's bytes and rows seen while the group was in it
    peak_rows: int = 0


@dataclass(eq=False)
class Row:
    """One live sequence: its committed token not yet in the cache, and that token's
    position."""

    state: SequenceState
    group: RoundGroup
    token: int
    position: int


def _layers(cache: DynamicCache) -> list:  # type: ignore[type-arg]
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]


def _pad_left(tensor: torch.Tensor, pad: int) -> torch.Tensor:
    if pad == 0:
        return tensor
    shape = (*tensor.shape[:-2], pad, tensor.shape[-1])
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)


@dataclass
class RoundBatch:
    rows: list[Row] = field(default_factory=list)
    cache: DynamicCache | None = None
    mask: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0), dtype=torch.long))

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def groups(self) -> list[RoundGroup]:
        """The groups with rows in the batch, in row (admission) order."""
        return list(dict.fromkeys(row.group for row in self.rows))

    def join(self, rows: list[Row], caches: list[DynamicCache]) -> None:
        """Add prefilled rows (each cache batch 1, holding its row's ``position`` tokens)."""
        stacked, _ = kvcache.stack(caches)  # the mask below holds the same padding
        lengths = [row.position for row in rows]
        new_width = max(lengths)
        width = max(self.width, new_width)
        new_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, length in enumerate(lengths):
            new_mask[b, width - length :] = 1
        if self.cache is None or not self.rows:
            pad = width - new_width
            self.cache = DynamicCache(ddp_cache_data=[
                (_pad_left(layer.keys, pad), _pad_left(layer.values, pad))
                for layer in _layers(stacked)
            ])
        else:
            layers = list(zip(_layers(self.cache), _layers(stacked), strict=True))
            merged = [  # all built before any layer changes: a failed join changes nothing
                (torch.cat([_pad_left(old.keys, width - self.width),
                            _pad_left(new.keys, width - new_width)], dim=0),
                 torch.cat([_pad_left(old.values, width - self.width),
                            _pad_left(new.values, width - new_width)], dim=0))
                for old, new in layers
            ]
            for (old, _), (keys, values) in zip(layers, merged, strict=True):
                old.keys, old.values = keys, values
            new_mask = torch.cat([torch.nn.functional.pad(self.mask, (width - self.width, 0)),
                                  new_mask], dim=0)
        self.mask = new_mask
        self.rows.extend(rows)

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices`` (in order); trim all-padding columns."""
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        if not self.rows or self.cache is None:
            self.rows, self.cache = [], None
            self.mask = torch.zeros((0, 0), dtype=torch.long)
            return
        index = torch.tensor(indices, dtype=torch.long)
        device = _layers(self.cache)[0].keys.device
        self.cache.batch_select_indices(index.to(device))
        self.mask = self.mask[index]
        lead = int(self.mask.any(dim=0).long().argmax())  # first column some row uses
        if lead:
            for layer in _layers(self.cache):
                layer.keys = layer.keys[..., lead:, :]
                layer.values = layer.values[..., lead:, :]
            self.mask = self.mask[:, lead:]

    def forward(self, model: LanguageModel) -> torch.Tensor:
        """One forward of every row's pending token; returns logits [rows, V] on the CPU.
        The cache gains one column; a failed forward leaves it as it was."""
        assert self.cache is not None
        chosen = list(range(len(self.rows)))
        logits, self.mask = self._feed(model, chosen, self.cache)
        return logits

    def forward_subset(self, model: LanguageModel, indices: list[int]
                       ) -> tuple[torch.Tensor, DynamicCache]:
        """The same for the rows at ``indices`` alone, on a copy of their cache rows (the
        batch is left as it was; :meth:`extend` takes the new columns back)."""
        cache = self.subset(torch.tensor(indices, dtype=torch.long))
        return self._feed(model, indices, cache)[0], cache

    def _feed(self, model: LanguageModel, chosen: list[int], cache: DynamicCache
              ) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor(chosen, dtype=torch.long)
        ids = torch.tensor([[self.rows[i].token] for i in chosen], dtype=torch.long)
        positions = torch.tensor([[self.rows[i].position] for i in chosen], dtype=torch.long)
        mask = torch.cat([self.mask[index], torch.ones((len(chosen), 1), dtype=torch.long)], 1)
        device = model.device
        try:
            logits = model.forward(ids.to(device), cache, attention_mask(mask, 1).to(device),
                                   positions.to(device), keep=1)  # [rows, 1, V]
        except BaseException:
            kvcache.crop(cache, self.width)  # layers that were already extended go back
            raise
        return logits[:, -1].float().cpu(), mask

    def subset(self, index: torch.Tensor) -> DynamicCache:
        assert self.cache is not None
        layers = _layers(self.cache)
        device = layers[0].keys.device
        return DynamicCache(ddp_cache_data=[
            (layer.keys.index_select(0, index.to(device)),
             layer.values.index_select(0, index.to(device)))
            for layer in layers
        ])

    def extend(self, pieces: list[tuple[list[int], DynamicCache]]) -> None:
        """After forwarding subsets alone: append each subset's new column to its rows
        (rows of no subset get a masked zero column; the caller drops them)."""
        assert self.cache is not None
        for li, layer in enumerate(_layers(self.cache)):
            keys = layer.keys.new_zeros((*layer.keys.shape[:2], 1, layer.keys.shape[3]))
            values = layer.values.new_zeros((*layer.values.shape[:2], 1, layer.values.shape[3]))
            for rows, cache in pieces:
                index = torch.tensor(rows, dtype=torch.long, device=keys.device)
                keys[index] = _layers(cache)[li].keys[..., -1:, :]
                values[index] = _layers(cache)[li].values[..., -1:, :]
            layer.keys = torch.cat([layer.keys, keys], dim=-2)
            layer.values = torch.cat([layer.values, values], dim=-2)
        fed = torch.zeros((len(self.rows), 1), dtype=torch.long)
        for rows, _ in pieces:
            fed[rows] = 1
        self.mask = torch.cat([self.mask, fed], dim=1)
