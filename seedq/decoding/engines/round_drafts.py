"""The draft model's side of a round: the KV of every model-drafting row in ONE slot cache,
drafted in place, one batched draft forward per depth for all of them.

Before this, each drafting row kept its own ``DynamicCache`` and every draft forward stacked
and cloned them all (:func:`~seedq.decoding.batching.forward_rows`); SmolLM2's int8 draft
took ~2x its calibrated forward time per depth in a round of 12 rows. Here row ``i`` of
:class:`DraftSlots` is slot ``i`` of a :class:`~seedq.decoding.slot_cache.SlotCache` (the
target side's scheme, :mod:`~seedq.decoding.engines.round_slots`): a row joins by loading
its prefilled draft cache once, leaves by freeing its slot, and each forward writes its new
entries in place.

A row's committed draft length stays ``state.draft.length`` (the tokens whose entries are
valid); the slot's own length is reset to it before each draft, so a rejected or failed
draft leaves nothing behind. One draft of chains (:meth:`DraftSlots.draft`):

- depth 0: every row feeds its pending tokens (what was committed since its last draft; the
  rows that do not draft this step catch up too, within the width the drafting rows need)
  and the drafting rows sample their first draft token from the last position's logits;
- depth j: each row still drafting feeds its token j and samples token j + 1.

After verification (:meth:`DraftSlots.accept`) a row keeps the entries of its accepted draft
tokens that were fed (a chain's entries are contiguous: no copy). Draft tokens are sampled
from the warped draft distribution with the row's own generator and carry that distribution
into the exact verification, so drafting here changes speed, never the output."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from seedq.decoding import kvcache
from seedq.decoding.drafters import candidates
from seedq.decoding.engines.round_batch import Riders, Row
from seedq.decoding.engines.round_slots import (
    BLOCK,
    forward_last,
    grown,
    release_slots,
    shaped_like,
    slot_room,
)
from seedq.decoding.models import LanguageModel
from seedq.decoding.packed import forward_packed
from seedq.decoding.sampling import warp_probs
from seedq.decoding.slot_cache import SlotCache, kv_pairs
from seedq.decoding.tree import DraftTree

log = logging.getLogger(__name__)


@dataclass
class DraftRun:
    """What one :meth:`DraftSlots.draft` cost: its forwards, their row-tokens computed
    (rows x width, padding included) and seconds, for the cost model."""

    forwards: int = 0
    computed: int = 0
    seconds: float = 0.0
    mixed: bool = False  # its first forward also fed a joining group's draft prefill


@dataclass(eq=False)
class DraftSlots:
    model: LanguageModel
    rows: list[Row] = field(default_factory=list)  # slot order
    cache: SlotCache | None = None
    block: int = BLOCK
    _fed: dict[Row, int] = field(default_factory=dict)  # draft tokens fed in the last draft

    # -- rows join and leave ------------------------------------------------------------
    def sync(self, rows: Iterable[Row]) -> None:
        """Hold exactly ``rows``: rows no longer among them free their slots, new ones load
        their prefilled draft caches (``state.draft``; its tensors are dropped after)."""
        wanted = list(dict.fromkeys(rows))
        keep = set(wanted)
        gone = {slot for slot, row in enumerate(self.rows) if row not in keep}
        for slot in gone:
            self._fed.pop(self.rows[slot], None)
        if gone:
            release_slots(self._checked(), self.rows, gone)
        if not self.rows:
            self.cache = None  # frees it
        present = set(self.rows)
        self._join([row for row in wanted if row not in present])

    def _join(self, rows: list[Row]) -> None:
        if not rows:
            return
        for row in rows:
            if row.state.draft is None:
                raise ValueError("a model-drafting row needs its prefilled draft cache")
        lengths = [row.state.draft.length for row in rows]  # type: ignore[union-attr]
        need = max([self._longest(), *lengths]) + 1
        cache = self._reserve(len(self.rows) + len(rows), need, rows[0])
        for row, length in zip(rows, lengths, strict=True):
            draft = row.state.draft
            assert draft is not None
            slot = cache.allocate()
            if length:  # (a one-token prompt prefills nothing)
                cache.load(slot, draft.cache, length)
            draft.cache = kvcache.new_cache()  # the slot holds its KV now
            self.rows.append(row)

    # -- drafting -----------------------------------------------------------------------
    def draft(self, picks: list[tuple[Row, int]], riders: Riders | None = None
              ) -> tuple[list[DraftTree], DraftRun]:
        """A chain of ``n`` tokens for each picked ``(row, n)`` (every row must be held);
        the other held rows catch up on their pending tokens at depth 0, and ``riders``
        (a joining group's prefill chunk for this model) are packed into that forward."""
        run = DraftRun()
        trees = [DraftTree() for _ in picks]
        if not picks:
            return trees, run
        cache = self._checked()
        slot_of = {row: slot for slot, row in enumerate(self.rows)}
        want = [0] * len(self.rows)
        tree_at: list[DraftTree | None] = [None] * len(self.rows)
        for (row, n), tree in zip(picks, trees, strict=True):
            want[slot_of[row]], tree_at[slot_of[row]] = n, tree
        for slot, row in enumerate(self.rows):
            cache.set_length(slot, row.state.draft.length)  # type: ignore[union-attr]
            row.state.draft_nodes = []
            self._fed[row] = 0
        pending = [row.state.pending(row.state.draft) for row in self.rows]  # type: ignore
        width = max(len(pending[s]) for s in range(len(self.rows)) if want[s])
        feeds = [p if want[s] else p[:width] for s, p in enumerate(pending)]
        for depth in range(max(want)):
            logits = self._forward(feeds, run, riders if depth == 0 else None)
            if depth == 0:
                for slot, row in enumerate(self.rows):  # caught up: committed entries
                    row.state.draft.length += len(feeds[slot])  # type: ignore[union-attr]
            feeds = self._grow(logits, feeds, want, tree_at, depth)
        for (row, _), tree in zip(picks, trees, strict=True):
            row.state.metrics.drafted_tokens += len(tree)
            row.state.metrics.draft_forwards += run.forwards
            row.state.metrics.draft_seconds += run.seconds / len(picks)
        return trees, run

    def _forward(self, feeds: list[list[int]], run: DraftRun, riders: Riders | None = None
                 ) -> torch.Tensor:
        """One forward of every held row's feed (empty feeds are padding); each slot's
        length moves past what it fed. Logits ``[rows, V]`` of each row's last fed token
        (the only ones a chain draws from). ``riders`` ride in it when every row feeds a
        token (packed; a failed packed forward crops them back and the rows go alone)."""
        began = time.perf_counter()
        q = max(len(feed) for feed in feeds)
        cache = self._reserve(len(self.rows), self._longest() + q)
        logits = self._packed(cache, feeds, riders) if riders is not None else None
        if logits is None:
            logits = forward_last(self.model, cache, feeds)
        for slot, feed in enumerate(feeds):
            cache.commit(slot, len(feed))
        elapsed = time.perf_counter() - began
        if riders is not None and riders.logits is not None:
            elapsed -= riders.share(elapsed, sum(len(feed) for feed in feeds))
            run.mixed = True
        run.forwards += 1
        run.computed += len(feeds) * q
        run.seconds += elapsed
        return logits

    def _packed(self, cache: SlotCache, feeds: list[list[int]], riders: Riders
                ) -> torch.Tensor | None:
        """The rows' last-token logits ``[rows, V]`` of a packed forward that also feeds
        ``riders`` (their logits set); None when it cannot or did not run."""
        if not all(feeds):
            return None
        try:
            chain_logits, rows = forward_packed(self.model, riders.chains, cache, feeds,
                                                rows_last=True)
        except Exception as exc:  # the chains were cropped back: fed apart later
            riders.failed = True
            log.warning("draft slots: a draft forward with a prefill failed (%s); the rows "
                        "and the prefill run apart", exc)
            return None
        riders.logits = chain_logits
        return torch.cat(rows)  # [rows, V]

    def _grow(self, logits: torch.Tensor, feeds: list[list[int]], want: list[int],
              tree_at: list[DraftTree | None], depth: int) -> list[list[int]]:
        """Sample draft token ``depth + 1`` of each row still drafting; its next feed."""
        nxt: list[list[int]] = [[] for _ in self.rows]
        for slot, row in enumerate(self.rows):
            tree = tree_at[slot]
            if tree is None or want[slot] <= depth:
                continue
            last = logits[slot]  # [V]: after its last fed token
            probs = warp_probs(last[None], row.state.params)[0]
            token, source = candidates(last, probs, 1, row.state, False)[0]
            tree.add(token, len(tree) - 1, source)
            if want[slot] > depth + 1:
                nxt[slot] = [token]
                self._fed[row] += 1
        return nxt

    def accept(self, row: Row, accepted: int) -> None:
        """After verification: the row keeps the entries of its accepted draft tokens that
        were fed (its last draft token's never was)."""
        draft = row.state.draft
        assert draft is not None
        draft.length += min(accepted, self._fed.pop(row, 0))
        row.state.draft_nodes = []

    # -- memory -------------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        return 0 if self.cache is None else self.cache.bytes

    def _longest(self) -> int:
        if self.cache is None:
            return 0
        return max(self.cache.lengths[: self.cache.active], default=0)

    def _checked(self) -> SlotCache:
        cache = self.cache
        if cache is None or cache.active != len(self.rows):
            raise RuntimeError(f"draft slots: {len(self.rows)} rows, "
                               f"{0 if cache is None else cache.active} active slots")
        return cache

    def _reserve(self, slots: int, need: int, template: Row | None = None) -> SlotCache:
        """Room for ``slots`` rows of ``need`` positions (one reallocation when short:
        positions to :func:`~seedq.decoding.engines.round_slots.grown`, slots as
        :func:`~seedq.decoding.engines.round_slots.slot_room` says, as the round's own)."""
        cache = self.cache
        if cache is not None and slots <= cache.slots and need <= cache.capacity:
            return cache
        capacity = grown(need, self.block)
        if cache is not None:
            capacity = max(capacity, cache.capacity)
            cache.resize(capacity, slot_room(max(slots, cache.active), cache, capacity))
            return cache
        assert template is not None and template.state.draft is not None
        pairs = kv_pairs(template.state.draft.cache)
        if pairs:  # the prefilled cache's own shape, dtype and device
            self.cache = shaped_like(pairs, slots, capacity, self.block)
        else:  # nothing prefilled (a one-token prompt): the model's config
            self.cache = SlotCache(self.model.model.config, slots, capacity, self.model.dtype,
                                   self.model.device, self.block)
        return self.cache
