"""Stopping a group that nobody waits for any more, at its next model forward.

Engines that run a whole group in one call (``ar``, ``batch``, ``sd``, ``mcsd``, run by
``LocalGenerator.generate`` in ``asyncio.to_thread``) cannot be interrupted from outside: a
cancelled ``await`` leaves the thread running, holding the target lock. So the caller runs
the group inside :func:`cancellable` with a ``threading.Event`` it sets when it gives up, and
a forward pre-hook on every model (:func:`install`) raises :class:`GroupCancelled` at the
next forward of that thread once the event is set. Threads that never enter
:func:`cancellable` (the SeeD scheduler's) are not affected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_EVENT: ContextVar[threading.Event | None] = ContextVar("seedq_group_cancel", default=None)
_INSTALLED = "_seedq_cancel_hook"


class GroupCancelled(Exception):
    """The caller of a group went away (timeout, cancel, shutdown); the group was dropped."""


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Run the body so that model forwards in this thread stop once ``event`` is set."""
    token = _EVENT.set(event)
    try:
        yield
    finally:
        _EVENT.reset(token)


def check() -> None:
    """Raise :class:`GroupCancelled` when the group running in this thread was cancelled."""
    event = _EVENT.get()
    if event is not None and event.is_set():
        raise GroupCancelled("the caller cancelled this group")


def _pre_forward(module: Any, args: Any) -> None:
    check()


def install(module: Any) -> None:
    """Check for cancellation before every forward of ``module`` (once per module)."""
    if getattr(module, _INSTALLED, False):
        return
    module.register_forward_pre_hook(_pre_forward)
    setattr(module, _INSTALLED, True)
