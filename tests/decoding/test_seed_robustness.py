"""The SeeD scheduler survives anything its callers do: cancellation at every point of a
group's life, errors in one group of a batched step, cancellations at random moments.
Each test holds a thread at a chosen step with hooks (see hooks.py), never sleeps-and-hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from concurrent.futures import Future
from typing import Any

import pytest

from seedq.decoding.config import EngineConfig
from seedq.decoding.engines import seed
from seedq.decoding.engines.seed import SeedScheduler
from seedq.decoding.factory import LocalGenerator
from seedq.decoding.loading import LoadedModel
from seedq.decoding.options import DecodingOptions
from seedq.decoding.types import GroupRequest, SamplingParams
from tests.decoding.conftest import make
from tests.decoding.hooks import (
    WAIT,
    Groups,
    Hold,
    cancel_when,
    in_rows,
    on_draft,
    on_verify,
    tokens,
    watch_puts,
)

AFTER = GroupRequest(("the red block is clear", "how many"), SamplingParams(max_new_tokens=10))


@pytest.fixture
def generator(target: LoadedModel, close_draft: LoadedModel) -> Any:
    """Seed generators on the threaded SeeD scheduler (the round batcher off: the round's
    own robustness is tests/decoding/test_rounds.py's)."""
    made: list[LocalGenerator] = []

    def build(**options: Any) -> tuple[LocalGenerator, SeedScheduler]:
        config = EngineConfig(engine="seed", target="tiny", draft="d", **options)
        gen = make(config, target, close_draft, DecodingOptions(round_batcher=False))
        made.append(gen)
        assert isinstance(gen.engine, SeedScheduler)
        return gen, gen.engine

    yield build
    for gen in made:
        gen.close()


def still_serves(scheduler: SeedScheduler, expected: list[list[int]]) -> None:
    result = scheduler.submit(AFTER).result(timeout=WAIT)  # a dead thread never answers
    assert tokens(result) == expected
    assert len(scheduler._open_groups) == 0  # nothing of a cancelled group is kept


def test_cancel_while_queued(generator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gen, scheduler = generator(draft_threads=1)
    expected = tokens(scheduler.run(AFTER))
    plug = GroupRequest(("a",), SamplingParams(max_new_tokens=3))
    victim = GroupRequest(("how many eggs",) * 2, SamplingParams(max_new_tokens=30))
    hold = Hold()
    groups = Groups(monkeypatch, lambda r: hold.stop_here() if r is plug else None)
    plugged = scheduler.submit(plug)  # the verifier is held admitting it
    assert hold.reached.wait(WAIT)

    async def cancel_queued() -> None:
        task = asyncio.ensure_future(gen.generate(victim))
        await asyncio.sleep(0)  # the task submits its group, which waits behind the plug
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_queued())
    hold.release.set()
    plugged.result(timeout=WAIT)
    still_serves(scheduler, expected)
    assert victim not in groups.prepared  # dropped from the queue, never prefilled


def test_cancel_while_drafting(generator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gen, scheduler = generator(draft_threads=1)
    expected = tokens(scheduler.run(AFTER))
    victim = GroupRequest(("she sold 12 apples",), SamplingParams(max_new_tokens=30))
    groups, hold = Groups(monkeypatch), Hold()

    def hook(rows: Any) -> None:
        if not hold.reached.is_set() and in_rows(rows, groups.of(victim), "draft"):
            hold.stop_here()

    on_draft(monkeypatch, hook)
    cancel_when(lambda: gen.generate(victim), hold.reached)
    hold.release.set()
    still_serves(scheduler, expected)


def test_cancel_while_verifying_the_last_sequence(generator: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The group's result is set while its caller has just cancelled it."""
    gen, scheduler = generator()
    expected = tokens(scheduler.run(AFTER))
    victim = GroupRequest(("stack the blue block",), SamplingParams(max_new_tokens=1))
    groups, hold = Groups(monkeypatch), Hold()

    def hook(rows: Any) -> None:
        if not hold.reached.is_set() and in_rows(rows, groups.of(victim), "target"):
            hold.stop_here()  # max_new_tokens=1: its first verification is its last

    on_verify(monkeypatch, hook)
    cancel_when(lambda: gen.generate(victim), hold.reached)
    hold.release.set()
    still_serves(scheduler, expected)


class CancelledAtTheCheck(Future):  # type: ignore[type-arg]
    """A future whose caller cancels it right after the scheduler looked at it: the race
    between a check and the act that follows it, made certain."""

    armed = False

    def done(self) -> bool:
        finished = super().done()
        if CancelledAtTheCheck.armed and not finished:
            CancelledAtTheCheck.armed = False
            self.cancel()
        return finished


def test_failing_a_group_its_caller_cancels_meanwhile(generator: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, scheduler = generator(draft_threads=1)
    expected = tokens(scheduler.run(AFTER))
    victim = GroupRequest(("first plan",), SamplingParams(max_new_tokens=20))
    groups = Groups(monkeypatch)

    def hook(rows: Any) -> None:
        if in_rows(rows, groups.of(victim), "draft"):
            CancelledAtTheCheck.armed = True
            raise RuntimeError("draft failed")

    on_draft(monkeypatch, hook)
    monkeypatch.setattr(seed, "Future", CancelledAtTheCheck)
    failed = scheduler.submit(victim)
    monkeypatch.setattr(seed, "Future", Future)  # the next groups' futures are plain ones
    with contextlib.suppress(Exception):
        failed.result(timeout=WAIT)
    assert failed.done()
    CancelledAtTheCheck.armed = False
    still_serves(scheduler, expected)


def test_cancelled_at_random_moments_then_a_group_completes(generator: Any) -> None:
    gen, scheduler = generator(verify_batch=2)
    expected = tokens(scheduler.run(AFTER))
    request = GroupRequest(("the red block is on", "a", "how many eggs"),
                           SamplingParams(max_new_tokens=12))
    moments = random.Random(11)

    async def storm() -> Any:
        for _ in range(30):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gen.generate(request), moments.uniform(0.0, 0.08))
        return await asyncio.wait_for(gen.generate(AFTER), WAIT)

    assert tokens(asyncio.run(storm())) == expected
    assert len(scheduler._open_groups) == 0


GOOD = GroupRequest(("the red block is on",), SamplingParams(max_new_tokens=12))
BAD = GroupRequest(("how many eggs",), SamplingParams(max_new_tokens=12))


def test_an_error_in_a_batched_verification_fails_only_its_group(
    generator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GOOD and BAD drafts are verified in one forward (verify_batch=2) that raises for BAD:
    GOOD gives exactly what it gives alone."""
    _, scheduler = generator(verify_batch=2)
    expected = tokens(scheduler.run(GOOD))
    plug = GroupRequest(("a",), SamplingParams(max_new_tokens=3))
    submitted, hold = Hold(), Hold()

    def before(request: GroupRequest) -> None:
        if request is GOOD:
            assert submitted.release.wait(WAIT)  # the plug is queued before GOOD's draft
        if request is plug:
            hold.stop_here()  # the verifier waits while both drafts queue up

    groups = Groups(monkeypatch, before)
    both_queued = watch_puts(scheduler._verify_q, lambda: groups.of(GOOD) + groups.of(BAD), 2)
    batches: list[int] = []

    def fault(rows: Any) -> None:
        if in_rows(rows, groups.of(BAD), "target"):
            batches.append(len(rows))
            raise RuntimeError("injected verification fault")

    on_verify(monkeypatch, fault)
    good, bad, plugged = (scheduler.submit(r) for r in (GOOD, BAD, plug))
    submitted.release.set()
    assert both_queued.wait(WAIT)
    hold.release.set()
    assert tokens(good.result(timeout=WAIT)) == expected
    assert "injected" in str(bad.exception(timeout=WAIT))
    plugged.result(timeout=WAIT)
    assert 2 in batches  # BAD really was verified together with GOOD


def test_an_error_in_a_batched_draft_fails_only_its_group(
    generator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GOOD and BAD are drafted in one batched forward per depth (draft_batch=2), and the
    second depth raises for BAD after the first changed both sequences' draft state."""
    _, scheduler = generator(draft_batch=2, draft_threads=1)
    expected = tokens(scheduler.run(GOOD))
    plug = GroupRequest(("a",), SamplingParams(max_new_tokens=3))
    groups, hold = Groups(monkeypatch), Hold()
    batches: list[int] = []

    def fault(rows: Any) -> None:
        if in_rows(rows, groups.of(plug), "draft") and not hold.reached.is_set():
            hold.stop_here()  # the one drafter waits while GOOD and BAD become ready
        if in_rows(rows, groups.of(BAD), "draft"):
            batches.append(len(rows))
            if len(batches) % 2 == 0:
                raise RuntimeError("injected draft fault")

    on_draft(monkeypatch, fault)
    plugged = scheduler.submit(plug)
    assert hold.reached.wait(WAIT)
    both_ready = watch_puts(scheduler._ready_q, lambda: groups.of(GOOD) + groups.of(BAD), 2)
    good, bad = scheduler.submit(GOOD), scheduler.submit(BAD)
    assert both_ready.wait(WAIT)
    hold.release.set()
    assert tokens(good.result(timeout=WAIT)) == expected
    assert "injected" in str(bad.exception(timeout=WAIT))
    plugged.result(timeout=WAIT)
    assert batches[:2] == [2, 2]  # BAD's first draft shared its forwards with GOOD's
