"""``seed``: SeeD scheduled speculative decoding (Wang et al., COLING 2025).

Every sequence has its own drafter session (its own draft KV cache). Drafter threads draft
for the sequences that are ready and put each draft into ONE first-come-first-served
verification queue; ONE verifier thread owns the target, takes drafts in arrival order (up
to ``verify_batch`` at a time, verified in one batched forward) and hands each verified
sequence straight back to the drafters (rounds: at most one draft outstanding per sequence).
Drafting and verification overlap in time; every wait is a blocking queue get, never a
busy loop. The scheduler is long-lived: groups from many callers (the trees of many jobs)
share the drafters and the target.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from seedq.decoding.drafters import ModelDrafter
from seedq.decoding.engines.base import MemoryMeter, Runtime, prepare_group
from seedq.decoding.engines.speculative import verify
from seedq.decoding.sequence import SequenceState
from seedq.decoding.tree import DraftTree
from seedq.decoding.types import GroupRequest, GroupResult

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Group:
    request: GroupRequest
    future: Future[GroupResult]
    meter: MemoryMeter
    started: float = field(default_factory=time.perf_counter)
    busy_at_start: float = 0.0
    states: list[SequenceState] = field(default_factory=list)
    unfinished: int = 0


@dataclass
class _Draft:
    state: SequenceState
    group: _Group
    tree: DraftTree
    submitted: float = field(default_factory=time.perf_counter)


_STOP = object()


def _thread_split(device_type: str, draft_threads: int) -> tuple[int, int]:
    """Intra-op threads for the verifier and for each drafter thread. On a CPU the cores are
    split so that drafting and verification really run side by side instead of fighting
    over the same cores; SEEDQ_SEED_THREADS="V,D" overrides. 0 leaves torch's default."""
    override = os.environ.get("SEEDQ_SEED_THREADS")
    if override:
        verifier, drafter = (int(x) for x in override.split(","))
        return verifier, drafter
    if device_type != "cpu":
        return 0, 0
    cores = max(1, torch.get_num_threads())
    # measured on 2 cores with SmolLM2 + int8 draft: the verifier on all cores and one core
    # per drafter beats an even split and beats leaving both on torch's default
    return cores, max(1, cores // 2 // draft_threads)


class SeedScheduler:
    name = "seed"

    def __init__(
        self, runtime: Runtime, verify_batch: int = 1, draft_batch: int = 1, draft_threads: int = 2
    ) -> None:
        if runtime.drafter is None:
            raise ValueError("engine 'seed' needs a drafter")
        self.runtime = runtime
        self.drafter = runtime.drafter
        self.verify_batch = verify_batch
        self.draft_batch = draft_batch
        self.draft_threads = max(1, draft_threads)
        self._verify_q: queue.Queue[object] = queue.Queue()
        self._ready_q: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()
        self._open_groups: set[_Group] = set()  # touched by the verifier thread and close()
        self.busy_seconds = 0.0  # target computing (verification + prefill)
        self.verifier_threads, self.drafter_threads = _thread_split(
            runtime.target.device.type, self.draft_threads
        )

    # -- public -------------------------------------------------------------------------
    def submit(self, request: GroupRequest) -> Future[GroupResult]:
        self._ensure_started()
        group = _Group(request, Future(), MemoryMeter(self.runtime.target.device))
        group.busy_at_start = self.busy_seconds
        self._open_groups.add(group)
        self._verify_q.put(group)  # the verifier owns the target: it encodes the prompts
        return group.future

    def run(self, request: GroupRequest) -> GroupResult:
        return self.submit(request).result()

    def close(self) -> None:
        if not self._threads:
            return
        self._verify_q.put(_STOP)
        for _ in range(self.draft_threads):
            self._ready_q.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads = []
        closed = RuntimeError("the seed scheduler was closed before this group finished")
        for group in list(self._open_groups):
            if not group.future.done():
                group.future.set_exception(closed)
        self._open_groups.clear()

    # -- threads ------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._threads:
                return
            self._threads.append(
                threading.Thread(target=self._verifier_loop, name="seed-verifier", daemon=True)
            )
            for i in range(self.draft_threads):
                self._threads.append(
                    threading.Thread(target=self._drafter_loop, name=f"seed-drafter-{i}",
                                     daemon=True)
                )
            for thread in self._threads:
                thread.start()

    def _verifier_loop(self) -> None:
        self._set_threads(self.verifier_threads)
        deferred: list[object] = []
        while True:
            item = deferred.pop(0) if deferred else self._verify_q.get()
            if item is _STOP:
                return
            if isinstance(item, _Group):
                self._admit(item)
                continue
            assert isinstance(item, _Draft)
            batch = [item]
            while len(batch) < self.verify_batch:
                try:
                    extra = self._verify_q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(extra, _Draft):
                    batch.append(extra)
                else:
                    deferred.append(extra)
            self._verify(batch)

    def _drafter_loop(self) -> None:
        self._set_threads(self.drafter_threads)
        while True:
            item = self._ready_q.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < self.draft_batch:
                try:
                    extra = self._ready_q.get_nowait()
                except queue.Empty:
                    break
                if extra is _STOP:
                    self._ready_q.put(_STOP)
                    break
                batch.append(extra)
            self._draft(batch)  # type: ignore[arg-type]

    @staticmethod
    def _set_threads(count: int) -> None:
        if count > 0:
            torch.set_num_threads(count)  # per calling thread with torch's OpenMP backend

    # -- steps --------------------------------------------------------------------------
    def _admit(self, group: _Group) -> None:
        began = time.perf_counter()
        try:
            group.states = prepare_group(self.runtime, group.request)
        except Exception as exc:  # bad input: fail this group, keep serving the others
            self._fail({group}, exc)
            return
        finally:
            self.busy_seconds += time.perf_counter() - began
        group.unfinished = len(group.states)
        for state in group.states:
            state.started = time.perf_counter()
            self._ready_q.put((state, group))

    def _draft(self, batch: list[tuple[SequenceState, _Group]]) -> None:
        live = [(s, g) for s, g in batch if not g.future.done()]
        if not live:
            return
        try:
            states = [s for s, _ in live]
            if isinstance(self.drafter, ModelDrafter):
                trees = self.drafter.draft_many(states)
            else:
                trees = [self.drafter.draft(s) for s in states]
        except Exception as exc:
            self._fail({g for _, g in live}, exc)
            return
        for (state, group), tree in zip(live, trees, strict=True):
            self._verify_q.put(_Draft(state, group, tree))

    def _verify(self, batch: list[_Draft]) -> None:
        batch = [d for d in batch if not d.group.future.done()]
        if not batch:
            return
        began = time.perf_counter()
        for draft in batch:
            draft.state.metrics.wait_seconds += began - draft.submitted
        try:
            verify(self.runtime, [(d.state, d.tree) for d in batch])
        except Exception as exc:
            self._fail({d.group for d in batch}, exc)
            return
        finally:
            self.busy_seconds += time.perf_counter() - began
        for draft in batch:
            draft.group.meter.sample()
            if draft.state.done:
                self._finish_sequence(draft.group)
            else:
                self._ready_q.put((draft.state, draft.group))

    def _finish_sequence(self, group: _Group) -> None:
        group.unfinished -= 1
        if group.unfinished:
            return
        wall = time.perf_counter() - group.started
        busy = self.busy_seconds - group.busy_at_start
        result = GroupResult(
            self.name, [s.result() for s in group.states], wall, group.meter.result(),
            {"target_busy_seconds": busy, "target_busy_fraction": busy / wall if wall else 0.0},
        )
        group.future.set_result(result)
        self._open_groups.discard(group)

    def _fail(self, groups: set[_Group], exc: Exception) -> None:
        log.exception("seed: a group failed", exc_info=exc)
        for group in groups:
            if not group.future.done():
                group.future.set_exception(exc)
            self._open_groups.discard(group)
