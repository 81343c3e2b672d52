"""Sampling losslessness: the first two generated tokens of sd, mcsd (both rules), seed and
prompt-lookup drafting follow the target's own (warped) joint distribution.

2000 seeded draws in one group, top-k 4 so the joint has at most 16 outcomes; the exact
joint comes from the target model. Tolerance: total variation < 0.06, about 2x the expected
sampling noise at this size (~0.03), and far below the distance of the draft's own
distribution (~0.6), which the test checks so that it can fail."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

from seedq.decoding import kvcache
from seedq.decoding.config import EngineConfig
from seedq.decoding.loading import LoadedModel
from seedq.decoding.sampling import warp_probs
from seedq.decoding.types import GroupRequest, SamplingParams
from tests.decoding.conftest import make

PROMPT = "how many eggs"
PARAMS = SamplingParams(temperature=1.0, top_k=4, max_new_tokens=3, seed=1000)
DRAWS = 2000
TOLERANCE = 0.06


def exact_joint(model: LoadedModel) -> dict[tuple[int, int], float]:
    ids = model.tokenizer.encode(PROMPT)
    first = warp_probs(model.model.forward_chain(ids, kvcache.new_cache())[-1], PARAMS)
    joint = {}
    for x1 in torch.nonzero(first).flatten().tolist():
        logits = model.model.forward_chain(ids + [x1], kvcache.new_cache())[-1]
        second = warp_probs(logits, PARAMS)
        for x2 in torch.nonzero(second).flatten().tolist():
            joint[(x1, x2)] = float(first[x1] * second[x2])
    return joint


def total_variation(samples: list[tuple[int, int]], joint: dict[tuple[int, int], float]) -> float:
    counts = Counter(samples)
    keys = set(counts) | set(joint)
    return sum(abs(counts[k] / len(samples) - joint.get(k, 0.0)) for k in keys) / 2


@pytest.fixture(scope="module")
def target_joint(target: LoadedModel) -> dict[tuple[int, int], float]:
    return exact_joint(target)


def test_the_draft_differs_from_the_target(target_joint: dict[tuple[int, int], float],
                                           skewed_draft: LoadedModel) -> None:
    draft_joint = exact_joint(skewed_draft)
    distance = sum(abs(target_joint.get(k, 0) - draft_joint.get(k, 0))
                   for k in set(target_joint) | set(draft_joint)) / 2
    assert distance > 3 * TOLERANCE


@pytest.mark.parametrize(
    "options",
    [
        dict(engine="ar"),
        dict(engine="sd", gamma=2),
        dict(engine="mcsd", k_config=(2, 2), mcsd_rule="with"),
        dict(engine="mcsd", k_config=(3, 2), mcsd_rule="without"),
        dict(engine="seed", gamma=2, verify_batch=4),
        dict(engine="seed", k_config=(2, 2), draft_batch=8, draft_threads=1),
        dict(engine="sd", gamma=2, draft="ngram"),
    ],
    ids=lambda o: "-".join(f"{v}" for v in o.values()),
)
def test_first_tokens_follow_target_distribution(
    options: dict[str, Any], target: LoadedModel, skewed_draft: LoadedModel,
    target_joint: dict[tuple[int, int], float],
) -> None:
    options.setdefault("draft", "tiny-skewed" if options["engine"] != "ar" else None)
    generator = make(EngineConfig(target="tiny", **options), target, skewed_draft)
    try:
        result = generator.run(GroupRequest((PROMPT,) * DRAWS, PARAMS))
    finally:
        generator.close()
    samples = [(s.token_ids[0], s.token_ids[1]) for s in result.sequences
               if len(s.token_ids) >= 2]
    assert len(samples) > 0.95 * DRAWS
    assert total_variation(samples, target_joint) < TOLERANCE
    if options["engine"] != "ar" and options.get("draft") != "ngram":
        assert sum(s.metrics.accepted_tokens for s in result.sequences) > 0


def test_seeded_sampling_is_reproducible(target: LoadedModel, close_draft: LoadedModel) -> None:
    request = GroupRequest(("she sold",) * 4, SamplingParams(temperature=0.9, top_p=0.9,
                                                            max_new_tokens=20, seed=5))
    outputs = []
    for _ in range(2):
        generator = make(EngineConfig(engine="seed", target="tiny", draft="x"), target,
                         close_draft)
        outputs.append([s.token_ids for s in generator.run(request).sequences])
        generator.close()
    assert outputs[0] == outputs[1]
    assert len({tuple(t) for t in outputs[0]}) > 1  # siblings differ
