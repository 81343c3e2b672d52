"""KV cache operations on transformers' DynamicCache: length, crop, keep selected slots,
clone, and stacking per-sequence caches into one left-padded batch and back.

Every layer holds keys/values of shape [batch, kv_heads, seq, head_dim].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    return DynamicCache()


def cache_length(cache: DynamicCache) -> int:
    return int(cache.get_seq_length())


def _layers(cache: DynamicCache) -> list:  # type: ignore[type-arg]
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]


def crop(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions (in place)."""
    for layer in _layers(cache):
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]


def keep_slots(cache: DynamicCache, prefix: int, slots: Sequence[int]) -> None:
    """Keep positions [0, prefix) followed by the given absolute positions, in order (in place).

    Used after a tree verification to keep only the accepted path's entries."""
    if all(slot == prefix + i for i, slot in enumerate(slots)):
        crop(cache, prefix + len(slots))
        return
    for layer in _layers(cache):
        index = torch.cat(
            [
                torch.arange(prefix, device=layer.keys.device),
                torch.tensor(list(slots), dtype=torch.long, device=layer.keys.device),
            ]
        )
        layer.keys = layer.keys.index_select(-2, index)
        layer.values = layer.values.index_select(-2, index)


def clone(cache: DynamicCache) -> DynamicCache:
    data = [(layer.keys.clone(), layer.values.clone()) for layer in _layers(cache)]
    return DynamicCache(ddp_cache_data=data) if data else DynamicCache()


def stack(caches: Sequence[DynamicCache]) -> tuple[DynamicCache, list[int]]:
    """Left-pad per-sequence caches (batch 1 each) to one batched cache.

    Returns the batched cache and each row's padding (number of dummy leading positions)."""
    lengths = [cache_length(c) for c in caches]
    longest = max(lengths)
    pads = [longest - n for n in lengths]
    per_layer = [_layers(c) for c in caches]
    n_layers = max(len(layers) for layers in per_layer)
    if n_layers == 0:
        return DynamicCache(), pads
    template = next(layers for layers in per_layer if layers)
    data = []
    for li in range(n_layers):
        keys = [_padded(layers, li, pad, longest, template, "keys") for layers, pad in
                zip(per_layer, pads, strict=True)]
        values = [_padded(layers, li, pad, longest, template, "values") for layers, pad in
                  zip(per_layer, pads, strict=True)]
        data.append((torch.cat(keys, dim=0), torch.cat(values, dim=0)))
    return DynamicCache(ddp_cache_data=data), pads


def _padded(layers: list, li: int, pad: int, longest: int, template: list,  # type: ignore[type-arg]
            attr: str) -> torch.Tensor:
    ref = getattr(template[li], attr)
    if not layers:
        shape = (1, ref.shape[1], longest, ref.shape[3])
        return torch.zeros(shape, dtype=ref.dtype, device=ref.device)
    tensor = getattr(layers[li], attr)
    if pad == 0:
        return tensor
    zeros = torch.zeros((1, ref.shape[1], pad, ref.shape[3]), dtype=ref.dtype, device=ref.device)
    return torch.cat([zeros, tensor], dim=-2)


def unstack(batched: DynamicCache, pads: Sequence[int], keep: Sequence[int]) -> list[DynamicCache]:
    """Split a batched cache back into per-sequence caches: row b drops its ``pads[b]`` leading
    dummy positions and keeps ``keep[b]`` positions after them."""
    layers = _layers(batched)
    out = []
    for row, (pad, n) in enumerate(zip(pads, keep, strict=True)):
        data = [
            (
                layer.keys[row : row + 1, :, pad : pad + n, :].clone(),
                layer.values[row : row + 1, :, pad : pad + n, :].clone(),
            )
            for layer in layers
        ]
        out.append(DynamicCache(ddp_cache_data=data))
    return out


def cache_bytes(cache: DynamicCache) -> int:
    return sum(
        layer.keys.numel() * layer.keys.element_size()
        + layer.values.numel() * layer.values.element_size()
        for layer in _layers(cache)
    )
