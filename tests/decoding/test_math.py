"""The pure functions: warping, acceptance, residuals, tree verification, tree masks."""

from __future__ import annotations

import pytest
import torch

from seedq.decoding import kvcache
from seedq.decoding.drafters import candidates
from seedq.decoding.sampling import one_hot, sample_without_replacement, warp_probs
from seedq.decoding.sequence import ModelCache, SequenceState
from seedq.decoding.speculative import accept_probability, residual_probs, verify_tree
from seedq.decoding.tree import (
    DraftTree,
    additive_mask,
    tree_attention_mask,
    tree_position_ids,
    tree_size,
)
from seedq.decoding.types import DecodingError, SamplingParams


def test_greedy_warp_is_one_hot_at_first_argmax() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, -2.0]])
    before = logits.clone()
    probs = warp_probs(logits, SamplingParams())
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert torch.equal(logits, before)


def test_temperature_top_k_top_p() -> None:
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    plain = warp_probs(logits, SamplingParams(temperature=1.0))
    assert torch.allclose(plain, torch.tensor([0.5, 0.25, 0.15, 0.1]), atol=1e-6)
    top2 = warp_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.allclose(top2, torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]), atol=1e-6)
    nucleus = warp_probs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.allclose(nucleus, torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]), atol=1e-6)
    hot = warp_probs(logits, SamplingParams(temperature=0.5))
    assert hot[0] > plain[0] and hot[3] < plain[3]


