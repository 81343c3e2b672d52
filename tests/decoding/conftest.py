"""Tiny random Llama models and an in-process tokenizer for the decoding tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from seedq.decoding.config import EngineConfig
from seedq.decoding.factory import LocalGenerator, generator_from_models
from seedq.decoding.loading import LoadedModel, wrap
from seedq.decoding.options import DecodingOptions
from seedq.decoding.tiny import perturbed_copy, tiny_model, tiny_tokenizer

# The tiny models gain nothing from intra-op threads, and OpenMP threads spinning on a busy
# 2-core machine (another test run, a benchmark) slow every tiny op down many times over.
torch.set_num_threads(1)

PROMPTS = (
    "the red block is on",
    "how many eggs",
    "she sold 12 apples each day",
    "Question 1: what is 3 + 4",
    "stack the blue block on top of the",
    "a",
    "first plan then write a coherent paragraph",
    "the red block is clear",
)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def target(tokenizer: Any) -> LoadedModel:
    return wrap(tiny_model(0), tokenizer, "tiny")


@pytest.fixture(scope="session")
def close_draft(tokenizer: Any) -> LoadedModel:
    """Agrees with the target on a good share of tokens."""
    return wrap(perturbed_copy(tiny_model(0), 0.05), tokenizer, "tiny-close")


@pytest.fixture(scope="session")
def far_draft(tokenizer: Any) -> LoadedModel:
    """An unrelated random model: mostly rejected, so the residual path is exercised."""
    return wrap(tiny_model(7, layers=1, hidden=32), tokenizer, "tiny-far")


@pytest.fixture(scope="session")
def skewed_draft(tokenizer: Any) -> LoadedModel:
    """Same top tokens as the target but a much flatter, slightly noisy distribution: far
    from the target (joint total variation ~0.6) yet overlapping, so drafts are sometimes
    accepted and sometimes corrected from the residual."""
    model = perturbed_copy(tiny_model(0), 0.02, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.2)
    return wrap(model, tokenizer, "tiny-skewed")


def make(config: EngineConfig, target: LoadedModel, draft: LoadedModel | None,
         options: DecodingOptions | None = None) -> LocalGenerator:
    """A generator over loaded models with these decoding options (default: the defaults,
    whatever the environment says)."""
    return generator_from_models(config, target, draft, options=options or DecodingOptions())
