"""How long a draft each row of a round gets: the ``auto`` engine's cost model, its
online acceptance estimates, and the pure planning rule between them.

The cost of one target forward is modelled as ``a + b * N + c * rows`` seconds for ``N``
tokens in the forward: ``rows * (1 + depth)``, since the forward is rectangular (each row's
pending token and its draft, right-padded to the longest draft); ``c`` is what a row costs
beyond its tokens (reading its KV), so a draft token is charged ``b`` alone.
:func:`calibrate` measures it at start (a small grid of rows x tokens over a real KV cache
on this device); :class:`ForwardCost` then refits it online from every forward the round
runs (decayed least squares seeded by the calibration), so a loaded machine or a GPU's flat
curve is followed as it changes.

Acceptance ``alpha`` (the chance that a draft token is accepted given the ones before it
were) is tracked per label (task/role of the group) and per row (:class:`Acceptance`); with
a chain of ``g`` draft tokens a row commits ``1 + alpha + ... + alpha^g`` tokens on average.

:func:`plan_lengths` picks the depth of the step's drafts (the padded forward's width) and
the rows' lengths up to it that maximise the round's expected committed tokens per second;
``0`` everywhere is plain batched decoding. Output stays lossless whatever it picks: every
draft is verified exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from seedq.decoding import kvcache
from seedq.decoding.engines.batch import attention_mask
from seedq.decoding.models import LanguageModel

PRIOR_WEIGHT = 4.0  # the calibration's weight against decaying observations
DECAY = 0.97  # per observed forward


Point = tuple[int, int, float]  # (rows, tokens, seconds) of one forward
_SUMS = 9  # w, wT, wR, wTT, wTR, wRR, wS, wTS, wRS


@dataclass
class ForwardCost:
    """``seconds(N, rows) = a + b * N + c * rows`` for ``N`` tokens over ``rows`` rows,
    refitted online. A row costs more than a token: its KV is read once whatever number of
    query tokens it feeds (on a 2-core Xeon an added row cost ~3x an added draft token), so
    a draft token is charged ``b`` and the step's rows ``c`` each. ``c`` is fitted where
    the points tell rows from tokens (the calibration grid does), else 0 (one slope).
    Observations decay so the fit follows the machine; the calibration points never
    vanish, so it cannot drift to nonsense."""

    a: float
    b: float
    c: float = 0.0
    per_row: bool = True  # False: one slope over tokens (rows are not told apart)
    _prior: tuple[float, ...] = (0.0,) * _SUMS
    _seen: list[float] = field(default_factory=lambda: [0.0] * _SUMS)

    @classmethod
    def fit(cls, points: list[tuple[int, float]] | list[Point], per_row: bool = True
            ) -> ForwardCost:
        """Least squares over (tokens, seconds) or (rows, tokens, seconds) points."""
        full = [_point(p, per_row) for p in points]
        sums = _sums(full, PRIOR_WEIGHT / max(len(full), 1))
        a, b, c = _solve(sums, fallback=(min(p[2] for p in full), 0.0, 0.0))
        return cls(a, b, c, per_row, sums)

    def seconds(self, tokens: int, rows: int = 0) -> float:
        return self.a + self.b * tokens + self.c * rows

    def observe(self, tokens: int, seconds: float, rows: int = 0) -> None:
        self._seen = [value * DECAY for value in self._seen]
        for i, value in enumerate(_sums([(rows if self.per_row else 0, tokens, seconds)],
                                        1.0)):
            self._seen[i] += value
        merged = tuple(p + s for p, s in zip(self._prior, self._seen, strict=True))
        self.a, self.b, self.c = _solve(merged, fallback=(self.a, self.b, self.c))


def _point(point: tuple[int, float] | Point, per_row: bool) -> Point:
    if len(point) == 2:
        return (0, int(point[0]), float(point[1]))
    rows, tokens, seconds = point  # type: ignore[misc]
    return (rows if per_row else 0, tokens, seconds)


def _sums(points: list[Point], weight: float) -> tuple[float, ...]:
    """Weighted sums of the normal equations over features (1, tokens, rows)."""
    out = [0.0] * _SUMS
    for rows, tokens, secs in points:
        for i, value in enumerate((1, tokens, rows, tokens * tokens, tokens * rows,
                                   rows * rows, secs, tokens * secs, rows * secs)):
            out[i] += weight * value
    return tuple(out)


def _solve(sums: tuple[float, ...], fallback: tuple[float, float, float]
           ) -> tuple[float, float, float]:
    """(a, b, c) from the sums: three features where rows and tokens vary apart and both
    slopes come out non-negative, else one slope (a, b) with c = 0, b clamped at 0."""
    w, wt, wr, wtt, wtr, wrr, ws, wts, wrs = sums
    if w <= 0:
        return fallback
    matrix = ((w, wt, wr), (wt, wtt, wtr), (wr, wtr, wrr))
    det = _det3(matrix)
    if abs(det) > 1e-9 * max(abs(v) for v in (w, wtt, wrr)) ** 3:
        rhs = (ws, wts, wrs)  # Cramer's rule: column k replaced by the right-hand side
        a, b, c = (_det3(tuple(tuple(rhs[i] if j == k else matrix[i][j] for j in range(3))
                               for i in range(3))) / det for k in range(3))
        if b >= 0 and c >= 0:
            return max(a, 1e-7), b, c
    det2 = w * wtt - wt * wt
    if det2 <= 1e-12 * max(w * wtt, 1e-30):
        return fallback
    b2 = (w * wts - wt * ws) / det2
    a2 = (ws - b2 * wt) / w
    return max(a2, 1e-7), max(b2, 0.0), 0.0


def _det3(m: tuple[tuple[float, ...], ...]) -> float:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


@dataclass
class Acceptance:
    """Online acceptance per label, and per row blended with its label's estimate."""

    prior: float = 0.5
    strength: float = 8.0  # trials a row needs before its own rate outweighs its label's
    labels: dict[str, tuple[float, float]] = field(default_factory=dict)  # accepted, trials

    def record(self, label: str, accepted: int, drafted: int) -> tuple[int, int]:
        """One verified chain: ``accepted`` of ``drafted`` tokens kept. Returns the
        (successes, trials) it adds: a chain stops at its first rejection."""
        trials = min(accepted + 1, drafted)
        old_hits, old_trials = self.labels.get(label, (0.0, 0.0))
        self.labels[label] = (old_hits * 0.995 + accepted, old_trials * 0.995 + trials)
        return accepted, trials

    def of_label(self, label: str) -> float:
        hits, trials = self.labels.get(label, (0.0, 0.0))
        return (hits + self.prior * self.strength) / (trials + self.strength)

    def of_row(self, label: str, hits: float, trials: float) -> float:
        return (hits + self.of_label(label) * self.strength) / (trials + self.strength)


