"""Per-job limits enforced by the worker: prompt size and the worker's memory budget.

Every group request of a job goes through :class:`GuardedGenerator`:

- its prompts are tokenized with the worker's tokenizer and refused when longer than
  ``SEEDQ_MAX_PROMPT_TOKENS`` or than the model's context minus ``max_new_tokens``;
- the worker's resident memory is sampled before and after the request; past
  ``SEEDQ_WORKER_MEMORY_BUDGET_MB`` the heap's freed pages are first handed back to the
  system (glibc keeps them: a long-running worker's RSS grew ~1 GB per `seedq run` of 6
  GSM8K trees while what was in use stayed flat), and only if it is still over does the job
  that saw it fail (one job at a time: the others go on while that one releases its memory).

Both raise :class:`JobTooLarge`, a ``DecodingError``: the job fails with error kind ``input``
and is never retried, and the worker takes the next job.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import gc
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from seedq.decoding.types import DecodingError, GroupRequest, GroupResult
from seedq.settings import Settings

log = logging.getLogger(__name__)
MB = 1 << 20
DEFAULT_BUDGET_SHARE = 0.75  # of the machine's memory, when no budget is set
TRIM_INTERVAL = 1.0  # seconds between two heap trims while over the budget


class JobTooLarge(DecodingError):
    """The job needs more than this worker allows (prompt tokens, memory): never retried."""


def current_rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc), so RSS reflects what is in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryGuard:
    """The worker's memory budget; ``check`` fails the first job that finds it exceeded."""

    def __init__(self, budget_bytes: int, rss: Callable[[], int] = current_rss,
                 trim: Callable[[], None] = _trim_heap) -> None:
        self.budget = budget_bytes
        self.rss = rss
        self.trim = trim
        self.victim: str | None = None
        self._reclaim = False  # a failed job's memory may be freed but not yet returned
        self._trimmed_at = -math.inf
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryGuard:
        mb = settings.worker_memory_budget_mb
        if mb is None:
            return cls(int(psutil.virtual_memory().total * DEFAULT_BUDGET_SHARE))
        return cls(mb * MB)

    def check(self, job_id: str) -> None:
        if self.budget <= 0:
            return
        rss = self.rss()
        if rss > self.budget and self._may_trim():
            self.trim()  # freed but retained heap pages are not in use
            rss = self.rss()
        if rss <= self.budget:
            return
        with self._lock:
            if self.victim not in (None, job_id):
                return  # another job is being failed for this; let it release first
            self.victim = job_id
        raise JobTooLarge(
            f"job stopped: the worker's memory reached {rss // MB} MB, over its budget of "
            f"{self.budget // MB} MB (SEEDQ_WORKER_MEMORY_BUDGET_MB); make the job smaller "
            "(shorter input, smaller tree or draft) or raise the budget"
        )

    def _may_trim(self) -> bool:
        """At most one trim per ``TRIM_INTERVAL`` seconds (a full gc pass), except right
        after a job was failed for memory (what it held is to be reclaimed)."""
        now = time.monotonic()
        with self._lock:
            if not self._reclaim and now - self._trimmed_at < TRIM_INTERVAL:
                return False
            self._reclaim, self._trimmed_at = False, now
            return True

    def release(self, job_id: str) -> None:
        """``job_id`` is over: if it was failed for memory, reclaim what it held."""
        with self._lock:
            if self.victim != job_id:
                return
            self.victim = None
            self._reclaim = True
        log.warning("job %s failed over the worker's memory budget", job_id)


@dataclass
class JobLimits:
    """The limits a worker applies to each of its jobs."""

    memory: MemoryGuard
    max_prompt_tokens: int
    _tokenizers: dict[int, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_tokens(self, runtime: Any, prompts: set[str], chat: bool) -> dict[str, int]:
        """Token counts through this guard's own copy of the runtime's tokenizer (the engine's
        may be encoding on another thread, and a fast tokenizer is not safe to share)."""
        with self._lock:
            tokenizer = self._tokenizers.get(id(runtime))
            if tokenizer is None:
                tokenizer = self._tokenizers[id(runtime)] = copy.deepcopy(runtime.tokenizer)
            return {p: len(tokenizer.encode(p, chat)) for p in prompts}

    @classmethod
    def from_settings(cls, settings: Settings) -> JobLimits:
        return cls(MemoryGuard.from_settings(settings), settings.max_prompt_tokens)

    def wrap(self, generator: Any, job_id: str) -> GuardedGenerator:
        return GuardedGenerator(generator, job_id, self)


class GuardedGenerator:
    """One job's view of the worker's generator, with :class:`JobLimits` applied."""

    def __init__(self, inner: Any, job_id: str, limits: JobLimits) -> None:
        self.inner = inner
        self.job_id = job_id
        self.limits = limits

    async def generate(self, request: GroupRequest) -> GroupResult:
        self.limits.memory.check(self.job_id)
        await self._check_prompts(request)
        result: GroupResult | None = await self.inner.generate(request)
        try:
            self.limits.memory.check(self.job_id)
        except JobTooLarge:
            result = None  # let go of it now: the traceback keeps this frame alive
            raise
        assert result is not None
        return result

    async def _check_prompts(self, request: GroupRequest) -> None:
        runtime = _runtime_of(self.inner)
        if runtime is None:
            return
        context = _context_length(runtime)
        prompts = set(request.prompts)
        counts = await asyncio.to_thread(
            self.limits.count_tokens, runtime, prompts, request.chat
        )
        for index, prompt in enumerate(request.prompts):
            room = request.params_for(index).max_new_tokens
            limit = self.limits.max_prompt_tokens
            if context is not None:
                limit = min(limit, context - room)
            if counts[prompt] > limit:
                raise JobTooLarge(
                    f"prompt of {counts[prompt]} tokens is over the limit of {max(limit, 0)} "
                    f"(SEEDQ_MAX_PROMPT_TOKENS {self.limits.max_prompt_tokens}"
                    + (f", model context {context} - {room} new tokens" if context else "")
                    + "): shorten the job's input"
                )


def _runtime_of(generator: Any) -> Any:
    """The decoding runtime (tokenizer, models) under the worker's generator wrappers."""
    seen = 0
    while generator is not None and seen < 8:
        runtime = getattr(generator, "runtime", None)
        if runtime is not None and hasattr(runtime, "tokenizer"):
            return runtime
        generator = getattr(generator, "inner", None) or getattr(generator, "tap", None)
        seen += 1
    return None


def _context_length(runtime: Any) -> int | None:
    config = getattr(getattr(getattr(runtime, "target", None), "model", None), "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None
