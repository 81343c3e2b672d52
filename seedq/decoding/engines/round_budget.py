"""The KV memory budget of the round batcher (``SEEDQ_ROUND_KV_MB``, 0 = unlimited).

The round keeps its rows' KV either in ONE left-padded batched cache (``SEEDQ_ROUND_KV=
dynamic``): ``rows x width`` positions per layer, where the width is the longest live row
(columns that became padding for every row are trimmed); or in a preallocated slot cache
(``slots``, the default): ``slots x capacity`` positions, grown on demand up to the rows'
own bound below (:mod:`~seedq.decoding.engines.round_slots`). A row's cache grows by one
position per step until it has committed its ``max_new_tokens``, so the round can grow to at
most

    estimate = rows x max over rows of (cache length + remaining max_new_tokens)
               x per-token KV bytes (layers x 2 (K, V) x kv_heads x head_dim x dtype size)

(a waiting group counts each sequence as prompt tokens + max_new_tokens). This bound is what
admission checks: the head of the FCFS queue waits (the loop goes on decoding the live rows,
it never spins) until the live rows plus its own fit; a group whose rows alone do not fit
fails with a :class:`DecodingError` naming the setting. Not counted: transient copies (a
join's per-sequence caches and the merged layer being built, ``DynamicCache``'s concatenation
during a forward: up to one extra layer; a slot cache's reallocation: old and new side by
side), activations and logits, and the prefix cache (``SEEDQ_PREFIX_CACHE_MB``); and, in a
slot cache, the scratch positions of draft padding past a row's bound. Observed KV bytes
(the real tensors, allocated slots and positions for a slot cache) and rows are kept as
peaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seedq.decoding.engines.round_batch import _layers
from seedq.decoding.models import LanguageModel
from seedq.decoding.slot_cache import SlotCache
from seedq.decoding.types import DecodingError

if TYPE_CHECKING:
    from seedq.decoding.engines.round_batch import RoundGroup, RoundStorage

MB = 1 << 20


def kv_bytes_per_token(model: LanguageModel) -> int:
    """KV bytes one position of one row takes in the cache, from the model's config."""
    config = model.model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    layers = int(config.num_hidden_layers)
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    size = torch.empty((), dtype=model.dtype).element_size()
    return layers * 2 * heads * int(head_dim) * size


def cache_bytes(batch: RoundStorage) -> int:
    """The bytes the round's cache tensors hold now (a slot cache: all it allocated)."""
    if batch.cache is None:
        return 0
    if isinstance(batch.cache, SlotCache):
        return batch.cache.bytes
    return sum(int(layer.keys.nbytes) + int(layer.values.nbytes)
               for layer in _layers(batch.cache))


@dataclass
class KvStats:
    peak_kv_bytes: int = 0  # the round cache's tensors, observed after each join and forward
    peak_rows: int = 0
    kv_waits: int = 0  # steps the head group waited for KV room
    kv_rejected: int = 0  # groups failed because their rows alone exceed the budget


class KvBudget:
    def __init__(self, model: LanguageModel, limit: int = 0) -> None:
        self.limit = limit  # bytes (DecodingOptions.round_kv_bytes); 0 = unlimited
        try:
            self.per_token = kv_bytes_per_token(model)
        except (AttributeError, TypeError) as exc:  # not a transformers config
            if self.limit:
                raise DecodingError(f"SEEDQ_ROUND_KV_MB needs the model's KV shape: {exc}"
                                    ) from exc
            self.per_token = 0

    def spans(self, group: RoundGroup) -> list[int]:
        """Each sequence's final cache length bound, before its prefill (kept on the group:
        the head of the queue is checked before every step while it waits)."""
        if group.kv_spans is None:
            runtime, request = group.runtime, group.request
            group.kv_spans = [len(runtime.tokenizer.encode(prompt, request.chat))
                              + request.params_for(i).max_new_tokens
                              for i, prompt in enumerate(request.prompts)]
        return group.kv_spans

    def estimate(self, batch: RoundStorage, spans: list[int]) -> int:
        """Bytes the round can grow to with the live rows plus rows of ``spans``."""
        live = [row.position + max(row.state.remaining, 0) for row in batch.rows]
        rows = len(live) + len(spans)
        if not rows:
            return 0
        return rows * max([batch.width, *live, *spans]) * self.per_token

    def check(self, batch: RoundStorage, group: RoundGroup) -> bool:
        """True if the group fits with the live rows now; False if it must wait; raises if
        it can never fit (its rows alone exceed the budget)."""
        if not self.limit:
            return True
        spans = self.spans(group)
        alone = len(spans) * max(spans, default=0) * self.per_token
        if alone > self.limit:
            raise DecodingError(
                f"the group's KV cache (estimated {alone / MB:.2f} MB: {len(spans)} rows x "
                f"{max(spans)} positions x {self.per_token} bytes) exceeds SEEDQ_ROUND_KV_MB="
                f"{self.limit / MB:g}; raise the setting or lower max_new_tokens / the group")
        return self.estimate(batch, spans) <= self.limit

    def observe(self, batch: RoundStorage, stats: KvStats) -> None:
        """Record the round's KV bytes and rows now, in the stats and in each live group."""
        used, rows = cache_bytes(batch), len(batch.rows)
        stats.peak_kv_bytes = max(stats.peak_kv_bytes, used)
        stats.peak_rows = max(stats.peak_rows, rows)
        for group in batch.groups():
            group.peak_kv_bytes = max(group.peak_kv_bytes, used)
            group.peak_rows = max(group.peak_rows, rows)
