"""Tiny random Llama models with a tokenizer trained in-process.

For tests, smoke runs and CI, where no model hub can be reached: ``tiny`` (the target) and
``tiny-draft`` (a smaller, differently initialised draft). Same tokenizer for both, built
deterministically from a small embedded corpus, with a chat template.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

TINY_TARGET = "tiny"
TINY_DRAFT = "tiny-draft"

_WORDS = (
    "the", "a", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "question", "answer", "step", "plan", "passage", "block", "red", "blue", "orange", "yellow",
    "white", "table", "hand", "stack", "unstack", "pick", "up", "put", "down", "on", "top",
    "of", "is", "clear", "empty", "goal", "state", "so", "she", "he", "they", "has", "have",
    "had", "sold", "bought", "eggs", "apples", "dollars", "each", "per", "day", "week", "total",
    "more", "less", "than", "how", "many", "much", "what", "then", "first", "next", "finally",
    "because", "therefore", "we", "get", "add", "subtract", "multiply", "divide", "by",
    "equals", "number", "score", "value", "best", "choice", "sure", "likely", "impossible",
    "write", "coherent", "paragraph", "end", "sentence",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus() -> list[str]:
    generator = torch.Generator().manual_seed(1234)
    lines = []
    for _ in range(400):
        idx = torch.randint(len(_WORDS), (12,), generator=generator).tolist()
        numbers = torch.randint(0, 1000, (2,), generator=generator).tolist()
        lines.append(" ".join(_WORDS[i] for i in idx) + f" {numbers[0]} + {numbers[1]} = .")
    return lines


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 320) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(seed: int = 0, layers: int = 2, hidden: int = 64, init_range: float = 0.2) -> Any:
    """A random LlamaForCausalLM (float32, eval mode) sized for tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,  # the context workers check prompts against (no weights)
        initializer_range=init_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def perturbed_copy(model: Any, noise: float, seed: int = 1) -> Any:
    """A copy of ``model`` with Gaussian noise added to every weight: a draft that agrees
    with the target often but not always."""
    import copy

    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in clone.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * noise * param.std())
    return clone.eval()
