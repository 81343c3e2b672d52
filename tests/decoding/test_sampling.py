"""Sampling losslessness: every engine's sampled tokens follow the target's own warped
distribution, bonus tokens included.

Each case draws DRAWS (the tree: twice that) seeded sequences of ``length`` tokens from one
prompt in one group, where ``length`` is at least the draft depth + 1, so the bonus token
drawn after a fully accepted draft is inside the tested distribution (bonus tokens land on
the last position, which the test asserts is tested); three warps: temperature 0.7 alone,
with top-k 3, with top-p 0.6.

The test is a chi-square goodness of fit per context: for every position t and every prefix
h (the first t - 1 sampled tokens) seen at least MIN_CONTEXT times, the counts of token t are
compared with the exact target conditional p(. | prompt + h), from one target forward per
prefix; cells expected fewer than 5 times are pooled. The tokens follow the target iff every
conditional does, and the per-context statistics add up to a chi-square with the summed
degrees of freedom: the test fails above its 1 - 1e-4 quantile, and at once when a token the
target gives probability zero (outside top-k / top-p) appears. The draft's own distribution
is checked to be far from the target's, so a sampler that followed the draft would fail.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Any

import pytest
import torch

from seedq.decoding import kvcache
from seedq.decoding.config import EngineConfig
from seedq.decoding.loading import LoadedModel, wrap
from seedq.decoding.options import DecodingOptions
from seedq.decoding.sampling import warp_probs
from seedq.decoding.tiny import perturbed_copy, tiny_model
from seedq.decoding.types import GroupRequest, SamplingParams
from tests.decoding.conftest import make

PROMPT = "how many eggs"
DRAWS = 400
MIN_CONTEXT = 20  # contexts seen fewer times are not tested
MIN_EXPECTED = 5.0  # chi-square cells expected fewer times are pooled
Z_1E4 = 3.719  # standard normal 1 - 1e-4 quantile

WARPS = {
    "t0.7": SamplingParams(temperature=0.7),
    "t0.7-topk3": SamplingParams(temperature=0.7, top_k=3),
    "t0.7-topp0.6": SamplingParams(temperature=0.7, top_p=0.6),
}

# (engine options, tokens per sequence, draws): the bonus token after a full draft is inside;
# the (2, 1, 1) tree's bonus tokens are rarer, its batched draws cheaper
CASES = {
    "batch": (dict(engine="batch"), 3, DRAWS),
    "sd-g1": (dict(engine="sd", gamma=1), 3, DRAWS),
    "mcsd-2-with": (dict(engine="mcsd", k_config=(2,), mcsd_rule="with"), 2, DRAWS),
    "mcsd-31-without": (dict(engine="mcsd", k_config=(3, 1), mcsd_rule="without"), 3, DRAWS),
    "seed-chain-g2": (dict(engine="seed", gamma=2, verify_batch=64, draft_batch=64,
                           draft_threads=1), 3, DRAWS),
    "seed-tree-211": (dict(engine="seed", k_config=(2, 1, 1), mcsd_rule="without",
                           verify_batch=64, draft_batch=64, draft_threads=1), 4, 2 * DRAWS),
    "sd-ngram": (dict(engine="sd", gamma=2, draft="ngram"), 3, DRAWS),
    # auto: draft lengths drawn at random per row and step (0..2), inside the round batcher
    "auto-random-g2": (dict(engine="auto", gamma=2), 4, 2 * DRAWS),
    # seed in the round batcher: the prefill commits token 1, one full draft of 2 + bonus
    "seed-round-g2": (dict(engine="seed", gamma=2), 4, DRAWS),
}
RUNS = [(case, warp) for case in CASES for warp in WARPS
        if case != "sd-ngram" or warp == "t0.7-topk3"]  # prompt lookup: one warp is enough


SHARPEN = 1.3


@pytest.fixture(scope="module")
def sharp_target(tokenizer: Any) -> LoadedModel:
    """The tiny target with its logits scaled by SHARPEN: peaked enough that the likeliest
    paths recur often enough to test the last positions, where bonus tokens land."""
    model = tiny_model(0)
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    return wrap(model, tokenizer, "tiny")


@pytest.fixture(scope="module")
def flat_draft(tokenizer: Any) -> LoadedModel:
    """The target, lightly perturbed, with half its logits: far from the target (total
    variation >= 0.4 under every warp) yet overlapping it, so drafts are accepted about half
    the time and corrected from the residual otherwise."""
    model = perturbed_copy(tiny_model(0), 0.02, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN * 0.5)
    return wrap(model, tokenizer, "tiny-flat")


def conditionals(model: LoadedModel, prefixes: set[tuple[int, ...]], params: SamplingParams
                 ) -> dict[tuple[int, ...], torch.Tensor]:
    """Exact warped next-token distribution [V] after the prompt + each prefix; one batched
    forward (no cache) per prefix length."""
    prompt = model.tokenizer.encode(PROMPT)
    out: dict[tuple[int, ...], torch.Tensor] = {}
    for size in sorted({len(p) for p in prefixes}):
        batch = sorted(p for p in prefixes if len(p) == size)
        ids = torch.tensor([prompt + list(p) for p in batch], dtype=torch.long)  # [B, Q]
        logits = model.model.forward(ids, kvcache.new_cache(), keep=1)[:, -1].cpu()  # [B, V]
        out.update(zip(batch, warp_probs(logits, params), strict=True))
    return out


def pooled_chi_square(counts: torch.Tensor, expected: torch.Tensor) -> tuple[float, int]:
    """Chi-square statistic and degrees of freedom of counts [V] against expected [V] > 0,
    cells expected fewer than MIN_EXPECTED times pooled (smallest first)."""
    order = torch.argsort(expected)
    cells: list[tuple[float, float]] = []
    observed = want = 0.0
    for token in order.tolist():
        observed, want = observed + float(counts[token]), want + float(expected[token])
        if want >= MIN_EXPECTED:
            cells.append((observed, want))
            observed = want = 0.0
    if want > 0 and cells:  # the remainder joins the last cell
        last_observed, last_want = cells.pop()
        cells.append((last_observed + observed, last_want + want))
    statistic = sum((o - e) ** 2 / e for o, e in cells)
    return statistic, len(cells) - 1


def chi_square_critical(df: int) -> float:
    """The 1 - 1e-4 quantile of chi-square(df) (Wilson-Hilferty)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + Z_1E4 * a**0.5) ** 3


