"""Packed (varlen) forwards: prefill chains and a slot cache's rows in ONE target forward.

A round's decode/verify forward of ``n`` rows is memory-bound on a CPU as on a GPU: every
forward streams all weights, so 12 rows x 1 token cost 128 ms on this machine's 2 cores for
SmolLM2-135M over 500 cached tokens while a 64-token prefill chunk cost 216 ms alone and a
76-token forward 229 ms. Feeding the prefill tokens and the rows' tokens together saves
most of a forward per chunk (vLLM's and SGLang's chunked prefill mixed into decode).

Padding the rows to the chunk's length would cost ``rows x chunk`` tokens, so the tokens are
packed into one sequence (``input_ids`` ``[1, T]``, each token with its own position id) and
only attention is split: :class:`PackedCache` (the model's cache for that forward) appends
each chain's keys/values to its own batch-1 ``DynamicCache`` and writes the rows' into their
slots in place (``SlotCache``); :func:`packed_attention` (called by
:func:`seedq.decoding.attention.packed_sdpa` when the forward carries a :class:`PackedPlan`)
attends each chain causally over its cache and the rows, gathered into ``[n, H, q, D]``, over
their slots with the slot cache's mask, then packs the outputs back. The linear layers, most
of the work, see ``T`` tokens with no padding. Same arithmetic per query as separate
forwards (float32 rounding aside).

Layout of the packed tokens: every chain's tokens in order, then row 0's tokens, row 1's, ...
(row b: ``counts[b]`` tokens at positions ``length_b ...``). Nothing here commits a row: as
with :meth:`SlotCache.prepare`, lengths change only when the caller commits; chains grow by
their tokens (cropped back when the forward fails).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache

from seedq.decoding import kvcache
from seedq.decoding.slot_cache import KV, SlotCache

PLAN_KEY = "seedq_packed"  # the forward's keyword that carries the plan to attention


@dataclass(frozen=True)
class Chain:
    """One sequence's tokens appended causally to its own batch-1 cache; ``need``: logits of
    its last ``need`` tokens are returned (0: none, a prefill chunk)."""

    tokens: list[int]
    cache: DynamicCache
    need: int = 0


@dataclass
class PackedPlan:
    """What one packed forward's layers need (built by :func:`plan_packed`)."""

    chains: list[Chain]
    starts: list[int]  # per chain: its cache length before the forward
    counts: list[int]  # per slot row 0..n-1: the tokens it feeds
    row_mask: torch.Tensor | None = None  # [n, 1, q, width] bool (SlotCache.prepare)
    gather: torch.Tensor | None = None  # [n * q] long: packed row-token index per padded query
    scatter: torch.Tensor | None = None  # [row tokens] long: padded index of each row token
    slot_rows: torch.Tensor | None = None  # [row tokens] long: each row token's slot
    slot_positions: torch.Tensor | None = None  # [row tokens] long: its position there
    width: int = 0
    chain_masks: list[torch.Tensor] = field(default_factory=list)  # [1, 1, c, start + c]
    chain_views: dict[int, list[KV]] = field(default_factory=dict)  # per layer, per chain
    row_views: dict[int, KV] = field(default_factory=dict)  # per layer: rows' slot views

    @property
    def chain_tokens(self) -> int:
        return sum(len(chain.tokens) for chain in self.chains)

    @property
    def row_tokens(self) -> int:
        return sum(self.counts)


class PackedCache(Cache):
    """The cache of one packed forward: the chains' caches and the slot cache, per token."""

    def __init__(self, plan: PackedPlan, slots: SlotCache | None) -> None:
        super().__init__(layers=[])
        self.plan = plan
        self.slots = slots

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> KV:
        """``[1, kv, T, hd]`` new states: each chain's part appended to its cache, the rows'
        part written into their slots; returns the first part's keys/values (attention reads
        every part from the plan)."""
        plan, offset = self.plan, 0
        views = plan.chain_views.setdefault(layer_idx, [])
        views.clear()
        for chain in plan.chains:
            c = len(chain.tokens)
            views.append(chain.cache.update(key_states[:, :, offset:offset + c],
                                            value_states[:, :, offset:offset + c], layer_idx))
            offset += c
        if plan.counts:
            assert self.slots is not None and plan.slot_rows is not None
            layer = self.slots.slot_layers[layer_idx]
            keys = key_states[0, :, offset:].transpose(0, 1)  # [row tokens, kv, hd]
            values = value_states[0, :, offset:].transpose(0, 1)
            layer.keys[plan.slot_rows, :, plan.slot_positions] = keys
            layer.values[plan.slot_rows, :, plan.slot_positions] = values
            n = len(plan.counts)
            plan.row_views[layer_idx] = (layer.keys[:n, :, : plan.width],
                                         layer.values[:n, :, : plan.width])
            return plan.row_views[layer_idx]
        return views[0]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return query_length, 0