@dataclass(frozen=True)
class DraftCost:
    """Seconds a draft adds to a step: ``per_depth`` per draft forward (one per depth of
    the longest chain) plus ``per_token`` per drafted token. Zero for prompt lookup."""

    per_depth: float = 0.0
    per_token: float = 0.0


def plan_lengths(alphas: list[float | None], caps: list[int], cost: ForwardCost,
                 draft: DraftCost = DraftCost(), max_tokens: int | None = None) -> list[int]:
    """Draft length per row maximising expected committed tokens per second of the step.

    alphas: per row its acceptance estimate, None for a row that never speculates;
    caps:   per row the longest draft it may get (remaining budget, lookup length).
    The verify forward is rectangular: every row is fed ``1 + depth`` tokens (its pending
    token, its draft, padding), ``depth`` being the longest draft of the step, so it costs
    ``cost.seconds(rows * (1 + depth), rows)`` whoever drafts: one row's long draft is paid for
    by every row's padding. For each depth the rows fill their columns best expected gain
    first (the j-th draft token of row b adds alpha_b^j expected tokens) while a token
    still pays for ``draft.per_token``; ``draft.per_depth`` is paid once per depth (one
    draft forward each). ``max_tokens`` caps the forward's ``rows * (1 + depth)`` tokens
    (the round's token budget). Every row commits one token for sure."""
    rows = len(alphas)
    best = [0] * rows
    if rows == 0:
        return best
    best_rate = rows / cost.seconds(rows, rows)
    deepest = max([0, *caps])
    if max_tokens is not None:
        deepest = min(deepest, max_tokens // rows - 1)
    for depth in range(1, deepest + 1):
        lengths, gain, extra = [0] * rows, 0.0, 0
        seconds = cost.seconds(rows * (1 + depth), rows) + draft.per_depth * depth
        gains = sorted(((alpha ** j, b) for b, alpha in enumerate(alphas) if alpha is not None
                        for j in range(1, min(caps[b], depth) + 1)), reverse=True)
        step = draft.per_token
        for value, b in gains:  # alpha^j falls with j: each row's picks stay a prefix
            if (rows + gain + value) / (seconds + (extra + 1) * step) <= (rows + gain) / (
                    seconds + extra * step):
                break
            lengths[b] += 1
            gain += value
            extra += 1
        rate = (rows + gain) / (seconds + extra * step)
        if rate > best_rate * (1 + 1e-9) and max(lengths) == depth:
            best, best_rate = lengths, rate
    return best


def calibrate(model: LanguageModel, max_rows: int, max_tokens: int, kv_length: int = 192,
              repeats: int = 2, per_row: bool = True) -> ForwardCost:
    """Time target forwards of rows x tokens over a ``kv_length`` cache (random ids): the
    corners of the grid the round works in, fastest of ``repeats`` each."""
    rows_grid = sorted({1, max(1, min(max_rows, 8))})
    tokens_grid = sorted({1, max(1, min(max_tokens, 8))})
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.vocab_size, (1, kv_length), generator=generator)
    base = kvcache.new_cache()
    model.forward_chain(prompt[0].tolist(), base, keep=1)
    points = []
    for rows in rows_grid:
        for tokens in tokens_grid:
            points.append((rows, rows * tokens, _time_forward(model, base, rows, tokens,
                                                              kv_length, repeats)))
    if len(points) == 1:  # one row, one token: no slope to measure
        points.append((1, 2, points[0][2]))
    return ForwardCost.fit(points, per_row)


def _time_forward(model: LanguageModel, base: object, rows: int, tokens: int, kv_length: int,
                  repeats: int) -> float:
    cache = kvcache.clone(base)  # type: ignore[arg-type]
    cache.batch_repeat_interleave(rows)
    ids = torch.zeros((rows, tokens), dtype=torch.long).to(model.device)
    positions = torch.arange(kv_length, kv_length + tokens).repeat(rows, 1).to(model.device)
    mask = attention_mask(torch.ones((rows, kv_length + tokens), dtype=torch.long), tokens)
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        model.forward(ids, cache, mask, positions, keep=tokens)  # the model moves the mask
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        best = min(best, time.perf_counter() - began)
        kvcache.crop(cache, kv_length)
    return best
