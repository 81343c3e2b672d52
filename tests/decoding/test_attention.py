"""Packed grouped-query attention (seedq.decoding.attention) against transformers' sdpa."""

from __future__ import annotations

import pytest
import torch

from seedq.decoding import attention, kvcache
from seedq.decoding.loading import wrap
from seedq.decoding.models import LanguageModel
from seedq.decoding.tiny import tiny_model, tiny_tokenizer

VOCAB = 300


def _masked_batch(rows: int = 3, q: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids [rows, q], a causal mask with different left padding per row [rows, 1, q, q],
    positions [rows, q]."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (rows, q), generator=generator)
    mask = torch.ones((rows, 1, q, q), dtype=torch.bool).tril()
    positions = torch.zeros((rows, q), dtype=torch.long)
    for row in range(rows):
        pad = 2 * row
        mask[row, 0, :, :pad] = False
        mask[row, 0, :pad, :pad] = torch.eye(pad, dtype=torch.bool)  # padding sees itself
        positions[row, pad:] = torch.arange(q - pad)
    return ids, mask, positions


def _forward_twice(model: LanguageModel, ids: torch.Tensor, mask: torch.Tensor,
                   positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    packed = model.forward(ids, kvcache.new_cache(), mask, positions)
    with attention.reference(model.model):
        plain = model.forward(ids, kvcache.new_cache(), mask, positions)
    return packed, plain


def test_packed_attention_matches_sdpa_on_masked_multi_token_forwards() -> None:
    model = LanguageModel(tiny_model(), VOCAB)
    assert model.model.config._attn_implementation == attention.NAME
    ids, mask, positions = _masked_batch()
    packed, plain = _forward_twice(model, ids, mask, positions)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)


def test_packed_attention_matches_on_a_verify_forward_over_a_cache() -> None:
    model = LanguageModel(tiny_model(seed=3), VOCAB)
    prompt = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(2))
    cache = kvcache.new_cache()
    model.forward_chain(prompt[0].tolist(), cache)
    draft = torch.tensor([[5, 17, 42, 9]])
    mask = torch.ones((1, 1, 4, 34), dtype=torch.bool)
    mask[0, 0, :, 30:] = torch.ones((4, 4), dtype=torch.bool).tril()
    positions = torch.arange(30, 34)[None]
    verify = model.forward(draft, kvcache.clone(cache), mask, positions)
    with attention.reference(model.model):
        plain = model.forward(draft, kvcache.clone(cache), mask, positions)
    torch.testing.assert_close(verify, plain, rtol=1e-5, atol=1e-5)


def test_packed_path_is_the_one_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    model = LanguageModel(tiny_model(), VOCAB)
    shapes: list[tuple[int, ...]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        shapes.append(tuple(query.shape))
        return sdpa(query, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ids, mask, positions = _masked_batch(rows=2, q=5)
    model.forward(ids, kvcache.new_cache(), mask, positions)
    config = model.model.config
    kv_heads, heads = config.num_key_value_heads, config.num_attention_heads
    head_dim = config.hidden_size // heads
    assert shapes and set(shapes) == {(2, kv_heads, heads // kv_heads * 5, head_dim)}


def test_sdpa_setting_keeps_transformers_attention() -> None:
    model = LanguageModel(tiny_model(), VOCAB, attention_kind="sdpa")
    assert model.model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="attention must be one of packed, sdpa"):
        LanguageModel(tiny_model(), VOCAB, attention_kind="fast")
    loaded = wrap(tiny_model(), tiny_tokenizer(), "tiny", "sdpa")
    assert loaded.model.model.config._attn_implementation == "sdpa"


def test_reference_switches_back_and_restores() -> None:
    model = LanguageModel(tiny_model(), VOCAB)
    with attention.reference(model.model):
        assert model.model.config._attn_implementation == "sdpa"
    assert model.model.config._attn_implementation == attention.NAME
