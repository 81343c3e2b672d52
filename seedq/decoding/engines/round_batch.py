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
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from seedq.decoding import kvcache
from seedq.decoding.drafters import NgramIndex
from seedq.decoding.engines.base import Runtime
from seedq.decoding.engines.batch import attention_mask
from seedq.decoding.engines.seed_groups import OpenGroup
from seedq.decoding.models import LanguageModel
from seedq.decoding.options import ROUND_KV_KINDS
from seedq.decoding.packed import Chain
from seedq.decoding.sequence import SequenceState


@dataclass(frozen=True)
class RoundMode:
    """How a group's rows take part in the round's speculation (a strategy per engine):
    ``drafts``: they draft with the group's drafter at all; ``planned``: the draft length
    comes from the cost model and acceptance (``auto``: 0 where it does not pay), else
    every row drafts its full chain at every step (``seed``: parallel drafting of the
    round's rows, one FCFS verify forward)."""

    engine: str
    drafts: bool = False
    planned: bool = False


BATCH = RoundMode("batch")
AUTO = RoundMode("auto", drafts=True, planned=True)
SEED = RoundMode("seed", drafts=True)
MODES = {mode.engine: mode for mode in (BATCH, AUTO, SEED)}


@dataclass(eq=False, kw_only=True)
class RoundGroup(OpenGroup):
    """One caller's group between steps of the round loop."""

    runtime: Runtime
    mode: RoundMode = BATCH
    mixed_forwards: int = 0  # forwards this group shared with rows of other groups
    kv_spans: list[int] | None = None  # per sequence: prompt + max_new_tokens (KV budget)
    peak_kv_bytes: int = 0  # the round cache's bytes and rows seen while the group was in it
    peak_rows: int = 0
    # False: an auto group whose draft model did not pay when it joined (the cost model's
    # plan drafted nothing with it): no draft KV is prefilled, its rows decode plainly
    drafting: bool = True

    @property
    def speculate(self) -> bool:
        """Its rows draft: its engine drafts, its runtime has a drafter, and (``auto`` with a
        draft model) drafting paid when it joined."""
        return self.mode.drafts and self.drafting and self.runtime.drafter is not None


@dataclass(eq=False)
class Row:
    """One live sequence: its committed token not yet in the cache, and that token's
    position."""

    state: SequenceState
    group: RoundGroup
    token: int
    position: int
    hits: float = 0.0  # draft tokens accepted / tried (its acceptance, ``auto`` only)
    trials: float = 0.0
    ngram: NgramIndex | None = None  # its prompt-lookup index (``auto`` with lookup)


@dataclass
class Riders:
    """Prefill pieces of a joining group fed in the next forward of the round's rows
    (packed: :func:`seedq.decoding.packed.forward_packed`): the target's, in the verify
    forward (``model`` None), or a draft model's, in that model's first draft forward."""

    chains: list[Chain]
    model: LanguageModel | None = None  # None: the target's prefill; else this draft model's
    logits: list[torch.Tensor] | None = None  # per chain its last ``need`` logits, once fed
    seconds: float = 0.0  # their share of that forward's time (by tokens)
    failed: bool = False  # a forward that carried them failed (they were cropped back)

    @property
    def tokens(self) -> int:
        return sum(len(chain.tokens) for chain in self.chains)

    def share(self, elapsed: float, row_tokens: int) -> float:
        """Their part of a forward of ``elapsed`` seconds that also fed ``row_tokens``."""
        self.seconds = elapsed * self.tokens / (self.tokens + row_tokens)
        return self.seconds


