"""What each SeeD scheduler thread owns besides its loop: its intra-op thread count on a CPU
and its CUDA stream on a GPU, and the hand-over of a sequence between threads.

Thread counts: ``torch.set_num_threads`` called in a thread sets that thread's count, but
also the process-wide default that threads created later start with. The scheduler threads
set their own count (:func:`claim_threads`) and the thread that starts them puts the
default back once they have (:func:`keeping_default_threads`), so nothing outside the
scheduler sees a changed count.

Streams: on CUDA every scheduler thread queues its kernels on its own stream, so drafting and
verification can overlap on the device. A sequence moves between a drafter and the verifier
with an event recorded on the sender's stream (:meth:`Lane.hand_over`); the receiver's stream
waits for it and marks the draft cache's tensors as used on its stream, so that the caching
allocator never reuses their memory while the other stream may still read it
(:meth:`Lane.receive`). On a CPU a lane does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from seedq.decoding.sequence import SequenceState


def thread_split(device_type: str, draft_threads: int, cores: int | None = None,
                 override: tuple[int, int] | None = None) -> tuple[int, int]:
    """Intra-op threads for the verifier and for each drafter thread (0: leave torch's
    default). On a CPU the cores are split so that the verifier plus all drafters use at
    most ``cores`` (the caller's torch thread count), half or more to the verifier, which
    runs the bigger model; every thread gets at least one, so only when there are fewer
    cores than threads is the machine oversubscribed. ``override`` (the options'
    ``seed_threads``, ``SEEDQ_SEED_THREADS="V,D"``) replaces the split."""
    if override is not None:
        return override
    if device_type != "cpu":
        return 0, 0
    cores = max(1, cores if cores is not None else torch.get_num_threads())
    drafters = max(1, draft_threads)
    per_drafter = max(1, cores // 2 // drafters)
    return max(1, cores - per_drafter * drafters), per_drafter


def claim_threads(count: int) -> None:
    """In a scheduler thread: use ``count`` intra-op threads (0: torch's default). torch
    applies its process default to a thread the first time the thread asks, so ask first."""
    torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)


@contextlib.contextmanager
def keeping_default_threads() -> Iterator[None]:
    """Around starting scheduler threads and waiting until each has claimed its count: put
    back the default count that threads created later start with (and this thread's)."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _draft_tensors(state: SequenceState) -> Iterator[torch.Tensor]:
    cache = state.draft.cache if state.draft is not None else None
    for layer in getattr(cache, "layers", ()):
        if getattr(layer, "is_initialized", False):
            yield layer.keys
            yield layer.values


class Lane:
    """One scheduler thread's CUDA stream (none on a CPU). Create it in its thread."""

    def __init__(self, device: torch.device) -> None:
        self.stream: Any = torch.cuda.Stream(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Run the body with this lane's stream as the thread's current stream."""
        if self.stream is None:
            yield
            return
        with torch.cuda.stream(self.stream):
            yield

    def hand_over(self) -> Any:
        """After working on a sequence: an event the next thread waits for (None on CPU)."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def receive(self, state: SequenceState, event: Any) -> None:
        """Before working on a sequence another thread handed over with ``event``."""
        if self.stream is None:
            return
        if event is not None:
            self.stream.wait_event(event)
        for tensor in _draft_tensors(state):
            if tensor.is_cuda:
                tensor.record_stream(self.stream)
