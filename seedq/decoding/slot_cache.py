"""A preallocated slot KV cache: per-row lengths, in-place writes, no per-forward KV copy.

Every layer holds keys/values ``[slots, kv_heads, capacity, head_dim]``. Active rows are
always the first ``active`` slots (a released slot takes the last active row), so a forward
over the first ``n`` rows reads a view of the cache without copying it. Each forward:

    step = cache.prepare(counts)  # row b feeds counts[b] tokens, right-padded to max(counts)
    logits = model.forward(ids, cache, step.attention_mask, step.position_ids)
    cache.commit(b, kept_b)  # for each row: how many of its new tokens it keeps

``update`` writes row b's new keys/values at positions ``[length_b, length_b + q)`` (padding
queries write scratch entries that only they see) and returns the first ``n`` rows cut to the
attention width ``max(length_b) + q`` (rounded up to ``block``), so attention cost follows
the live lengths, not the capacity. Rollback is lowering a row's length (``set_length``):
stale entries are overwritten by later writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, CacheLayerMixin

KV = tuple[torch.Tensor, torch.Tensor]
Tree = tuple[torch.Tensor, Sequence[int]]  # [q_b, q_b] bool mask over new tokens, offsets


@dataclass(frozen=True)
class Step:
    """What one forward needs, from :meth:`SlotCache.prepare` (both on the CPU, as
    ``LanguageModel.forward`` takes them)."""

    attention_mask: torch.Tensor  # [n, 1, q, width] bool, True = may attend
    position_ids: torch.Tensor  # [n, q] long
    width: int


@dataclass(frozen=True)
class _Plan:
    rows: torch.Tensor  # [n, 1] long, on the cache's device
    positions: torch.Tensor  # [n, q] long: where each new token's keys/values go
    width: int


class SlotLayer(CacheLayerMixin):
    """One layer's preallocated keys/values ``[slots, kv_heads, capacity, head_dim]``."""

    is_croppable = False
    keys: torch.Tensor
    values: torch.Tensor

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype,
                 device: torch.device | str) -> None:
        super().__init__()
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.device = self.keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # allocated up front

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> KV:
        """Write ``[n, kv, q, hd]`` new states at ``plan.positions``; the first n rows back."""
        plan: _Plan = kwargs["plan"]
        self.keys[plan.rows, :, plan.positions] = key_states.transpose(1, 2)
        self.values[plan.rows, :, plan.positions] = value_states.transpose(1, 2)
        n = key_states.shape[0]
        return self.keys[:n, :, : plan.width], self.values[:n, :, : plan.width]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_max_length(), 0

    def get_seq_length(self) -> int:
        return 0  # per-row lengths live on SlotCache

    def get_max_length(self) -> int:
        return int(self.keys.shape[2])

    def resize(self, slots: int, capacity: int, rows: int, used: int) -> None:
        """Reallocate; keep the first ``rows`` rows' first ``used`` positions (one copy)."""
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((slots, old.shape[1], capacity, old.shape[3]))
            new[:rows, :, :used] = old[:rows, :, :used]
            setattr(self, name, new)