def plan_packed(chains: Sequence[Chain], slots: SlotCache | None, counts: Sequence[int]
                ) -> tuple[PackedPlan, torch.Tensor]:
    """The plan and the position ids ``[1, T]`` of a packed forward of ``chains`` then slot
    rows ``0..len(counts)-1`` feeding ``counts[b]`` tokens each (a causal chain after the
    row's committed length; the slot cache must have room for them)."""
    if not chains and not counts:
        raise ValueError("a packed forward needs a chain or a row")
    for index, chain in enumerate(chains):
        if not chain.tokens or not 0 <= chain.need <= len(chain.tokens):
            raise ValueError(f"chain {index}: {len(chain.tokens)} tokens, need {chain.need}")
    starts = [kvcache.cache_length(chain.cache) for chain in chains]
    positions = [torch.arange(start, start + len(chain.tokens))
                 for start, chain in zip(starts, chains, strict=True)]
    plan = PackedPlan(list(chains), starts, list(counts))
    if counts:
        if slots is None or min(counts) < 1:
            raise ValueError(f"packed rows {list(counts)} need a slot cache and a token each")
        step = slots.prepare(list(counts))  # [n, 1, q, width] mask, [n, q] positions
        q = max(counts)
        real = torch.arange(q)[None, :] < torch.tensor(list(counts))[:, None]  # [n, q]
        padded = torch.arange(len(counts) * q).reshape(len(counts), q)
        scatter = padded[real]  # [row tokens]: each real token's padded index, packed order
        gather = torch.zeros(len(counts) * q, dtype=torch.long)
        gather[scatter] = torch.arange(len(scatter))  # padding queries read token 0 (unused)
        device = slots.device
        plan.row_mask, plan.width = step.attention_mask.to(device), step.width
        plan.gather, plan.scatter = gather.to(device), scatter.to(device)
        plan.slot_rows = torch.arange(len(counts))[:, None].expand(-1, q)[real].to(device)
        plan.slot_positions = step.position_ids[real].to(device)
        positions.append(step.position_ids[real])
    for chain, start in zip(chains, starts, strict=True):
        c = len(chain.tokens)  # [1, 1, c, start + c]: causal after the chain's cache
        causal = torch.arange(start + c)[None, :] <= (start + torch.arange(c))[:, None]
        plan.chain_masks.append(causal[None, None].to(chain_device(chain)))
    return plan, torch.cat(positions)[None, :]


def chain_device(chain: Chain) -> torch.device:
    """Where the chain's cache lives (the CPU while it is empty)."""
    layers: list[Any] = [layer for layer in chain.cache.layers
                         if getattr(layer, "is_initialized", False)]
    return layers[0].keys.device if layers else torch.device("cpu")


def packed_attention(plan: PackedPlan, layer_idx: int, query: torch.Tensor, n_rep: int,
                     scaling: float | None) -> torch.Tensor:
    """Attention of a packed forward's queries ``[1, H, T, D]`` -> ``[1, T, H, D]``: each
    chain over its cache, the rows over their slots."""
    outs, offset = [], 0
    for chain, mask, (keys, values) in zip(plan.chains, plan.chain_masks,
                                           plan.chain_views[layer_idx], strict=True):
        c = len(chain.tokens)
        outs.append(folded_sdpa(query[:, :, offset:offset + c], keys, values, mask, n_rep,
                                scaling)[0])  # [c, H, D]
        offset += c
    if plan.counts:
        assert plan.gather is not None and plan.scatter is not None
        keys, values = plan.row_views[layer_idx]
        n, q = len(plan.counts), max(plan.counts)
        rows = query[0, :, offset:][:, plan.gather]  # [H, n * q, D]
        rows = rows.reshape(rows.shape[0], n, q, rows.shape[-1]).transpose(0, 1)  # [n, H, q, D]
        assert plan.row_mask is not None
        out = folded_sdpa(rows, keys, values, plan.row_mask, n_rep, scaling)  # [n, q, H, D]
        outs.append(out.reshape(n * q, *out.shape[2:])[plan.scatter])
    return torch.cat(outs)[None]


