"""``seed``: SeeD scheduled speculative decoding (Wang et al., COLING 2025).

Every sequence has its own drafter session (its own draft KV cache). Drafter threads draft
for the sequences that are ready and put each draft into ONE first-come-first-served
verification queue; ONE verifier thread owns the target, takes drafts in arrival order (up
to the group's ``verify_batch`` at a time, verified in one batched forward) and hands each
verified sequence straight back to the drafters (rounds: at most one draft outstanding per
sequence). Drafting and verification overlap in time; every wait is a blocking queue get,
never a busy loop. The scheduler is long-lived: groups from many callers (the trees of many
jobs, of any engine options) share the drafters and the target; each group carries its own
options (:class:`GroupSpec`: draft shape through its runtime's drafter, batch sizes).

Nothing a caller does stops the threads: a group whose future was cancelled is dropped at
its next step, completing or failing a finished future is harmless, and an error in a step
fails only the groups in it (a failed batched step is retried one sequence at a time first,
so only the group at fault fails).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import torch

from seedq.decoding.drafters import ModelDrafter
from seedq.decoding.engines import lanes
from seedq.decoding.engines.base import MemoryMeter, Runtime, prepare_group
from seedq.decoding.engines.seed_groups import (
    GroupSpec,
    SeedGroup,
    Snapshot,
    Ticket,
    reject,
    resolve,
)
from seedq.decoding.engines.speculative import settle, target_logits
from seedq.decoding.tree import DraftTree
from seedq.decoding.types import GroupRequest, GroupResult

__all__ = ["GroupSpec", "SeedScheduler"]

log = logging.getLogger(__name__)


_STOP = object()


class SeedScheduler:
    name = "seed"

    def __init__(
        self,
        runtime: Runtime,
        verify_batch: int = 1,
        draft_batch: int = 1,
        draft_threads: int = 2,
        target_lock: threading.Lock | None = None,
    ) -> None:
        if runtime.drafter is None:
            raise ValueError("engine 'seed' needs a drafter")
        self.runtime = runtime
        self.drafter = runtime.drafter
        self.verify_batch = verify_batch
        self.draft_batch = draft_batch
        self.draft_threads = max(1, draft_threads)
        # held around every target step; shared with the other engines over this target
        self.target_lock = target_lock or threading.Lock()
        self._verify_q: queue.Queue[object] = queue.Queue()
        self._ready_q: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._drafters = 0
        self._start_lock = threading.Lock()
        self._open_groups: set[SeedGroup] = set()
        self.busy_seconds = 0.0  # target computing (verification + prefill)
        self._cores = torch.get_num_threads()
        self.verifier_threads, self.drafter_threads = lanes.thread_split(
            runtime.target.device.type, self.draft_threads, self._cores,
            runtime.options.seed_threads)

    # -- public -------------------------------------------------------------------------
    def own_spec(self) -> GroupSpec:
        """The options this scheduler was built with, as a group's spec."""
        return GroupSpec(self.runtime, self.verify_batch, self.draft_batch, self.draft_threads)

    @property
    def open_groups(self) -> int:
        """Groups submitted and neither finished, failed nor cancelled."""
        return len(self._open_groups)

    def submit(self, request: GroupRequest, spec: GroupSpec | None = None) -> Future[GroupResult]:
        spec = spec or self.own_spec()
        if spec.runtime.target is not self.runtime.target or spec.runtime.drafter is None:
            raise ValueError("a seed group needs a drafter over this scheduler's target")
        self._ensure_started(spec.draft_threads)
        group = SeedGroup(request=request, spec=spec, future=Future(),
                          meter=MemoryMeter(self.runtime.target.device))
        group.busy_at_start = self.busy_seconds
        self._open_groups.add(group)
        group.future.add_done_callback(lambda _: self._open_groups.discard(group))
        self._verify_q.put(group)  # the verifier owns the target: it encodes the prompts
        return group.future

    def run(self, request: GroupRequest, spec: GroupSpec | None = None) -> GroupResult:
        return self.submit(request, spec).result()

    def close(self) -> None:
        with self._start_lock:
            threads, self._threads, drafters, self._drafters = self._threads, [], self._drafters, 0
        if not threads:
            return
        self._verify_q.put(_STOP)
        for _ in range(drafters):
            self._ready_q.put(_STOP)
        for thread in threads:
            thread.join()
        closed = RuntimeError("the seed scheduler was closed before this group finished")
        for group in list(self._open_groups):
            reject(group.future, closed)
        self._open_groups.clear()

    # -- threads ------------------------------------------------------------------------
    def _ensure_started(self, draft_threads: int) -> None:
        """Start the verifier and enough drafter threads; they claim their intra-op thread
        counts before this returns, and the default count is put back afterwards."""
        with self._start_lock:
            wanted = max(self.draft_threads, draft_threads)
            if self._threads and self._drafters >= wanted:
                return
            _, drafter_count = lanes.thread_split(
                self.runtime.target.device.type, wanted, self._cores,
                self.runtime.options.seed_threads)
            starting: list[threading.Event] = []
            with lanes.keeping_default_threads():
                if not self._threads:
                    starting.append(self._start(self._verifier_loop, "seed-verifier",
                                                self.verifier_threads))
                while self._drafters < wanted:
                    starting.append(self._start(self._drafter_loop,
                                                f"seed-drafter-{self._drafters}", drafter_count))
                    self._drafters += 1
                for ready in starting:
                    ready.wait()

    def _start(self, loop: Callable[[lanes.Lane], None], name: str, count: int
               ) -> threading.Event:
        ready = threading.Event()

        def main() -> None:
            try:
                lanes.claim_threads(count)
                lane = lanes.Lane(self.runtime.target.device)
            except Exception:  # no own stream: the thread still serves, on the default one
                log.exception("seed: %s could not set up its lane", name)
                lane = lanes.Lane(torch.device("cpu"))
            finally:
                ready.set()
            with lane.active():
                loop(lane)

        thread = threading.Thread(target=main, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return ready

    def _verifier_loop(self, lane: lanes.Lane) -> None:
        deferred: deque[object] = deque()
        while True:
            item = deferred.popleft() if deferred else self._verify_q.get()
            if item is _STOP:
                return
            if isinstance(item, SeedGroup):
                self._guarded([item], self._admit, item, lane)
                continue
            assert isinstance(item, Ticket)
            batch = self._take_verify_batch(item, deferred)
            self._guarded([t.group for t in batch], self._verify, batch, lane)

    def _take_verify_batch(self, head: Ticket, deferred: deque[object]) -> list[Ticket]:
        """The head draft and, up to its group's verify_batch, the drafts waiting behind it
        whose groups allow batching; anything else waits its turn in ``deferred``."""
        batch = [head]
        while len(batch) < head.group.spec.verify_batch:
            try:
                extra = self._verify_q.get_nowait()
            except queue.Empty:
                break
            if isinstance(extra, Ticket) and extra.group.spec.verify_batch > 1:
                batch.append(extra)
            else:
                deferred.append(extra)
        return batch

    def _drafter_loop(self, lane: lanes.Lane) -> None:
        while True:
            item = self._ready_q.get()
            if item is _STOP:
                return
            assert isinstance(item, Ticket)
            batch = self._take_draft_batch(item)
            self._guarded([t.group for t in batch], self._draft, batch, lane)

    def _take_draft_batch(self, head: Ticket) -> list[Ticket]:
        """The head sequence and, up to its group's draft_batch, ready sequences drafted by
        the same draft model; the first one that does not fit goes back to the queue."""
        batch = [head]
        model = getattr(head.group.spec.drafter, "model", None)
        while model is not None and len(batch) < head.group.spec.draft_batch:
            try:
                extra = self._ready_q.get_nowait()
            except queue.Empty:
                break
            fits = (isinstance(extra, Ticket) and extra.group.spec.draft_batch > 1
                    and getattr(extra.group.spec.drafter, "model", None) is model)
            if not fits:
                self._ready_q.put(extra)
                break
            assert isinstance(extra, Ticket)
            batch.append(extra)
        return batch

    # -- steps --------------------------------------------------------------------------
    def _guarded(self, groups: Iterable[SeedGroup], step: Callable[..., None], *args: Any) -> None:
        """Run one step; whatever it raises fails the groups in it, and the thread goes on."""
        try:
            step(*args)
        except Exception as exc:
            self._fail(set(groups), exc)

    def _live(self, group: SeedGroup) -> bool:
        """False for a group that is finished, failed or cancelled: its sequences are
        dropped here, at their next step."""
        if group.future.done():
            self._open_groups.discard(group)
            return False
        return True

    def _admit(self, group: SeedGroup, lane: lanes.Lane) -> None:
        if not self._live(group):
            return
        with self.target_lock:
            began = time.perf_counter()
            try:
                group.states = prepare_group(group.spec.runtime, group.request)
            finally:
                self.busy_seconds += time.perf_counter() - began
        group.unfinished = len(group.states)
        event = lane.hand_over()
        for state in group.states:
            state.started = time.perf_counter()
            self._ready_q.put(Ticket(state, group, event=event))

    def _draft(self, batch: list[Ticket], lane: lanes.Lane) -> None:
        live = [t for t in batch if self._live(t.group)]
        if not live:
            return
        for ticket in live:
            lane.receive(ticket.state, ticket.event)
        snapshots = [Snapshot.of(t.state) for t in live] if len(live) > 1 else []
        try:
            trees = self._draft_trees(live)
        except Exception as exc:
            if len(live) == 1:
                raise
            log.warning("seed: a batched draft of %d failed (%s); drafting each alone",
                        len(live), exc)
            for ticket, snapshot in zip(live, snapshots, strict=True):
                snapshot.restore(ticket.state)
                self._guarded([ticket.group], self._draft, [ticket], lane)
            return
        event = lane.hand_over()
        for ticket, tree in zip(live, trees, strict=True):
            ticket.tree, ticket.event, ticket.submitted = tree, event, time.perf_counter()
            ticket.group.meter.tick()
            self._verify_q.put(ticket)

    @staticmethod
    def _draft_trees(batch: list[Ticket]) -> list[DraftTree]:
        drafter = batch[0].group.spec.drafter
        if isinstance(drafter, ModelDrafter):
            shapes = [t.group.spec.drafter.shape for t in batch]
            return drafter.draft_many([t.state for t in batch], shapes)
        return [t.group.spec.drafter.draft(t.state) for t in batch]

    def _verify(self, batch: list[Ticket], lane: lanes.Lane) -> None:
        batch = [t for t in batch if self._live(t.group)]
        if not batch:
            return
        began = time.perf_counter()
        for ticket in batch:
            ticket.state.metrics.wait_seconds += began - ticket.submitted
            ticket.submitted = began
            lane.receive(ticket.state, ticket.event)
        try:
            logits, seconds = self._target_forward(batch)
        except Exception as exc:
            if len(batch) == 1:
                raise
            log.warning("seed: a batched verification of %d failed (%s); verifying each "
                        "alone", len(batch), exc)
            for ticket in batch:
                self._guarded([ticket.group], self._verify, [ticket], lane)
            return
        for ticket, rows in zip(batch, logits, strict=True):
            # the batched forward is split evenly over its rows
            self._guarded([ticket.group], self._commit, ticket, rows, seconds / len(batch), lane)

    def _target_forward(self, batch: list[Ticket]) -> tuple[list[torch.Tensor], float]:
        """Logits per ticket and the seconds the forward took (not counting the wait for
        the target lock)."""
        items = []
        for ticket in batch:
            assert ticket.tree is not None
            items.append((ticket.state, ticket.tree))
        with self.target_lock:
            began = time.perf_counter()
            try:
                return target_logits(self.runtime, items), time.perf_counter() - began
            finally:
                self.busy_seconds += time.perf_counter() - began

    def _commit(self, ticket: Ticket, logits: torch.Tensor, share: float,
                lane: lanes.Lane) -> None:
        assert ticket.tree is not None
        state, group = ticket.state, ticket.group
        settled = time.perf_counter()
        settle(group.spec.runtime, state, ticket.tree, logits)
        now = time.perf_counter()
        state.metrics.verify_seconds += share + now - settled
        self.busy_seconds += now - settled
        group.meter.sample()
        if state.done:
            self._finish_sequence(group)
            return
        ticket.tree, ticket.event = None, lane.hand_over()
        self._ready_q.put(ticket)

    def _finish_sequence(self, group: SeedGroup) -> None:
        group.unfinished -= 1
        if group.unfinished:
            return
        result = group.result(self.name, self.busy_seconds)
        self._open_groups.discard(group)  # before its caller wakes up
        resolve(group.future, result)

    def _fail(self, groups: set[SeedGroup], exc: Exception) -> None:
        log.error("seed: %d group(s) failed", len(groups), exc_info=exc)
        for group in groups:
            self._open_groups.discard(group)
            reject(group.future, exc)
