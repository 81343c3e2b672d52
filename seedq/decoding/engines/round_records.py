"""Peaks per round: from the moment the round batcher gets work until it is idle again.

A worker's round (the trees it has in flight) keeps the batcher busy from idle to idle; the
KV budget (``SEEDQ_ROUND_KV_MB``) is checked at admission, and this record says what the
round really used: its peak KV bytes (the round cache's tensors) and rows, the device
memory (CUDA allocated bytes, or the process RSS on a CPU) sampled after every forward, how
many groups and forwards it took and how long. The last :data:`KEEP` rounds are kept
(``RoundBatcher.stats.rounds``) and each closed round is logged at INFO.

Also the loop's running counters (:class:`RoundStats`) and its two per-forward limits read
from the environment (:func:`token_budget`, :func:`prefill_chunk`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from seedq.decoding.engines.base import MemoryMeter
from seedq.decoding.engines.round_budget import KvStats

log = logging.getLogger(__name__)
KEEP = 64
MB = 1 << 20


@dataclass
class RoundRecord:
    started: float = field(default_factory=time.time)  # wall clock, for logs and metrics
    seconds: float = 0.0
    groups: int = 0
    forwards: int = 0
    peak_kv_bytes: int = 0
    peak_rows: int = 0
    peak_memory_bytes: int = 0


class RoundLog:
    """The open round's record, and the closed ones."""

    def __init__(self, meter: MemoryMeter) -> None:
        self.meter = meter
        self.closed: deque[RoundRecord] = deque(maxlen=KEEP)
        self.current: RoundRecord | None = None
        self._began = 0.0

    def _open(self) -> RoundRecord:
        if self.current is None:
            self.current = RoundRecord()
            self._began = time.perf_counter()
            self.meter.peak = 0
        return self.current

    def admitted(self) -> None:
        self._open().groups += 1

    def observe(self, kv_bytes: int, rows: int, forward: bool) -> None:
        record = self._open()
        record.forwards += forward
        record.peak_kv_bytes = max(record.peak_kv_bytes, kv_bytes)
        record.peak_rows = max(record.peak_rows, rows)
        self.meter.sample()
        record.peak_memory_bytes = max(record.peak_memory_bytes, self.meter.peak)

    def idle(self) -> RoundRecord | None:
        """The batcher ran out of work: close the open round (if any) and return it."""
        record, self.current = self.current, None
        if record is None:
            return None
        record.seconds = time.perf_counter() - self._began
        self.closed.append(record)
        log.info("round: %d groups, %d forwards in %.1fs; peak KV %.1f MiB, %d rows, "
                 "memory %.1f MiB", record.groups, record.forwards, record.seconds,
                 record.peak_kv_bytes / MB, record.peak_rows, record.peak_memory_bytes / MB)
        return record


@dataclass
class RoundStats(KvStats):
    """What the loop did, for tests and benchmarks (KV peaks and waits: :class:`KvStats`)."""

    forwards: int = 0
    rows: int = 0  # rows over all forwards (rows / forwards = the mean batch)
    mixed_forwards: int = 0  # forwards with rows of two or more groups
    joined_mid_round: int = 0  # groups admitted while other groups' rows were live
    left_mid_round: int = 0  # groups finished while other groups' rows stayed live
    failed_batches: int = 0  # batched forwards retried group by group
    tokens: int = 0  # tokens fed over all forwards (rows + draft tokens)
    drafted: int = 0  # draft tokens verified (auto groups)
    accepted: int = 0  # of those, accepted
    compactions: int = 0  # times the cache's holes were squeezed out
    prefill_chunks: int = 0  # chunk boundaries of admitted groups' prefills
    steps_between_chunks: int = 0  # decode steps run between two chunks of a prefill
    mixed_prefills: int = 0  # forwards of the rows that also fed a joining group's prefill
    mixed_prefill_tokens: int = 0  # prefill tokens fed in those forwards
    mixed_draft_prefills: int = 0  # of those, a draft model's prefill in its draft forward
    failed_mixes: int = 0  # such forwards that failed (rows and prefill then ran apart)
    draftless_groups: int = 0  # auto groups whose draft model did not pay when they joined
    longest_stall: float = 0.0  # seconds live rows waited between two of their forwards