class RoundStorage(Protocol):
    """What the round batcher uses of its rows' storage: :class:`RoundBatch` (one left-padded
    ``DynamicCache``) or :class:`~seedq.decoding.engines.round_slots.SlotRoundBatch` (a
    preallocated slot cache). ``rows[i]`` is the i-th row of every forward."""

    rows: list[Row]
    can_mix: bool  # it packs prefill chains into a forward (:meth:`forward_mixed`)

    @property
    def cache(self) -> Any: ...  # its KV tensors (round_budget.cache_bytes), None when empty

    @property
    def width(self) -> int: ...  # the longest row's cache positions (the KV budget)

    def groups(self) -> list[RoundGroup]: ...

    def join(self, rows: list[Row], caches: list[DynamicCache]) -> None: ...

    def keep(self, indices: list[int]) -> None: ...

    def feeds(self, drafts: list[list[int]] | None) -> list[list[int]]: ...

    def forward(self, model: LanguageModel, drafts: list[list[int]] | None = None
                ) -> list[torch.Tensor]: ...

    def forward_mixed(self, model: LanguageModel, drafts: list[list[int]], chains: list[Chain]
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]: ...

    def forward_subset(self, model: LanguageModel, indices: list[int], feeds: list[list[int]]
                       ) -> tuple[list[torch.Tensor], Any]: ...

    def extend(self, pieces: list[tuple[list[int], Any]], q: int) -> None: ...

    def settle(self, kept: list[int], q: int) -> None: ...

    def compact(self) -> bool: ...


