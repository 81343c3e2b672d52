"""Attention for multi-token forwards of grouped-query models, without copying the KV.

transformers' ``sdpa`` attention handles grouped-query attention (fewer key/value heads
than query heads, SmolLM2: 9 query heads over 3 KV heads) in three ways: no mask ->
``enable_gqa``; one query token -> the query heads are folded onto their KV head; any other
forward with a mask -> ``repeat_kv``, a copy of every layer's whole key/value cache,
expanded ``n_rep`` times, on every forward. Verify forwards (a row's pending token plus its
draft, with a padding/tree mask) are exactly that last case: on this CPU the copy made a
3-token verify of 8 rows over 512 cached tokens cost 3.9 ms of attention per layer instead
of 1.0 ms.

:func:`packed_sdpa` folds the query heads of a KV head into the query axis instead
(``[B, H, Q, D] -> [B, H_kv, n_rep * Q, D]``, the mask repeated along that axis), so the
attention reads the cache in place; the arithmetic per query row is unchanged. Every other
case goes to transformers' own ``sdpa`` function. :func:`install` switches a model to it
(registered as ``seedq_sdpa`` with ``sdpa``'s mask builder); ``SEEDQ_ATTENTION=sdpa`` keeps
transformers' attention; :func:`reference` switches back temporarily (the HF reference
rows of the benchmarks measure transformers as shipped).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from seedq.decoding.options import ATTENTION_KINDS
from seedq.decoding.packed import PLAN_KEY, folded_sdpa, packed_attention

log = logging.getLogger(__name__)

NAME = "seedq_sdpa"


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, attention_mask: torch.Tensor | None,
                dropout: float = 0.0, scaling: float | None = None,
                is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``sdpa`` attention; grouped-query forwards of several tokens with a mask run on the
    KV heads in place. query [B, H, Q, D], key/value [B, H_kv, K, D], attention_mask
    [B or 1, 1, Q, K] -> output [B, Q, H, D]."""
    n_rep = int(getattr(module, "num_key_value_groups", 1))
    plan = kwargs.get(PLAN_KEY)
    if plan is not None:  # a packed forward (seedq.decoding.packed): attention per part
        layer: Any = module.layer_idx
        return packed_attention(plan, int(layer), query, n_rep, scaling), None
    heads, q_len, dim = query.shape[1:]
    kv_heads = key.shape[1]
    if (n_rep == 1 or q_len == 1 or attention_mask is None or dropout
            or attention_mask.dim() != 4 or attention_mask.shape[1] != 1
            or kv_heads * n_rep != heads or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None or value.shape[-1] != dim):
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    return folded_sdpa(query, key, value, attention_mask, n_rep, scaling).contiguous(), None


def _register() -> None:
    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, packed_sdpa)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def install(model: Any, kind: str = "packed") -> bool:
    """Switch a transformers model running ``sdpa`` to :func:`packed_sdpa` when ``kind`` is
    ``packed`` (``DecodingOptions.attention``, ``SEEDQ_ATTENTION``); ``sdpa`` keeps
    transformers' own; other implementations (eager, flash) are left alone."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if kind != "packed":
        return False
    _register()
    try:
        model.set_attn_implementation(NAME)
    except Exception as exc:  # an architecture that refuses custom attention
        log.warning("attention: keeping sdpa for %s (%s)", type(model).__name__, exc)
        return False
    return True


def installed(model: Any) -> bool:
    """Whether ``model`` (a transformers model) runs :func:`packed_sdpa` (packed forwards
    of :mod:`seedq.decoding.packed` need it)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME


@contextmanager
def reference(model: Any) -> Iterator[None]:
    """transformers' own ``sdpa`` for the duration (for the HF reference measurements)."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current != NAME:
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(NAME)
