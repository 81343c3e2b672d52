"""Model and tokenizer adapters: the only place that calls a transformers model's forward."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache

from seedq.decoding import attention
from seedq.decoding.tree import additive_mask


class LanguageModel:
    """A causal LM on one device. Logits come back as float32, cut to ``vocab_size``."""

    def __init__(self, model: Any, vocab_size: int, name: str = "model",
                 attention_kind: str = "packed") -> None:
        self.model = model.eval()
        attention.install(model, attention_kind)  # grouped-query verify without a KV copy
        self.vocab_size = vocab_size
        self.name = name
        first = next(model.parameters())
        self.device = first.device
        self.dtype = first.dtype if first.is_floating_point() else torch.float32
        self.forwards = 0  # forward calls, for benchmarks

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [B, Q] long
        cache: Cache,  # a DynamicCache, or a SlotCache (seedq.decoding.slot_cache)
        attention_mask: torch.Tensor | None = None,  # [B, 1, Q, K] bool (True = attend) or None
        position_ids: torch.Tensor | None = None,  # [B, Q] long
        keep: int | torch.Tensor = 0,  # logits of the last `keep` positions only (0: all),
        # or of the positions a 1D index tensor names (the same for every row)
    ) -> torch.Tensor:  # [B, Q or keep, V] float32, on the model's device
        kwargs: dict[str, Any] = {"cache": cache, "use_cache": True, "logits_to_keep": keep}
        if attention_mask is not None:
            kwargs["attention_mask"] = additive_mask(attention_mask, self.dtype).to(self.device)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids.to(self.device)
        out = self.model(input_ids=input_ids.to(self.device), **kwargs)
        self.forwards += 1
        return out.logits[..., : self.vocab_size].float()

    def forward_chain(self, tokens: Sequence[int], cache: DynamicCache, keep: int = 0
                      ) -> torch.Tensor:
        """Causal forward of one sequence's new tokens [Q] on its cache -> logits [Q|keep, V]."""
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        return self.forward(ids, cache, keep=keep)[0]

    def forward_masked(
        self,
        tokens: Sequence[int],
        cache: DynamicCache,
        mask: torch.Tensor,  # [Q, K] bool
        positions: torch.Tensor,  # [Q] long
        keep: int = 0,
    ) -> torch.Tensor:  # [Q|keep, V]
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        return self.forward(ids, cache, mask[None, None], positions[None], keep)[0]


class Tokenizer:
    """Encodes prompts (optionally through the chat template) and decodes outputs."""

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        ids = {int(i) for i in eos_token_ids}
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        self.eos_token_ids = frozenset(ids)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        if chat and self.has_chat_template:
            encoded = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )
            return [int(t) for t in encoded["input_ids"]]
        ids = [int(t) for t in self.tokenizer(prompt, add_special_tokens=True)["input_ids"]]
        if not ids:
            bos = self.tokenizer.bos_token_id
            ids = [int(bos if bos is not None else next(iter(sorted(self.eos_token_ids))))]
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def same_vocabulary(self, other: Tokenizer) -> bool:
        return bool(self.tokenizer.get_vocab() == other.tokenizer.get_vocab())