def test_sampling_params_are_range_checked() -> None:
    with pytest.raises(DecodingError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(DecodingError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(DecodingError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


def test_residual_and_accept_probability() -> None:
    target_probs = torch.tensor([0.5, 0.3, 0.2])
    draft_probs = torch.tensor([0.2, 0.5, 0.3])
    assert torch.allclose(residual_probs(target_probs, draft_probs), torch.tensor([1.0, 0, 0]))
    assert accept_probability(target_probs, draft_probs, 0) == 1.0
    assert accept_probability(target_probs, draft_probs, 1) == pytest.approx(0.6)
    assert accept_probability(target_probs, draft_probs, 2) == pytest.approx(2 / 3)
    # equal distributions: nothing left, fall back to the target
    assert torch.equal(residual_probs(target_probs, target_probs), target_probs)
    assert torch.equal(target_probs, torch.tensor([0.5, 0.3, 0.2]))  # inputs untouched


def test_verify_tree_greedy_follows_target_argmax() -> None:
    vocab = 5
    # chain 3 -> 1 -> 4; target argmax after prefix 3, after node0 1, after node1 2 (reject 4)
    tokens, parents = [3, 1, 4], [-1, 0, 1]
    draft = torch.stack([one_hot(torch.tensor(t), vocab) for t in tokens])
    target = one_hot(torch.tensor([3, 1, 2, 0]), vocab)
    verdict = verify_tree(tokens, parents, draft, target, None)
    assert verdict.accepted_nodes == (0, 1) and verdict.next_token == 2
    # full acceptance -> bonus token from the last row
    target = one_hot(torch.tensor([3, 1, 4, 0]), vocab)
    verdict = verify_tree(tokens, parents, draft, target, None)
    assert verdict.accepted_nodes == (0, 1, 2) and verdict.next_token == 0


def test_verify_tree_second_candidate_and_empty_tree() -> None:
    vocab = 6
    # k-config (2, 1): nodes 0 (tok 2) and 1 (tok 5) at depth 1; node 2 under 0, node 3 under 1
    tokens, parents = [2, 5, 1, 3], [-1, -1, 0, 1]
    draft = torch.stack([one_hot(torch.tensor(t), vocab) for t in tokens])
    target = one_hot(torch.tensor([5, 0, 3, 0, 4]), vocab)  # rows: prefix, after n0..n3
    verdict = verify_tree(tokens, parents, draft, target, None)
    assert verdict.accepted_nodes == (1, 3) and verdict.next_token == 4
    empty = verify_tree([], [], torch.zeros((0, vocab)), one_hot(torch.tensor([4]), vocab), None)
    assert empty.accepted_nodes == () and empty.next_token == 4


def _first_token_tv(draws: list[int], target_probs: torch.Tensor) -> float:
    counts = torch.bincount(torch.tensor(draws), minlength=target_probs.numel()).float()
    return float((counts / counts.sum() - target_probs).abs().sum() / 2)


@pytest.mark.parametrize("rule", ["chain", "with", "without"])
def test_verify_tree_preserves_target_distribution(rule: str) -> None:
    """Draw candidates from the draft, verify, and count the first emitted token."""
    generator = torch.Generator().manual_seed(0)
    target_probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    draft_probs = torch.tensor([0.4, 0.1, 0.3, 0.1, 0.1])
    assert float((target_probs - draft_probs).abs().sum() / 2) > 0.4  # the test has power
    k = 1 if rule == "chain" else 3
    draws = []
    for _ in range(20000):
        if rule == "without":
            tokens, sources = sample_without_replacement(draft_probs, k, generator)
        else:
            tokens = torch.multinomial(draft_probs, k, True, generator=generator).tolist()
            sources = [draft_probs] * k
        target_rows = torch.cat([target_probs[None], torch.full((k, 5), 0.2)])
        verdict = verify_tree(tokens, [-1] * k, torch.stack(sources), target_rows, generator)
        first = tokens[verdict.accepted_nodes[0]] if verdict.accepted_nodes else verdict.next_token
        draws.append(first)
    assert _first_token_tv(draws, target_probs) < 0.015


def test_sample_without_replacement_gives_distinct_tokens() -> None:
    generator = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.7, 0.2, 0.1, 0.0])
    before = probs.clone()
    tokens, sources = sample_without_replacement(probs, 4, generator)
    assert sorted(tokens) == [0, 1, 2]  # the zero-mass token is never drawn
    assert all(float(s.sum()) == pytest.approx(1.0) for s in sources)
    assert float(sources[1][tokens[0]]) == 0.0
    assert torch.equal(probs, before)


def test_tree_size_and_mask_for_k_config() -> None:
    assert tree_size((2, 1, 1)) == 6 and tree_size((3, 2)) == 9 and tree_size(()) == 0
    tree = DraftTree()
    flat = torch.zeros(4)
    a, b = tree.add(10, -1, flat), tree.add(11, -1, flat)
    c, d = tree.add(12, a, flat), tree.add(13, b, flat)
    assert tree.depths == [1, 1, 2, 2] and not tree.is_chain
    mask = tree_attention_mask(3, [], 1, [a, b, c, d], tree.parents)
    assert mask.shape == (5, 8)
    # cache: 3 committed; new: 1 pending, then a, b, c, d at columns 4..7
    assert mask[0].tolist() == [True] * 4 + [False] * 4
    assert mask[1 + c].tolist() == [True] * 4 + [True, False, True, False]
    assert mask[1 + d].tolist() == [True] * 4 + [False, True, False, True]
    positions = tree_position_ids(4, 1, tree.depths)
    assert positions.tolist() == [3, 4, 4, 5, 5]
    # a second forward feeding c, d with a and b already cached
    later = tree_attention_mask(4, [a, b], 0, [c, d], tree.parents)
    assert later[0].tolist() == [True] * 4 + [True, False, True, False]
    additive = additive_mask(later, torch.float32)
    assert additive[0, 5] == torch.finfo(torch.float32).min and additive[0, 4] == 0


def test_chain_tree_is_chain() -> None:
    tree = DraftTree()
    parent = -1
    for token in (5, 6, 7):
        parent = tree.add(token, parent, torch.zeros(2))
    assert tree.is_chain and tree.depths == [1, 2, 3]


def test_verify_tree_samples_the_bonus_token() -> None:
    """After a fully accepted path the bonus token is drawn from the target row of the last
    accepted node (not its argmax): here a tree (2, 1) whose second candidate and its child
    are certain to be accepted."""
    generator = torch.Generator().manual_seed(2)
    vocab = 4
    tokens, parents = [0, 1, 2, 3], [-1, -1, 0, 1]  # nodes 0, 1 at depth 1; 2 under 0, 3 under 1
    draft = torch.stack([one_hot(torch.tensor(t), vocab) for t in tokens])
    bonus = torch.tensor([0.5, 0.3, 0.15, 0.05])
    # rows: prefix (rejects node 0, accepts node 1), after node 0, 1, 2, 3 (the bonus row)
    target = torch.stack([one_hot(torch.tensor(1), vocab), bonus, one_hot(torch.tensor(3), vocab),
                          bonus, bonus])
    draws = []
    for _ in range(4000):
        verdict = verify_tree(tokens, parents, draft, target, generator)
        assert verdict.accepted_nodes == (1, 3)
        draws.append(verdict.next_token)
    assert _first_token_tv(draws, bonus) < 0.03


@pytest.mark.parametrize("replacement", [True, False], ids=["with", "without"])
def test_drafter_candidates_and_verify_tree_preserve_target(replacement: bool) -> None:
    """The drafter's own candidates (tokens and the distributions they are recorded as drawn
    from), verified: the first emitted token follows the target. Recording the unreduced
    draft distribution for candidates drawn without replacement is off by ~0.05 here."""
    generator = torch.Generator().manual_seed(3)
    state = SequenceState(0, [1], SamplingParams(temperature=1.0), generator,
                          ModelCache(kvcache.new_cache()))
    target_probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    draft_probs = torch.tensor([0.4, 0.1, 0.3, 0.1, 0.1])
    draws = []
    for _ in range(10000):
        drawn = candidates(draft_probs.log(), draft_probs, 3, state, replacement)
        tokens = [token for token, _ in drawn]
        target_rows = torch.cat([target_probs[None], torch.full((len(tokens), 5), 0.2)])
        verdict = verify_tree(tokens, [-1] * len(tokens), torch.stack([s for _, s in drawn]),
                              target_rows, generator)
        first = tokens[verdict.accepted_nodes[0]] if verdict.accepted_nodes else verdict.next_token
        draws.append(first)
    assert _first_token_tv(draws, target_probs) < 0.02


def test_sample_draws_the_given_distribution() -> None:
    """Inverse-CDF sampling: frequencies follow the distribution (scaled weights too), a
    token of zero mass is never drawn (nor one past the end), a one-hot draws no randomness,
    and the same generator state gives the same tokens."""
    from seedq.decoding.sampling import sample

    generator = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.05, 0.0, 0.3, 0.0, 0.15])  # half a distribution
    counts = torch.zeros(5)
    for _ in range(40000):
        counts[sample(weights, generator)] += 1
    assert counts[1] == counts[3] == 0
    assert float((counts / counts.sum() - weights * 2).abs().max()) < 0.01
    tail = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert all(sample(tail, generator) in (0, 1) for _ in range(2000))
    state = generator.get_state()
    assert sample(torch.tensor([0.0, 1.0, 0.0]), generator) == 1
    assert torch.equal(generator.get_state(), state)  # untouched
    again = torch.Generator().manual_seed(7)
    first = [sample(weights, again) for _ in range(50)]
    again.manual_seed(7)
    assert [sample(weights, again) for _ in range(50)] == first
