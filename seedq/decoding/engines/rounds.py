"""The round batcher: continuous batching of ``batch`` and ``auto`` groups across every
caller.

One long-lived loop per loaded target (held by the :class:`~seedq.decoding.target.TargetHub`
like the SeeD scheduler) decodes the groups of all concurrent callers (the trees of a
worker's round) together. Groups are admitted first-come-first-served between forwards:
their prompts are prefilled (:mod:`~seedq.decoding.engines.round_admission`: through the
prefix cache, the rest in chunks that ride in the live rows' own forwards, packed) and their
sequences join the round's rows
(``SEEDQ_ROUND_KV``: preallocated slots written in place, :class:`SlotRoundBatch`, or the
older left-padded ``DynamicCache``, :class:`RoundBatch`). Each step is ONE target forward of
every live row of every group: its pending token, plus the draft chain that
:mod:`~seedq.decoding.engines.round_speculation` plans for rows of ``auto`` groups where it
pays (verified by the exact speculative rule in the same forward); each row then samples and
commits its token(s) with its own generator
(:func:`commit_token`, shared with the per-group ``batch`` engine, so the tokens do not
depend on who shared the forward); finished sequences leave at once, and a group's future
resolves when its last sequence finishes.

``SEEDQ_ROUND_TOKEN_BUDGET`` (default 64) bounds the tokens of a forward: the head of the
FCFS queue waits until its sequences fit as rows (a group bigger than the budget runs
alone), and ``auto``'s draft tokens are planned within what the rows leave.
``SEEDQ_ROUND_KV_MB`` (0 = unlimited) bounds the round's estimated KV bytes the same way; a
group over it alone fails (:mod:`~seedq.decoding.engines.round_budget`).

Nothing a caller does stops the loop: a cancelled group is dropped at the next step,
resolving a cancelled future is harmless, an error fails only the group at fault (a failed
batched forward is retried one group at a time, a failed commit fails its own group).
Every forward holds the hub's target lock, so no other engine runs on the target meanwhile.
Peaks per idle-to-idle round: :mod:`~seedq.decoding.engines.round_records`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from seedq.decoding.engines import lanes
from seedq.decoding.engines.base import MemoryMeter, Runtime
from seedq.decoding.engines.batch import commit_token
from seedq.decoding.engines.round_admission import RoundAdmission
from seedq.decoding.engines.round_batch import (
    BATCH,
    Riders,
    RoundGroup,
    RoundMode,
    RoundStorage,
    Row,
    new_round_batch,
)
from seedq.decoding.engines.round_budget import KvBudget, cache_bytes
from seedq.decoding.engines.round_records import RoundLog, RoundStats
from seedq.decoding.engines.round_speculation import Planned, RoundSpeculation
from seedq.decoding.engines.seed_groups import reject, resolve
from seedq.decoding.types import GroupRequest, GroupResult

log = logging.getLogger(__name__)

_STOP = object()


class RoundBatcher(RoundAdmission):
    name = "batch"

    def __init__(self, runtime: Runtime, target_lock: threading.Lock | None = None,
                 budget: int | None = None, kv_budget: int | None = None) -> None:
        self.runtime = runtime
        options = runtime.options  # the worker's (DecodingOptions): read once, passed down
        self.budget = budget or options.round_token_budget
        self.chunk = options.prefill_chunk
        self._last_forward: float | None = None  # end of the live rows' last forward
        self.kv = KvBudget(runtime.target, options.round_kv_bytes if kv_budget is None
                           else kv_budget)
        self.target_lock = target_lock or threading.Lock()
        self.stats = RoundStats()
        self.busy_seconds = 0.0
        self._inbox: queue.Queue[object] = queue.Queue()
        self._waiting: deque[RoundGroup] = deque()
        self._batch: RoundStorage = self._new_storage()
        self._open: set[RoundGroup] = set()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._cores = torch.get_num_threads()
        self.speculation = RoundSpeculation(runtime.target, self.budget)
        self.records = RoundLog(MemoryMeter(runtime.target.device))  # peaks per round

    # -- public -------------------------------------------------------------------------
    @property
    def open_groups(self) -> int:
        return len(self._open)

    def submit(self, request: GroupRequest, runtime: Runtime | None = None,
               mode: RoundMode = BATCH) -> Future[GroupResult]:
        """Queue a group; ``mode``: plain batched decoding (``batch``), drafting with its
        runtime's drafter where the plan says it pays (``auto``) or at every step
        (``seed``)."""
        runtime = runtime or self.runtime
        if runtime.target is not self.runtime.target:
            raise ValueError("a round group must use this batcher's target")
        self._ensure_started()
        group = RoundGroup(request=request, runtime=runtime, future=Future(),
                           meter=MemoryMeter(runtime.target.device), mode=mode)
        self._open.add(group)
        group.future.add_done_callback(lambda _: self._open.discard(group))
        self._inbox.put(group)
        return group.future

    def calibrate(self, runtime: Runtime) -> None:
        """Measure the forward-cost curve now (a worker's start) instead of at the first
        ``auto`` group; once per model."""
        with self.target_lock, torch.inference_mode():
            began = time.perf_counter()
            self.speculation.calibrate(runtime.drafter, runtime.config.gamma)
            log.info("auto: cost model measured in %.1fs", time.perf_counter() - began)

    def _new_storage(self) -> RoundStorage:
        return new_round_batch(self.runtime.options.round_kv, self.kv.limit)

    def run(self, request: GroupRequest, runtime: Runtime | None = None,
            mode: RoundMode = BATCH) -> GroupResult:
        return self.submit(request, runtime, mode).result()

    def close(self) -> None:
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._inbox.put(_STOP)
        thread.join()
        closed = RuntimeError("the round batcher was closed before this group finished")
        for group in list(self._open):
            reject(group.future, closed)
        self._open.clear()

    # -- the loop -----------------------------------------------------------------------
    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            ready = threading.Event()
            self._thread = threading.Thread(target=self._main, args=(ready,),
                                            name="round-batcher", daemon=True)
            with lanes.keeping_default_threads():
                self._thread.start()
                ready.wait()

    def _main(self, ready: threading.Event) -> None:
        try:
            lanes.claim_threads(self._cores)
        finally:
            ready.set()
        with torch.inference_mode():
            while self._take_arrivals():
                self._guarded(self._batch.groups(), self._admit_waiting)
                if self._batch.rows:
                    self._guarded(self._batch.groups(), self._step)
                if not self._batch.rows and not self._waiting:
                    self.records.idle()  # the round is over: its peaks are kept and logged
        self._batch = self._new_storage()
        self._waiting.clear()

    def _take_arrivals(self) -> bool:
        """Move arrived groups to the FCFS queue; block only when there is nothing to do.
        False once closed."""
        idle = not self._batch.rows and not self._waiting
        while True:
            try:
                item = self._inbox.get(block=idle)
            except queue.Empty:
                return True
            if item is _STOP:
                return False
            assert isinstance(item, RoundGroup)
            self._waiting.append(item)
            idle = False

    def _guarded(self, groups: list[RoundGroup], step: Callable[..., None], *args: Any
                 ) -> None:
        """Run one step; an error that escaped the per-group handling fails the groups in
        the step and clears the round, and the loop goes on."""
        try:
            step(*args)
        except Exception as exc:
            log.error("round batcher: a step failed; failing %d group(s)", len(groups),
                      exc_info=exc)
            for group in groups:
                reject(group.future, exc)
            self._batch = self._new_storage()
            self.speculation.release()

    # -- decoding -----------------------------------------------------------------------
    def _step(self, riders: Riders | None = None) -> None:
        """One forward of every live row (its pending token and its draft, if the plan
        gives it one, and ``riders``' prefill tokens), then each row commits its tokens."""
        self._drop(lambda row: row.group.future.done())  # cancelled or failed groups
        if not self._batch.rows:
            return
        groups = self._batch.groups()
        plans = self._plan(riders)  # a draft model's riders ride in its first draft forward
        feeds = self._batch.feeds([p.tree.tokens if p.tree else [] for p in plans])
        tokens = sum(len(feed) for feed in feeds)
        mixed = riders if riders is not None and riders.model is None else None
        with self.target_lock:
            began = time.perf_counter()
            if self._last_forward is not None:
                self.stats.longest_stall = max(self.stats.longest_stall,
                                               began - self._last_forward)
            try:
                logits = self._forward(groups, feeds, mixed)
            finally:
                self._last_forward = time.perf_counter()
                elapsed = self._last_forward - began
                if mixed is not None and mixed.logits is not None:  # their share: theirs
                    elapsed -= mixed.share(elapsed, tokens)
                self.busy_seconds += elapsed
        width = max(len(feed) for feed in feeds)  # the short feeds are padded to it
        if mixed is None or mixed.logits is None:  # the cost curve is of rows alone
            self.speculation.observe_forward(len(feeds) * width, elapsed, len(feeds))
        self._count(groups, elapsed, tokens)
        self.kv.observe(self._batch, self.stats)
        self.records.observe(cache_bytes(self._batch), len(self._batch.rows), forward=True)
        kept = self._commit(plans, logits)
        self._batch.settle(kept, width)
        self.stats.compactions += self._batch.compact()
        self._leave()

    def _plan(self, riders: Riders | None = None) -> list[Planned]:
        """The rows' drafts (a draft model's ``riders`` fed in its first draft forward); a
        failed draft costs its step the speculation, not the rows."""
        try:
            return self.speculation.plan(self._batch.rows, riders)
        except Exception as exc:
            log.warning("round batcher: drafting failed (%s); decoding without drafts", exc)
            for row in self._batch.rows:
                self.speculation.rewind(row)
            return [Planned() for _ in self._batch.rows]

    def _commit(self, plans: list[Planned], logits: list[torch.Tensor | None]) -> list[int]:
        """Each row commits its token(s); returns the new columns each row keeps."""
        failed: set[RoundGroup] = set()
        kept = [1] * len(plans)
        for i, (row, plan, row_logits) in enumerate(
                zip(self._batch.rows, plans, logits, strict=True)):
            if row_logits is None or row.group in failed:
                continue
            try:
                if plan.tree is not None:
                    accepted = self.speculation.settle(row, plan, row_logits)
                    self.stats.drafted += len(plan.tree)
                    self.stats.accepted += accepted
                else:
                    row.token = commit_token(row.group.runtime, row.state, row_logits[0])
                    self.speculation.shadow(row, plan, row.token)
                    accepted = 0
            except Exception as exc:
                log.error("round batcher: committing a token failed", exc_info=exc)
                failed.add(row.group)
                reject(row.group.future, exc)
                continue
            kept[i] = 1 + accepted
            row.position += kept[i]
            row.state.target.length += kept[i]
        return kept

    def _forward(self, groups: list[RoundGroup], feeds: list[list[int]],
                 riders: Riders | None = None) -> list[torch.Tensor | None]:
        """Logits per row (``riders`` fed in the same forward when it succeeds); when the
        batched forward fails, each group is run alone and a group whose forward fails
        again is failed (its rows get None)."""
        if riders is not None:
            try:
                riders.logits, rows = self._batch.forward_mixed(
                    self.runtime.target, [f[1:] for f in feeds], riders.chains)
                return list(rows)
            except Exception as exc:  # the chains were cropped back: fed apart later
                riders.failed = True  # counted by the admission, as a draft's failure is
                log.warning("round batcher: a forward with a prefill failed (%s); the rows "
                            "and the prefill run apart", exc)
        try:
            return list(self._batch.forward(self.runtime.target, [f[1:] for f in feeds]))
        except Exception as exc:
            if len(groups) == 1:
                raise
            log.warning("round batcher: a forward of %d groups failed (%s); running each "
                        "group alone", len(groups), exc)
        self.stats.failed_batches += 1
        out: list[torch.Tensor | None] = [None] * len(self._batch.rows)
        pieces = []
        for group in groups:
            indices = [i for i, row in enumerate(self._batch.rows) if row.group is group]
            try:
                logits, cache = self._batch.forward_subset(self.runtime.target, indices, feeds)
            except Exception as exc:
                log.error("round batcher: a group's forward failed", exc_info=exc)
                reject(group.future, exc)
                continue
            pieces.append((indices, cache))
            for i, row_logits in zip(indices, logits, strict=True):
                out[i] = row_logits
        self._batch.extend(pieces, max(len(feed) for feed in feeds))
        return out

    def _count(self, groups: list[RoundGroup], seconds: float, tokens: int) -> None:
        rows = self._batch.rows
        self.stats.forwards += 1
        self.stats.rows += len(rows)
        self.stats.tokens += tokens
        if len(groups) > 1:
            self.stats.mixed_forwards += 1
            for group in groups:
                group.mixed_forwards += 1
        for row in rows:  # one forward, split evenly over its rows
            row.state.metrics.target_forwards += 1
            row.state.metrics.verify_seconds += seconds / len(rows)

    def _leave(self) -> None:
        """Finished sequences and failed groups leave; finished groups resolve."""
        finished = [row for row in self._batch.rows
                    if row.state.done and not row.group.future.done()]
        self._drop(lambda row: row.state.done or row.group.future.done())
        if not self._batch.rows:
            self._last_forward = None  # nobody waits: idle time is no stall
            self.speculation.release()  # the draft KV of the round's rows
        for row in finished:
            row.group.unfinished -= 1
            row.group.meter.tick()
            if row.group.unfinished == 0:
                if self._batch.rows:
                    self.stats.left_mid_round += 1
                self._finish(row.group)

    def _drop(self, gone: Callable[[Row], bool]) -> None:
        keep = [i for i, row in enumerate(self._batch.rows) if not gone(row)]
        self._batch.keep(keep)

    def _finish(self, group: RoundGroup) -> None:
        result = group.result(
            group.mode.engine, self.busy_seconds,
            round_mixed_forwards=float(group.mixed_forwards),
            round_peak_kv_bytes=float(group.peak_kv_bytes),
            round_peak_rows=float(group.peak_rows),
        )
        self._open.discard(group)  # before its caller wakes up
        resolve(group.future, result)
