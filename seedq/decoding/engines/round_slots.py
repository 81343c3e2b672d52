"""The rows of a round in a preallocated slot KV cache: no copy of the KV per forward.

The same interface as :class:`~seedq.decoding.engines.round_batch.RoundBatch` (the round
batcher's storage), on a :class:`~seedq.decoding.slot_cache.SlotCache`: row ``i`` of the
round is slot ``i``, its committed length is its ``position`` (the position of its pending
token). A forward writes each row's new keys/values in place at ``[length, length + q)``;
:meth:`SlotRoundBatch.settle` keeps each row's accepted ones by raising its length (the
rejected entries are simply overwritten later: no holes, nothing to compact). A row that
leaves frees its slot and the last row moves into it (one row copied), so ``rows`` follows
the slot order.

Memory grows on demand, one reallocation (one copy of the live entries) at a time:

- positions: when a forward needs ``longest + q`` > capacity, to 1.5 x that, rounded up to
  ``block``, but no further than the rows' own bound ``position + remaining max_new_tokens``
  (what the KV budget estimates), so the allocation stays within ``SEEDQ_ROUND_KV_MB`` save
  the padding of draft tokens (a row near its end still gets ``q`` scratch positions);
- slots: a join that finds too few reallocates to ``GROWTH`` x the rows it needs, so that
  the next groups join into free slots (each reallocation copies every live row's KV: in a
  12-line GSM8K service run, one join at a time to exactly the rows needed cost 3.4% of
  the run); a reallocation for positions keeps free slots up to ``GROWTH`` x the rows.
  With ``SEEDQ_ROUND_KV_MB`` set the free slots stay within it (``kv_limit``);
- the cache is freed when the last row leaves.

The cache takes its dtype and device from the prefilled caches (the model's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from seedq.decoding.engines.round_batch import RoundGroup, Row
from seedq.decoding.models import LanguageModel
from seedq.decoding.packed import Chain, forward_packed
from seedq.decoding.slot_cache import KV, SlotCache, Step, kv_pairs

GROWTH = 1.5  # capacity grows to this x what the forward needs (within the rows' bound)
BLOCK = 64  # capacity steps and attention widths round up to this (on an H100, a width of
# 1001 took 33 ms per forward where 1024 took 23: aligned widths get the fast kernels)


@dataclass
class SlotRoundBatch:
    rows: list[Row] = field(default_factory=list)
    cache: SlotCache | None = None
    block: int = BLOCK
    kv_limit: int = 0  # bytes (SEEDQ_ROUND_KV_MB); free slots are never allocated past it
    can_mix = True

    @property
    def width(self) -> int:
        """The longest row's committed positions."""
        if self.cache is None:
            return 0
        return max(self.cache.lengths[: self.cache.active], default=0)

    def groups(self) -> list[RoundGroup]:
        """The groups with rows in the batch, in row order."""
        return list(dict.fromkeys(row.group for row in self.rows))

    def feeds(self, drafts: list[list[int]] | None) -> list[list[int]]:
        """Per row its pending token and its draft tokens."""
        drafts = drafts or [[] for _ in self.rows]
        return [[row.token, *draft] for row, draft in zip(self.rows, drafts, strict=True)]

    # -- rows join and leave ------------------------------------------------------------
    def join(self, rows: list[Row], caches: list[DynamicCache]) -> None:
        """Add prefilled rows (each cache batch 1, holding its row's ``position`` tokens)
        into new slots. A failed join leaves the rows as they were."""
        if len(rows) != len(caches):
            raise ValueError(f"join: {len(rows)} rows, {len(caches)} caches")
        if not rows:
            return
        need = max([self.width, *(row.position for row in rows)]) + 1  # and the next token
        cache = self._reserve(len(self.rows) + len(rows), need, rows, kv_pairs(caches[0]))
        first = cache.active
        try:
            for row, source in zip(rows, caches, strict=True):
                cache.load(cache.allocate(), source, row.position)
        except BaseException:
            while cache.active > first:
                cache.release(cache.active - 1)
            raise
        self.rows.extend(rows)

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices``; the others free their slots. The last row
        moves into a freed slot (in ``rows`` too): ``rows`` stays in slot order, which need
        not be the order of ``indices``."""
        if len(indices) == len(self.rows):
            return
        if not indices:
            self.rows, self.cache = [], None  # frees the cache
            return
        release_slots(self._checked(), self.rows, set(range(len(self.rows))) - set(indices))

    # -- forwards -----------------------------------------------------------------------
    def forward(self, model: LanguageModel, drafts: list[list[int]] | None = None
                ) -> list[torch.Tensor]:
        """One forward of every row's pending token followed by its draft tokens (``drafts``
        per row, None: no drafts); returns logits ``[1 + len(draft), V]`` per row on the
        CPU. Each row's new entries are written at ``[length, length + q)`` (``q`` = 1 +
        the longest draft; a row's padding writes scratch entries); no length changes
        until :meth:`settle`, so a failed forward leaves the rows as they were."""
        feeds = self.feeds(drafts)
        q = max(len(feed) for feed in feeds)
        self._checked(check_positions=True)
        cache = self._reserve(len(self.rows), self.width + q)
        logits = forward_feeds(model, cache, feeds)
        return [row_logits[: len(feed)] for row_logits, feed in zip(logits, feeds, strict=True)]

    def forward_mixed(self, model: LanguageModel, drafts: list[list[int]], chains: list[Chain]
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`forward` with ``chains`` (prefill pieces of sequences joining the round,
        each on its own batch-1 cache) packed into the same forward
        (:func:`~seedq.decoding.packed.forward_packed`): per chain its last ``need`` logits,
        per row its logits. A failed forward crops the chains back."""
        feeds = self.feeds(drafts)
        q = max(len(feed) for feed in feeds)
        self._checked(check_positions=True)
        cache = self._reserve(len(self.rows), self.width + q)
        return forward_packed(model, chains, cache, feeds)

    def settle(self, kept: list[int], q: int) -> None:
        """After a forward: row b keeps the first ``kept[b]`` of its new entries (its
        pending token and its accepted draft tokens)."""
        cache = self._checked()
        if len(kept) != len(self.rows):
            raise ValueError(f"settle: {len(kept)} counts for {len(self.rows)} rows")
        for slot, n_new in enumerate(kept):
            cache.commit(slot, n_new)

    def compact(self) -> bool:
        """Nothing to compact: rejected entries are never kept."""
        return False

    # -- the failure path: groups alone -------------------------------------------------
    def forward_subset(self, model: LanguageModel, indices: list[int], feeds: list[list[int]]
                       ) -> tuple[list[torch.Tensor], SlotCache]:
        """The same for the rows at ``indices`` alone, on a copy of their slots (the batch
        is left as it was; :meth:`extend` writes their new entries back). ``feeds`` is every
        row's (as :meth:`feeds` builds them)."""
        cache = self._checked(check_positions=True)
        q = max(len(feed) for feed in feeds)
        lengths = [cache.lengths[i] for i in indices]
        alone = _like(cache, len(indices), max(lengths) + q)
        for i, length in zip(indices, lengths, strict=True):
            alone.load(alone.allocate(), _slot_kv(cache, i, length), length)
        logits = forward_feeds(model, alone, [feeds[i] for i in indices])
        return [logits[k][: len(feeds[i])] for k, i in enumerate(indices)], alone

    def extend(self, pieces: list[tuple[list[int], SlotCache]], q: int) -> None:
        """After forwarding subsets alone: write each subset's ``q`` new entries into its
        rows' slots (the other rows keep what the failed forward wrote; the caller drops
        them)."""
        cache = self._reserve(len(self.rows), self.width + q)
        device = cache.device
        for indices, alone in pieces:
            slots = torch.tensor(indices, dtype=torch.long, device=device)[:, None]
            source = torch.arange(len(indices), device=device)[:, None]
            lengths = torch.tensor([cache.lengths[i] for i in indices], dtype=torch.long)
            positions = (lengths[:, None] + torch.arange(q)).to(device)  # [k, q]
            for mine, theirs in zip(cache.slot_layers, alone.slot_layers, strict=True):
                mine.keys[slots, :, positions] = theirs.keys[source, :, positions]
                mine.values[slots, :, positions] = theirs.values[source, :, positions]

    # -- memory -------------------------------------------------------------------------
    def _checked(self, check_positions: bool = False) -> SlotCache:
        """The cache, after checking that row i is slot i, and (``check_positions``: before a
        forward) that its length is the row's position. Between :meth:`settle` and the rows
        that leave after it, a row of a failed group may have kept entries its position
        did not count."""
        cache = self.cache
        if cache is None or cache.active != len(self.rows):
            raise RuntimeError(f"slot round: {len(self.rows)} rows, "
                               f"{0 if cache is None else cache.active} active slots")
        if not check_positions:
            return cache
        positions = [row.position for row in self.rows]
        if cache.lengths[: cache.active] != positions:
            raise RuntimeError(f"slot round: cache lengths {cache.lengths[: cache.active]} "
                               f"!= row positions {positions}")
        return cache

    def _reserve(self, slots: int, need: int, joining: Sequence[Row] = (),
                 template: Sequence[KV] = ()) -> SlotCache:
        """A cache with ``slots`` rows and room for ``need`` positions (reallocated when
        either is short: to exactly ``slots`` rows, positions per :func:`_capacity`)."""
        cache = self.cache
        if cache is not None and slots <= cache.slots and need <= cache.capacity:
            return cache
        capacity = _capacity(need, [*self.rows, *joining], self.block)
        if cache is not None:
            capacity = max(capacity, cache.capacity)
            cache.resize(capacity, slot_room(slots, cache, capacity, self.kv_limit))
            return cache
        if not template:
            raise RuntimeError("slot round: no cache to reserve room in")
        self.cache = shaped_like(template, slots, capacity, self.block)
        return self.cache


