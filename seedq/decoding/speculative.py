"""Pure acceptance math for speculative decoding: chains and MCSD token trees.

A draft is a tree of candidate tokens hanging below the last committed token (a chain is a
tree whose nodes have one child each). Every node carries the distribution its token was drawn
from (``draft_probs``): the drafter's warped distribution (with replacement), that
distribution with earlier siblings removed (without replacement), or a point mass for
deterministic drafters (greedy top-k, prompt lookup). Verification walks down the tree: among
the children of the last accepted node, candidate x_i is accepted with probability
min(1, p(x_i) / q_i(x_i)); on rejection p <- norm(max(0, p - q_i)). If one is accepted we move
to it; if all are rejected (or the node is a leaf) the next token is drawn from p and the
round ends. This follows the target distribution exactly (Leviathan et al. 2023; Yang et al.
2024, MCSD). With a one-hot (greedy) target it accepts exactly the target's argmax path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seedq.decoding.sampling import sample, uniform

_EPS = 1e-12


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one draft tree."""

    accepted_nodes: tuple[int, ...]  # node indices on the accepted path, root to leaf
    next_token: int  # correction (after a rejection) or bonus (after a full path)


def residual_probs(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """norm(max(0, target - draft)) over [V]. Falls back to target_probs when the residual has
    no mass (only possible up to rounding, when the two are equal)."""
    residual = torch.clamp(target_probs - draft_probs, min=0.0)
    total = float(residual.sum())
    if total <= _EPS:
        return target_probs
    return residual / total


def accept_probability(target_probs: torch.Tensor, draft_probs: torch.Tensor, token: int) -> float:
    """min(1, p(x) / q(x)) for one candidate token x."""
    draft_mass = float(draft_probs[token])
    if draft_mass <= 0.0:
        return 0.0
    return min(1.0, float(target_probs[token]) / draft_mass)


def verify_tree(
    tokens: list[int],
    parents: list[int],
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None,
) -> Verdict:
    """Verify a draft tree.

    tokens:       [n] candidate token per node; parents[j] is the parent node index or -1 for
                  the children of the last committed token. Siblings are tried in index order.
    draft_probs:  [n, V] the distribution node j's token was drawn from.
    target_probs: [n + 1, V] warped target distribution after the committed prefix (row 0) and
                  after node j (row j + 1).
    Inputs are not modified.
    """
    children: dict[int, list[int]] = {}
    for node, parent in enumerate(parents):
        children.setdefault(parent, []).append(node)
    path: list[int] = []
    current = -1
    while True:
        probs = target_probs[current + 1]
        accepted = None
        for child in children.get(current, []):
            candidate_probs = draft_probs[child]
            if _accepts(accept_probability(probs, candidate_probs, tokens[child]), generator):
                accepted = child
                break
            probs = residual_probs(probs, candidate_probs)
        if accepted is None:
            return Verdict(tuple(path), sample(probs, generator))
        path.append(accepted)
        current = accepted


def _accepts(probability: float, generator: torch.Generator | None) -> bool:
    """Bernoulli(probability); certain outcomes (always so when greedy) draw nothing."""
    if probability >= 1.0:
        return True
    if probability <= 0.0:
        return False
    return uniform(generator) < probability
