"""The heartbeat thread of a worker.

It runs apart from the event loop so that a long model forward cannot starve it. Every
``interval`` seconds it refreshes the worker's RQ heartbeat, the RQ execution of every running
job and the jobs' ``heartbeat_at`` in the database; jobs the database says this worker no
longer owns (cancelled, or re-run elsewhere) are reported through ``on_lost``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Calls ``beat()`` every ``interval`` seconds until :meth:`stop`; ``beat`` returns the ids
    of jobs that were lost, which go to ``on_lost``. Failures are logged and retried."""

    def __init__(
        self,
        interval: float,
        beat: Callable[[], set[str]],
        on_lost: Callable[[set[str]], None],
        name: str = "seedq-heartbeat",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self._beat = beat
        self._on_lost = on_lost
        self._stopped = threading.Event()
        self.beats = 0
        self.failures = 0

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.beat_once()

    def beat_once(self) -> None:
        try:
            lost = self._beat()
        except Exception:
            self.failures += 1
            log.warning("heartbeat failed (will retry in %.1fs)", self.interval, exc_info=True)
            return
        self.beats += 1
        if lost:
            self._on_lost(lost)

    def stop(self, timeout: float | None = None) -> None:
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