def _capacity(need: int, rows: Sequence[Row], block: int) -> int:
    """``need`` with headroom: ``GROWTH`` x it rounded up to ``block``, but not past the
    longest the rows can get (position + remaining new tokens; unknown without states)."""
    roomy = grown(need, block)
    spans = [_span(row) for row in rows]
    if spans and all(span is not None for span in spans):
        roomy = min(roomy, max(span for span in spans if span is not None))
    return max(need, roomy)


def slot_room(slots: int, cache: SlotCache, capacity: int, kv_limit: int = 0) -> int:
    """Slots to reallocate ``cache`` to for ``slots`` rows of ``capacity`` positions (the
    round's and the draft model's slots alike): ``GROWTH`` x them when short (the next joins
    need no copy), else what is there up to that; within ``kv_limit`` bytes (0: none)."""
    roomy = math.ceil(slots * GROWTH)
    room = roomy if slots > cache.slots else min(cache.slots, roomy)
    if kv_limit and cache.slots and cache.capacity:
        per_slot = cache.bytes // (cache.slots * cache.capacity) * capacity
        room = min(room, kv_limit // max(per_slot, 1))
    return max(slots, room)


def grown(need: int, block: int) -> int:
    """``need`` positions with headroom: ``GROWTH`` x it, rounded up to ``block``."""
    return -(-math.ceil(need * GROWTH) // block) * block


def shaped_like(pairs: Sequence[KV], slots: int, capacity: int, block: int) -> SlotCache:
    """An empty slot cache with the layers, KV heads, head size, dtype and device of
    per-layer ``(keys, values)`` ``[1, kv_heads, length, head_dim]``."""
    keys = pairs[0][0]
    return SlotCache.shaped(len(pairs), int(keys.shape[1]), int(keys.shape[3]), slots,
                            capacity, keys.dtype, keys.device, block)


def release_slots(cache: SlotCache, rows: list[Row], gone: set[int]) -> None:
    """Free the slots ``gone`` of ``rows`` (row i = slot i): the last row moves into each
    freed slot, in ``rows`` too, so rows stay in slot order."""
    for slot in sorted(gone, reverse=True):
        moved = cache.release(slot)  # the last row is kept or is this one
        if moved is not None:
            rows[slot] = rows[moved]
        rows.pop()


def _span(row: Row) -> int | None:
    """The longest the row's cache can get: up to its last token's forward."""
    if row.state is None:  # rows without a sequence (benchmarks)
        return None
    return row.position + max(row.state.remaining, 1)


def forward_feeds(model: LanguageModel, cache: SlotCache, feeds: list[list[int]]
                  ) -> torch.Tensor:
    """Logits ``[rows, q, V]`` (float, CPU) of the first ``len(feeds)`` slots' feeds."""
    ids, step = _prepared(cache, feeds)
    logits = model.forward(ids, cache, step.attention_mask, step.position_ids,
                           keep=ids.shape[1])
    return logits.float().cpu()


def forward_last(model: LanguageModel, cache: SlotCache, feeds: list[list[int]]
                 ) -> torch.Tensor:
    """Logits ``[rows, V]`` (float, CPU) of each slot's LAST fed token only (a row feeding
    nothing gets any row's; the caller ignores it): the LM head runs on the distinct last
    columns of the right-padded feeds, not on every column (a draft catching up on 5
    committed tokens needs 1 of the 5)."""
    ids, step = _prepared(cache, feeds)
    counts = [len(feed) for feed in feeds]
    columns = sorted({max(count, 1) - 1 for count in counts})
    keep = torch.tensor(columns, dtype=torch.long, device=model.device)
    logits = model.forward(ids, cache, step.attention_mask, step.position_ids, keep=keep)
    picked = torch.tensor([columns.index(max(count, 1) - 1) for count in counts])
    return logits.float().cpu()[torch.arange(len(feeds)), picked]  # [rows, V]


def _prepared(cache: SlotCache, feeds: list[list[int]]) -> tuple[torch.Tensor, Step]:
    """The right-padded input ids ``[rows, q]`` and the cache's plan for them."""
    q = max(len(feed) for feed in feeds)
    ids = torch.tensor([feed + [0] * (q - len(feed)) for feed in feeds], dtype=torch.long)
    return ids, cache.prepare([len(feed) for feed in feeds])


def _like(cache: SlotCache, slots: int, capacity: int) -> SlotCache:
    keys = cache.slot_layers[0].keys
    return SlotCache.shaped(len(cache.slot_layers), int(keys.shape[1]), int(keys.shape[3]),
                            slots, capacity, keys.dtype, keys.device, cache.block)


def _slot_kv(cache: SlotCache, slot: int, length: int) -> list[KV]:
    """Views of one slot's first ``length`` entries, per layer ``[1, kv, length, hd]``."""
    return [(layer.keys[slot : slot + 1, :, :length], layer.values[slot : slot + 1, :, :length])
            for layer in cache.slot_layers]
