"""The reference implementation in the same process: Hugging Face ``generate`` on the same
models and prompt token ids as the seedq engines, as seedq ``GroupResult``s so that
``bench/engines.py`` reports them with the same columns.

- ``hf-generate``: one prompt at a time (the serial baseline, like ``ar``);
- ``hf-generate-batched``: all prompts in one left-padded batch (like ``batch``);
- ``hf-assisted[draft]``: assisted generation, ``assistant_model=`` the draft model with a
  constant ``num_assistant_tokens`` = gamma (like ``sd``), or ``prompt_lookup_num_tokens`` =
  gamma for the ``ngram`` draft. HF assisted generation takes one prompt at a time.

Target forward calls are counted with a forward hook on the target model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import torch

from seedq.decoding import attention
from seedq.decoding.loading import NGRAM, LoadedModel
from seedq.decoding.types import GroupRequest, GroupResult, SequenceMetrics, SequenceResult


@contextmanager
def counting_forwards(model: Any) -> Iterator[list[int]]:
    """Counts forward calls of ``model`` (a transformers module) into ``box[0]``; the model
    runs transformers' own attention meanwhile (the reference as shipped)."""
    box = [0]

    def hook(*_: Any) -> None:
        box[0] += 1

    handle = model.register_forward_hook(hook)
    try:
        with attention.reference(model):
            yield box
    finally:
        handle.remove()


def _options(target: LoadedModel, request: GroupRequest) -> dict[str, Any]:
    params = request.params
    eos = sorted(target.tokenizer.eos_token_ids)
    pad = target.tokenizer.tokenizer.pad_token_id
    options: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens, "eos_token_id": eos,
        "pad_token_id": pad if pad is not None else eos[0],
    }
    if params.greedy:
        return {**options, "do_sample": False}
    return {**options, "do_sample": True, "temperature": params.temperature,
            "top_k": params.top_k, "top_p": params.top_p}


def _until_eos(tokens: list[int], eos: frozenset[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


def _sequence(target: LoadedModel, tokens: list[int], forwards: int, wall: float
              ) -> SequenceResult:
    tokens = _until_eos(tokens, target.tokenizer.eos_token_ids)
    reason = "eos" if tokens and tokens[-1] in target.tokenizer.eos_token_ids else "length"
    metrics = SequenceMetrics(new_tokens=len(tokens), target_forwards=forwards,
                              wall_seconds=wall)
    return SequenceResult(target.tokenizer.decode(tokens), tokens, reason, metrics)


def _rss() -> int:
    return int(psutil.Process(os.getpid()).memory_info().rss)


def run_serial(label: str, target: LoadedModel, request: GroupRequest,
               extra: dict[str, Any] | None = None) -> tuple[GroupResult, int]:
    """One ``generate`` call per prompt; returns the result and the target forward calls."""
    hf = target.model.model
    options = {**_options(target, request), **(extra or {})}
    prompts = [target.tokenizer.encode(p, request.chat) for p in request.prompts]
    started, sequences, peak = time.perf_counter(), [], _rss()
    with counting_forwards(hf) as calls, torch.inference_mode():
        for ids in prompts:
            before, began = calls[0], time.perf_counter()
            ids_t = torch.tensor([ids], dtype=torch.long, device=target.model.device)
            out = hf.generate(ids_t, attention_mask=torch.ones_like(ids_t), **options)
            new = out[0, len(ids):].tolist()
            sequences.append(_sequence(target, new, calls[0] - before,
                                       time.perf_counter() - began))
            peak = max(peak, _rss())
    return GroupResult(label, sequences, time.perf_counter() - started, peak), calls[0]


def run_batched(label: str, target: LoadedModel, request: GroupRequest
                ) -> tuple[GroupResult, int]:
    """One ``generate`` call over all prompts, left-padded."""
    hf = target.model.model
    options = _options(target, request)
    prompts = [target.tokenizer.encode(p, request.chat) for p in request.prompts]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), options["pad_token_id"], dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    started = time.perf_counter()
    with counting_forwards(hf) as calls, torch.inference_mode():
        out = hf.generate(ids.to(target.model.device), attention_mask=mask.to(target.model.device),
                          **options)
    wall = time.perf_counter() - started
    sequences = [_sequence(target, out[row, width:].tolist(), calls[0], wall)
                 for row in range(len(prompts))]
    return GroupResult(label, sequences, wall, _rss()), calls[0]


def run_assisted(label: str, target: LoadedModel, draft_name: str, draft: LoadedModel | None,
                 request: GroupRequest, gamma: int) -> tuple[GroupResult, int]:
    """HF assisted generation (speculative decoding) one prompt at a time."""
    if draft_name == NGRAM:
        return run_serial(label, target, request, {"prompt_lookup_num_tokens": gamma})
    assert draft is not None
    extra = {"assistant_model": draft.model.model, "num_assistant_tokens": gamma,
             "num_assistant_tokens_schedule": "constant"}
    with attention.reference(draft.model.model):
        return run_serial(label, target, request, extra)
