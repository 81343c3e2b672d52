"""What every generator over one loaded target shares (the worker's own generator and those
derived from it for batches' engine options): one lock, so that two engines never run
forwards on the target at the same time, ONE SeeD scheduler, so that every seed group,
whatever its options, is verified by the same verifier thread first-come-first-served, and
ONE round batcher, so that the ``batch`` groups of all callers share each target forward."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from seedq.decoding.engines.base import Runtime
from seedq.decoding.engines.rounds import RoundBatcher
from seedq.decoding.engines.seed import SeedScheduler


@dataclass(eq=False)
class TargetHub:
    lock: threading.Lock = field(default_factory=threading.Lock)
    scheduler: SeedScheduler | None = None
    rounds: RoundBatcher | None = None
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def share(self, built: SeedScheduler) -> SeedScheduler:
        """The hub's scheduler; ``built`` (not started yet) becomes it when there is none."""
        with self._guard:
            if self.scheduler is None:
                built.target_lock = self.lock
                self.scheduler = built
            return self.scheduler

    def round_batcher(self, runtime: Runtime) -> RoundBatcher:
        """The hub's round batcher (started on its first group), built over ``runtime``'s
        target when there is none."""
        with self._guard:
            if self.rounds is None:
                self.rounds = RoundBatcher(runtime, self.lock)
            return self.rounds

    def close(self) -> None:
        with self._guard:
            scheduler, rounds = self.scheduler, self.rounds
        for shared in (scheduler, rounds):
            if shared is not None:
                shared.close()
