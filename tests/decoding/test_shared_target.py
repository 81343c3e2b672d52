"""One target per worker: one SeeD scheduler and one target lock for every engine option
set, cancellation that frees the target for non-seed engines, no process-wide side effects
(thread counts, CUDA peak memory counters)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from seedq.decoding.config import EngineConfig
from seedq.decoding.engines.base import MemoryMeter
from seedq.decoding.engines.lanes import thread_split
from seedq.decoding.loading import LoadedModel
from seedq.decoding.options import DecodingOptions
from seedq.decoding.types import GroupRequest, SamplingParams
from seedq.service.engines import GeneratorPool
from tests.decoding.conftest import make
from tests.decoding.hooks import WAIT, Hold, tokens

REQUEST = GroupRequest(("the red block is on", "how many eggs"), SamplingParams(max_new_tokens=14))


def in_new_thread(call: Callable[[], Any]) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()
    thread.join()
    return out[0]


def seed_verifiers() -> int:
    return sum(t.name == "seed-verifier" and t.is_alive() for t in threading.enumerate())


class ForwardOverlap:
    """Counts target forwards running at the same time (forward hooks on the module)."""

    def __init__(self, module: Any) -> None:
        self.lock = threading.Lock()
        self.now = self.most = self.total = 0
        self.handles = [module.register_forward_pre_hook(self.enter),
                        module.register_forward_hook(self.leave, always_call=True)]

    def enter(self, module: Any, args: Any) -> None:
        with self.lock:
            self.now += 1
            self.total += 1
            self.most = max(self.most, self.now)

    def leave(self, module: Any, args: Any, output: Any) -> None:
        with self.lock:
            self.now -= 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_every_option_set_shares_one_scheduler_and_one_target_lock(
    target: LoadedModel, close_draft: LoadedModel
) -> None:
    base = make(EngineConfig(engine="ar", target="tiny", draft="d"), target, close_draft)
    expected = tokens(base.run(REQUEST))
    alone = make(EngineConfig(engine="seed", target="tiny", draft="d", k_config=(2, 1)),
                 target, close_draft)
    tree_alone = alone.run(REQUEST)
    alone.close()
    verifiers = seed_verifiers()
    pool = GeneratorPool(base, "w1")
    overlap = ForwardOverlap(target.model.model)
    try:
        chain = pool.for_options({"engine": "seed", "verify_batch": 2})
        tree = pool.for_options({"engine": "seed", "k_config": [2, 1]})
        sd = pool.for_options({"engine": "sd"})
        assert chain is not tree
        assert chain.inner.engine is tree.inner.engine  # type: ignore[attr-defined]
        assert sd.inner.hub.lock is base.hub.lock  # type: ignore[attr-defined]

        async def together() -> list[Any]:
            runs = [chain, tree, sd, pool.base, chain, tree]
            return list(await asyncio.gather(*(g.generate(REQUEST) for g in runs)))

        results = asyncio.run(together())
        assert seed_verifiers() == verifiers + 1  # ONE verifier for both option sets
        assert all(tokens(r) == expected for r in results)
        assert overlap.total > 0 and overlap.most == 1  # never two engines on the target
        # the tree shape travelled with its group: the same drafts as its own scheduler's
        for shared, own in zip(results[1].sequences, tree_alone.sequences, strict=True):
            assert shared.metrics.drafted_tokens == own.metrics.drafted_tokens
            assert shared.metrics.accepted_tokens == own.metrics.accepted_tokens
    finally:
        overlap.remove()
        pool.close()
    assert seed_verifiers() == verifiers


def test_a_cancelled_group_frees_the_target_at_its_next_forward(target: LoadedModel) -> None:
    """ar runs in asyncio.to_thread: a timed-out caller must not leave the thread decoding
    (and holding the target) until the group ends."""
    gen = make(EngineConfig(engine="ar", target="tiny"), target, None)
    short = GroupRequest(("a",), SamplingParams(max_new_tokens=4))
    expected = tokens(gen.run(short))
    endless = GroupRequest(("the red block",) * 8, SamplingParams(max_new_tokens=1500))
    hold, seen = Hold(), [0]

    def pre(module: Any, args: Any) -> None:
        seen[0] += 1
        if seen[0] == 5:
            hold.stop_here()

    handle = target.model.model.register_forward_pre_hook(pre)

    async def scenario() -> Any:
        task = asyncio.ensure_future(gen.generate(endless))
        assert await asyncio.to_thread(hold.reached.wait, WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        hold.release.set()
        return await asyncio.wait_for(gen.generate(short), 5.0)

    try:
        assert tokens(asyncio.run(scenario())) == expected
    finally:
        handle.remove()
        gen.close()


def test_scheduler_threads_leave_the_default_thread_count_alone(
    target: LoadedModel, close_draft: LoadedModel
) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a count the scheduler's threads do not use
    gen = make(EngineConfig(engine="seed", target="tiny", draft="d"), target, close_draft,
               DecodingOptions(seed_threads=(1, 1)))
    try:
        gen.run(REQUEST)
        assert in_new_thread(torch.get_num_threads) == 2
        assert torch.get_num_threads() == 2
    finally:
        gen.close()
        torch.set_num_threads(before)


def test_the_core_split_fits_any_core_count() -> None:
    for cores in range(1, 129):
        for drafters in range(1, 9):
            verifier, each = thread_split("cpu", drafters, cores)
            assert verifier >= 1 and each >= 1
            assert verifier + each * drafters <= max(cores, 1 + drafters), (cores, drafters)
            assert verifier >= min(cores // 2, cores - drafters)
    assert thread_split("cuda", 2, 16) == (0, 0)
    assert thread_split("cpu", 2, 16, override=(3, 2)) == (3, 2)


def test_peak_memory_is_sampled_without_resetting_the_cuda_counters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("process-wide CUDA memory counters are shared by all groups")

    allocated = iter([100, 300, 200, 150])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", refuse)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", refuse)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: next(allocated))
    meter = MemoryMeter(torch.device("cuda"))
    meter.tick()
    meter.tick()
    assert meter.result() == 300


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seed_on_cuda_streams_gives_what_ar_gives(tokenizer: Any) -> None:
    """Drafters and the verifier on their own streams, sequences handed over with events."""
    from seedq.decoding.loading import wrap
    from seedq.decoding.tiny import perturbed_copy, tiny_model

    target = wrap(tiny_model(0).to("cuda"), tokenizer, "tiny")
    draft = wrap(perturbed_copy(tiny_model(0), 0.05).to("cuda"), tokenizer, "tiny-close")
    request = GroupRequest(("the red block is on", "how many eggs", "a", "she sold"),
                           SamplingParams(max_new_tokens=24))
    expected = tokens(make(EngineConfig(engine="ar", target="tiny", device="cuda"), target,
                           None).run(request))
    for options in ({}, {"verify_batch": 4, "draft_batch": 4}, {"k_config": (2, 1)}):
        gen = make(EngineConfig(engine="seed", target="tiny", draft="d", device="cuda",
                                **options), target, draft)  # type: ignore[arg-type]
        try:
            assert tokens(gen.run(request)) == expected, options
        finally:
            gen.close()
