"""A draft identical to the target accepts everything, tree drafts included: with the
k-config (2, 1, 1) every round accepts all three depths and adds the bonus token, so a
target forward yields len(k) + 1 = 4 tokens, greedy and sampled (the draft and the target
warp alike, so p = q and min(1, p/q) = 1). Wrong draft-cache rollback after a tree round, or
a warp applied to one side only, shows up here as rejections."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from seedq.decoding.config import EngineConfig
from seedq.decoding.loading import LoadedModel
from seedq.decoding.tree import tree_size
from seedq.decoding.types import GroupRequest, SamplingParams
from tests.decoding.conftest import PROMPTS, make

K_CONFIG = (2, 1, 1)
ROUNDS = 5
WARPS = {
    "greedy": SamplingParams(),
    "t0.7-topk5": SamplingParams(temperature=0.7, top_k=5),
    "t0.7-topp0.8": SamplingParams(temperature=0.7, top_p=0.8),
}


@pytest.mark.parametrize("warp", WARPS)
@pytest.mark.parametrize(
    "options",
    [
        dict(engine="mcsd", mcsd_rule="without"),
        dict(engine="mcsd", mcsd_rule="with"),
        dict(engine="seed", mcsd_rule="without"),
        dict(engine="seed", mcsd_rule="with", verify_batch=4, draft_batch=4, draft_threads=1),
    ],
    ids=["mcsd-without", "mcsd-with", "seed-without", "seed-with-V4-B4"],
)
def test_identical_tree_draft_accepts_everything(options: dict[str, Any], warp: str,
                                                 target: LoadedModel) -> None:
    depth = len(K_CONFIG)
    params = replace(WARPS[warp], max_new_tokens=ROUNDS * (depth + 1), seed=7)
    config = EngineConfig(target="tiny", draft="tiny", k_config=K_CONFIG, **options)
    generator = make(config, target, target)
    try:
        result = generator.run(GroupRequest(PROMPTS, params))
    finally:
        generator.close()
    full = [s for s in result.sequences if s.finish_reason == "length"]
    assert len(full) >= len(PROMPTS) // 2  # the rest hit EOS early
    for seq in full:
        m = seq.metrics
        assert m.target_forwards == ROUNDS
        # a nucleus or top-k set smaller than k gives fewer distinct candidates
        assert m.drafted_tokens <= ROUNDS * tree_size(K_CONFIG)
        assert m.accepted_tokens == ROUNDS * depth
        assert m.new_tokens / m.target_forwards == depth + 1