class SlotCache(Cache):
    """Preallocated KV for ``slots`` rows of up to ``capacity`` positions each."""

    def __init__(self, config: Any, slots: int, capacity: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 block: int = 64) -> None:
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        shape = (slots, kv_heads, capacity, int(head_dim))
        self.slot_layers = [SlotLayer(shape, dtype, device)
                            for _ in range(int(config.num_hidden_layers))]
        super().__init__(layers=list(self.slot_layers))
        self.lengths = [0] * slots
        self.active = 0  # rows 0..active-1 are in use
        self.block = max(1, block)
        self._plan: _Plan | None = None

    @classmethod
    def shaped(cls, layers: int, kv_heads: int, head_dim: int, slots: int, capacity: int,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               block: int = 64) -> SlotCache:
        """The same from the KV shape alone (e.g. read off a prefilled cache's tensors)."""
        config = SimpleNamespace(num_attention_heads=kv_heads, num_key_value_heads=kv_heads,
                                 head_dim=head_dim, hidden_size=kv_heads * head_dim,
                                 num_hidden_layers=layers)
        return cls(config, slots, capacity, dtype, device, block)

    @property
    def slots(self) -> int:
        return int(self.slot_layers[0].keys.shape[0])

    @property
    def capacity(self) -> int:
        return self.slot_layers[0].get_max_length()

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for layer in self.slot_layers for t in (layer.keys, layer.values))

    @property
    def device(self) -> torch.device:
        return self.slot_layers[0].keys.device

    # -- forwards -----------------------------------------------------------------------------

    def prepare(self, counts: Sequence[int], trees: Mapping[int, Tree] | None = None) -> Step:
        """Plan a forward over rows ``0..len(counts)-1``, row b feeding ``counts[b]`` tokens
        (input ids right-padded to ``q = max(counts)``). Row b's queries see its first
        ``length_b`` entries plus a causal pattern over its own new tokens, or, for a row in
        ``trees``, the given ``[q_b, q_b]`` mask over them with positions ``length_b +
        offsets[i]``; padding queries see only themselves."""
        n, q = len(counts), max(counts, default=0)
        if not 0 < n <= self.active or q < 1 or min(counts) < 0:
            raise ValueError(f"prepare: {n} rows (active {self.active}), counts {list(counts)}")
        lengths = self.lengths[:n]
        for row, length in enumerate(lengths):
            if length + q > self.capacity:
                raise ValueError(
                    f"slot {row}: length {length} + {q} new positions exceeds the capacity "
                    f"{self.capacity}; call grow() first")
        need = max(lengths) + q
        width = min(-(-need // self.block) * self.block, self.capacity)
        base = torch.tensor(lengths, dtype=torch.long)[:, None]  # [n, 1]
        positions = base + torch.arange(q)  # [n, q]
        mask = _chain_mask(base, torch.tensor(list(counts))[:, None], q, width)
        position_ids = positions.clone()
        for row, (tree, offsets) in (trees or {}).items():
            _check_tree(row, counts, tree, offsets)
            length, size = lengths[row], counts[row]
            mask[row, 0, :size, length : length + size] = tree.to(torch.bool)
            position_ids[row, :size] = length + torch.tensor(list(offsets), dtype=torch.long)
        device = self.device
        self._plan = _Plan(torch.arange(n, device=device)[:, None], positions.to(device), width)
        return Step(mask, position_ids, width)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> KV:
        plan = self._plan
        if plan is None or tuple(plan.positions.shape) != (key_states.shape[0],
                                                           key_states.shape[2]):
            got = (key_states.shape[0], key_states.shape[2])
            raise RuntimeError(f"SlotCache: forward of {got} (rows, new tokens) without a "
                               "matching prepare(); call prepare(counts) before each forward")
        out = self.slot_layers[layer_idx].update(key_states, value_states, plan=plan)
        if layer_idx == len(self.slot_layers) - 1:
            self._plan = None  # one prepare per forward
        return out

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.lengths[: self.active], default=0)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return (self._plan.width if self._plan is not None else self.capacity), 0

    # -- lengths ------------------------------------------------------------------------------

    def commit(self, row: int, n_new: int) -> None:
        """Keep the first ``n_new`` tokens row ``row`` wrote in the last forward."""
        self.set_length(row, self.lengths[row] + n_new)

    def set_length(self, row: int, length: int) -> None:
        self._check_row(row)
        if not 0 <= length <= self.capacity:
            raise ValueError(f"slot {row}: length {length} outside [0, {self.capacity}]")
        self.lengths[row] = length

    def keep_positions(self, row: int, start: int, positions: Sequence[int]) -> None:
        """Move the entries at absolute ``positions`` (e.g. an accepted tree path) to
        ``start, start + 1, ...``; the row's length becomes ``start + len(positions)``."""
        end = start + len(positions)
        self.set_length(row, end)
        if list(positions) == list(range(start, end)):
            return
        index = torch.tensor(list(positions), dtype=torch.long, device=self.device)
        for layer in self.slot_layers:
            for tensor in (layer.keys, layer.values):
                tensor[row, :, start:end] = tensor[row].index_select(1, index)

    # -- slots --------------------------------------------------------------------------------

    def allocate(self) -> int:
        """A free slot (always row ``active``), length 0."""
        if self.active == self.slots:
            raise ValueError(f"all {self.slots} slots are in use; call grow(slots=...) first")
        slot, self.active = self.active, self.active + 1
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> int | None:
        """Free ``slot``. The last active row moves into it (one row copied) to keep the rows
        compact: returns that row's old index (now ``slot``), or None if nothing moved."""
        self._check_row(slot)
        last = self.active - 1
        self.active = last
        moved = None
        if slot != last:
            used = self.lengths[last]
            for layer in self.slot_layers:
                for tensor in (layer.keys, layer.values):
                    tensor[slot, :, :used] = tensor[last, :, :used]
            self.lengths[slot], moved = used, last
        self.lengths[last] = 0
        return moved

    def load(self, slot: int, source: DynamicCache | Sequence[KV], length: int | None = None
             ) -> None:
        """Copy a prefilled batch-1 cache (or per-layer ``(keys, values)`` ``[1, kv, seq,
        hd]``) into ``slot``, keeping its first ``length`` positions (default: all)."""
        self._check_row(slot)
        pairs = kv_pairs(source)
        if len(pairs) != len(self.slot_layers):
            raise ValueError(f"load: {len(pairs)} layers, the cache has {len(self.slot_layers)}")
        size = int(pairs[0][0].shape[-2]) if pairs else 0
        length = size if length is None else length
        if not 0 <= length <= min(size, self.capacity):
            raise ValueError(f"load: length {length} with {size} positions given, capacity "
                             f"{self.capacity} (call grow() first)")
        for layer, (keys, values) in zip(self.slot_layers, pairs, strict=True):
            layer.keys[slot, :, :length] = keys[0, :, :length]
            layer.values[slot, :, :length] = values[0, :, :length]
        self.lengths[slot] = length

    def export(self, slot: int) -> DynamicCache:
        """A copy of ``slot``'s first ``length`` positions as a batch-1 DynamicCache."""
        self._check_row(slot)
        length = self.lengths[slot]
        data = [(layer.keys[slot : slot + 1, :, :length], layer.values[slot : slot + 1, :, :length])
                for layer in self.slot_layers]
        return DynamicCache(ddp_cache_data=data)  # copies them (torch.cat; tested)

    def grow(self, capacity: int | None = None, slots: int | None = None) -> None:
        """Reallocate to at least ``capacity`` positions / ``slots`` rows (one copy of the
        live entries); smaller values are ignored."""
        capacity = max(capacity or 0, self.capacity)
        slots = max(slots or 0, self.slots)
        self.resize(capacity, slots)

    def resize(self, capacity: int, slots: int) -> None:
        """Reallocate to exactly ``capacity`` positions and ``slots`` rows (one copy of the
        live entries): larger or smaller, as long as the active rows and their committed
        entries fit."""
        used = max(self.lengths[: self.active], default=0)
        if slots < self.active or capacity < used or capacity < 1:
            raise ValueError(f"resize to {slots} slots x {capacity} positions: {self.active} "
                             f"rows are active, the longest holds {used} positions")
        if (capacity, slots) == (self.capacity, self.slots):
            return
        for layer in self.slot_layers:
            layer.resize(slots, capacity, self.active, used)
        self.lengths = self.lengths[: self.active] + [0] * (slots - self.active)
        self._plan = None

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.active:
            raise IndexError(f"slot {row} is not active (rows 0..{self.active - 1})")


def _chain_mask(base: torch.Tensor, counts: torch.Tensor, q: int, width: int) -> torch.Tensor:
    """[n, 1, q, width] bool: real queries see the row's prefix and its earlier new tokens,
    padding queries only themselves."""
    cols = torch.arange(width)[None, None, :]  # [1, 1, W]
    query = torch.arange(q)[None, :, None]  # [1, Q, 1]
    rel = cols - base[:, :, None]  # [n, 1, W]: new-token index of each column
    real = query < counts[:, :, None]  # [n, Q, 1]
    return (((rel <= query) & real) | (rel == query))[:, None]  # rel < 0: the prefix


def _check_tree(row: int, counts: Sequence[int], tree: torch.Tensor, offsets: Sequence[int]
                ) -> None:
    size = counts[row]
    if tuple(tree.shape) != (size, size) or len(offsets) != size:
        raise ValueError(f"row {row}: tree mask {tuple(tree.shape)} and {len(offsets)} "
                         f"offsets for {size} new tokens")


def kv_pairs(source: DynamicCache | Sequence[KV]) -> list[KV]:
    """Per layer ``(keys, values)`` of a DynamicCache's initialized layers (or the pairs)."""
    if isinstance(source, DynamicCache):
        layers = [layer for layer in source.layers if isinstance(layer, CacheLayerMixin)]
        return [(layer.keys, layer.values) for layer in layers
                if layer.keys is not None and layer.values is not None]
    return list(source)