def new_round_batch(kind: str = "slots", kv_limit: int = 0) -> RoundStorage:
    """The round's storage, by ``kind`` (``DecodingOptions.round_kv``, ``SEEDQ_ROUND_KV``):
    ``slots`` (the default; a preallocated slot KV cache written in place, no per-forward
    copy of the KV; ``kv_limit``: the KV budget in bytes its free slots stay within) or
    ``dynamic`` (one left-padded ``DynamicCache``, concatenated on every forward)."""
    if kind == "dynamic":
        return RoundBatch()
    if kind != "slots":
        raise ValueError(f"round KV {kind!r}: expected one of {', '.join(ROUND_KV_KINDS)}")
    from seedq.decoding.engines.round_slots import SlotRoundBatch  # it imports this module

    return SlotRoundBatch(kv_limit=kv_limit)


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
    can_mix = False  # its rows are left-padded in one DynamicCache: nothing to pack into

    def forward_mixed(self, model: LanguageModel, drafts: list[list[int]], chains: list[Chain]
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        raise NotImplementedError("the dynamic round storage does not pack prefills")

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

    def forward(self, model: LanguageModel, drafts: list[list[int]] | None = None
                ) -> list[torch.Tensor]:
        """One forward of every row's pending token followed by its draft tokens (``drafts``
        per row, None: no drafts); returns logits ``[1 + len(draft), V]`` per row on the
        CPU. The cache gains ``q = 1 + longest draft`` columns for every row (the padding
        ones masked out); :meth:`settle` then keeps each row's accepted columns. A failed
        forward leaves the cache as it was."""
        assert self.cache is not None
        feeds = self.feeds(drafts)
        chosen = list(range(len(self.rows)))
        logits, self.mask = self._feed(model, chosen, self.cache, feeds)
        return [row_logits[: len(feed)] for row_logits, feed in zip(logits, feeds, strict=True)]

    def feeds(self, drafts: list[list[int]] | None) -> list[list[int]]:
        """Per row its pending token and its draft tokens."""
        drafts = drafts or [[] for _ in self.rows]
        return [[row.token, *draft] for row, draft in zip(self.rows, drafts, strict=True)]

    def forward_subset(self, model: LanguageModel, indices: list[int], feeds: list[list[int]]
                       ) -> tuple[list[torch.Tensor], DynamicCache]:
        """The same for the rows at ``indices`` alone, on a copy of their cache rows (the
        batch is left as it was; :meth:`extend` takes the new columns back). ``feeds`` is
        every row's (as :meth:`feeds` builds them): all rows gain the same columns."""
        cache = self.subset(torch.tensor(indices, dtype=torch.long))
        logits = self._feed(model, indices, cache, feeds)[0]
        return [logits[k][: len(feeds[i])] for k, i in enumerate(indices)], cache

    def _feed(self, model: LanguageModel, chosen: list[int], cache: DynamicCache,
              feeds: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[len(chosen), q, V]`` and the padding mask with q new columns."""
        q = max(len(feed) for feed in feeds)  # every row gains q columns
        index = torch.tensor(chosen, dtype=torch.long)
        ids = torch.zeros((len(chosen), q), dtype=torch.long)  # [rows, q], right-padded
        positions = torch.zeros((len(chosen), q), dtype=torch.long)
        fed = torch.zeros((len(chosen), q), dtype=torch.long)  # 1 = a real new token
        for k, i in enumerate(chosen):
            feed = feeds[i]
            ids[k, : len(feed)] = torch.tensor(feed)
            positions[k] = torch.arange(self.rows[i].position, self.rows[i].position + q)
            fed[k, : len(feed)] = 1
        mask = torch.cat([self.mask[index], fed], 1)  # [rows, width + q]
        device = model.device
        try:
            logits = model.forward(ids.to(device), cache, attention_mask(mask, q),
                                   positions.to(device), keep=q)  # [rows, q, V]
        except BaseException:
            kvcache.crop(cache, self.width)  # layers that were already extended go back
            raise
        return logits.float().cpu(), mask

    def settle(self, kept: list[int], q: int) -> None:
        """After a forward of ``q`` new columns: row b keeps the first ``kept[b]`` of them
        (its pending token and its accepted draft tokens); the rest become holes, masked
        out (:meth:`compact` squeezes them out when they pile up)."""
        if q <= 1:
            return
        columns = torch.arange(q)[None, :]  # [1, q]
        keep = columns < torch.tensor(kept, dtype=torch.long)[:, None]  # [rows, q]
        self.mask[:, -q:] = self.mask[:, -q:] * keep.long()

    def compact(self, slack: float = 0.25) -> bool:
        """When holes and padding exceed ``slack`` of the width (and 16 columns), gather
        each row's real positions to the right (one copy of the cache). True if it did."""
        if self.cache is None or not self.rows:
            return False
        lengths = self.mask.sum(dim=1)  # [rows]
        longest = int(lengths.max())
        if self.width - longest <= max(16, slack * self.width):
            return False
        order = torch.argsort(self.mask, dim=1, stable=True)  # holes first, real ones last
        index = order[:, -longest:]  # [rows, longest]: each row's real columns, in order
        for layer in _layers(self.cache):
            gather = index.to(layer.keys.device)[:, None, :, None].expand(
                -1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys = layer.keys.gather(2, gather)
            layer.values = layer.values.gather(2, gather)
        self.mask = torch.gather(self.mask, 1, index)
        return True

    def subset(self, index: torch.Tensor) -> DynamicCache:
        assert self.cache is not None
        layers = _layers(self.cache)
        device = layers[0].keys.device
        return DynamicCache(ddp_cache_data=[
            (layer.keys.index_select(0, index.to(device)),
             layer.values.index_select(0, index.to(device)))
            for layer in layers
        ])

    def extend(self, pieces: list[tuple[list[int], DynamicCache]], q: int) -> None:
        """After forwarding subsets alone: append each subset's ``q`` new columns to its
        rows (rows of no subset get masked zero columns; the caller drops them)."""
        assert self.cache is not None
        for li, layer in enumerate(_layers(self.cache)):
            keys = layer.keys.new_zeros((*layer.keys.shape[:2], q, layer.keys.shape[3]))
            values = layer.values.new_zeros((*layer.values.shape[:2], q, layer.values.shape[3]))
            for rows, cache in pieces:
                index = torch.tensor(rows, dtype=torch.long, device=keys.device)
                keys[index] = _layers(cache)[li].keys[..., -q:, :]
                values[index] = _layers(cache)[li].values[..., -q:, :]
            layer.keys = torch.cat([layer.keys, keys], dim=-2)
            layer.values = torch.cat([layer.values, values], dim=-2)
        fed = torch.zeros((len(self.rows), q), dtype=torch.long)
        for rows, _ in pieces:
            fed[rows] = 1
        self.mask = torch.cat([self.mask, fed], dim=1)