def goodness_of_fit(samples: list[list[int]], target: LoadedModel, params: SamplingParams
                    ) -> tuple[float, int, int, int]:
    """(statistic, degrees of freedom, tokens drawn where the target has no mass, longest
    tested prefix), over every (position, prefix) context seen at least MIN_CONTEXT times."""
    following: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for tokens in samples:
        for t, token in enumerate(tokens):
            following[tuple(tokens[:t])].append(token)
    tested = {h: nxt for h, nxt in following.items() if len(nxt) >= MIN_CONTEXT}
    exact = conditionals(target, set(tested), params)
    statistic, df, impossible = 0.0, 0, 0
    for prefix, tokens in tested.items():
        probs = exact[prefix]  # [V]
        counts = torch.bincount(torch.tensor(tokens), minlength=probs.numel()).double()
        support = probs > 0
        impossible += int(counts[~support].sum())
        stat, cells = pooled_chi_square(counts[support], probs[support].double() * len(tokens))
        statistic, df = statistic + stat, df + cells
    return statistic, df, impossible, max(len(prefix) for prefix in tested)


def first_token_distance(target: LoadedModel, draft: LoadedModel, params: SamplingParams
                         ) -> float:
    target_probs = conditionals(target, {()}, params)[()]
    draft_probs = conditionals(draft, {()}, params)[()]
    return float((target_probs - draft_probs).abs().sum() / 2)


@pytest.mark.parametrize("warp", WARPS)
def test_the_draft_differs_from_the_target(warp: str, sharp_target: LoadedModel,
                                           flat_draft: LoadedModel) -> None:
    assert first_token_distance(sharp_target, flat_draft, WARPS[warp]) > 0.4


@pytest.mark.parametrize(("case", "warp"), RUNS, ids=[f"{c}-{w}" for c, w in RUNS])
def test_tokens_follow_the_target_distribution(
    case: str, warp: str, sharp_target: LoadedModel, flat_draft: LoadedModel,
) -> None:
    options, length, draws = CASES[case]
    options = {"draft": "tiny-flat" if options["engine"] != "batch" else None, **options}
    params = replace(WARPS[warp], max_new_tokens=length, seed=1000)
    generator = make(EngineConfig(target="tiny", **options), sharp_target, flat_draft,
                     DecodingOptions(round_token_budget=4 * draws))  # every row drafts fully
    if options["engine"] == "auto":
        assert generator.rounds is not None
        rng = random.Random(7)
        generator.rounds.speculation.policy = lambda alphas, caps: [
            rng.randint(0, cap) for cap in caps]
    if case.startswith("seed"):  # the chain in the round, the others on the scheduler
        assert (generator.rounds is not None) == (case == "seed-round-g2")
    try:
        result = generator.run(GroupRequest((PROMPT,) * draws, params))
    finally:
        generator.close()
    samples = [s.token_ids for s in result.sequences]
    statistic, df, impossible, deepest = goodness_of_fit(samples, sharp_target, params)
    assert impossible == 0
    assert deepest == length - 1  # the last position, where the bonus tokens land, is tested
    assert statistic < chi_square_critical(df), (statistic, df)
    if options["engine"] in ("sd", "mcsd", "seed", "auto") and options["draft"] != "ngram":
        assert Counter(len(s) for s in samples)[length] > 0.95 * draws
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