def folded_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor, n_rep: int, scaling: float | None) -> torch.Tensor:
    """Grouped-query SDPA on the KV heads in place: query ``[B, H, Q, D]``, key/value ``[B,
    H_kv, K, D]``, bool mask ``[B|1, 1, Q, K]`` (True = attend) -> ``[B, Q, H, D]``."""
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    mask = mask[:, :, :, :kv_len]
    mask = mask[:, :, None].expand(mask.shape[0], 1, n_rep, q_len, kv_len)
    folded = query.reshape(batch, kv_heads, n_rep * q_len, dim)  # head h = kv_head * n_rep + r
    out = torch.nn.functional.scaled_dot_product_attention(
        folded, key, value, attn_mask=mask.reshape(mask.shape[0], 1, n_rep * q_len, kv_len),
        scale=scaling)  # [B, H_kv, n_rep * Q, D]
    return out.reshape(batch, heads, q_len, dim).transpose(1, 2)


def forward_packed(model: Any, chains: Sequence[Chain], slots: SlotCache | None,
                   row_feeds: Sequence[Sequence[int]], rows_last: bool = False
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One packed forward (``model``: a :class:`~seedq.decoding.models.LanguageModel` whose
    attention is :func:`seedq.decoding.attention.packed_sdpa`): ``chains``, then slot rows
    ``0..len(row_feeds)-1`` feeding ``row_feeds[b]``. Returns per chain its last ``need``
    logits ``[need, V]`` and per row ``[len(feed), V]``, or with ``rows_last`` ``[1, V]`` of
    its last fed token only (the LM head skips the others; a draft needs no more); float, on
    the CPU. Rows commit nothing (the caller commits); a failed forward crops every chain
    back to where it was."""
    plan, position_ids = plan_packed(chains, slots, [len(feed) for feed in row_feeds])
    ids = [token for chain in chains for token in chain.tokens]
    ids += [token for feed in row_feeds for token in feed]
    keep = _kept(plan, rows_last)
    device = model.device
    dummy = torch.ones((1, 1, len(ids), 1), dtype=torch.bool, device=device)  # unused
    try:
        out = model.model(input_ids=torch.tensor([ids], device=device), attention_mask=dummy,
                          position_ids=position_ids.to(device), cache=PackedCache(plan, slots),
                          use_cache=True, logits_to_keep=keep.to(device), **{PLAN_KEY: plan})
    except BaseException:
        for chain, start in zip(chains, plan.starts, strict=True):
            kvcache.crop(chain.cache, start)
        raise
    model.forwards += 1
    logits = out.logits[0, :, : model.vocab_size].float().cpu()  # [kept, V]
    per_row = [1] * len(plan.counts) if rows_last else list(plan.counts)
    pieces = list(torch.split(logits, [c.need for c in chains] + per_row))
    return pieces[: len(chains)], pieces[len(chains):]


def _kept(plan: PackedPlan, rows_last: bool = False) -> torch.Tensor:
    """Packed indices whose logits are returned: each chain's last ``need``, every row's
    (``rows_last``: each row's last)."""
    kept: list[int] = []
    offset = 0
    for chain in plan.chains:
        c = len(chain.tokens)
        kept.extend(range(offset + c - min(chain.need, c), offset + c))
        offset += c
    if rows_last:
        ends = torch.tensor(plan.counts, dtype=torch.long).cumsum(0) - 1
        kept.extend((offset + ends).tolist())
    else:
        kept.extend(range(offset, offset + plan.row_tokens))
    return torch.tensor(kept, dtype=torch.long)
