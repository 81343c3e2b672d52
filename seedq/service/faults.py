"""Which failures are worth retrying: transient faults yes, bad input never."""

from __future__ import annotations

import enum
import traceback

import redis.exceptions
from sqlalchemy import exc as sa_exc

TRACEBACK_LIMIT = 20_000


class FaultKind(str, enum.Enum):
    INPUT = "input"  # the job itself is invalid: never retried
    TRANSIENT = "transient"  # lost Redis / database connection, CUDA out of memory: retried
    TIMEOUT = "timeout"  # the tree ran past the job timeout
    INTERNAL = "internal"  # a bug or an unexpected error: failed, `seedq retry` to run again


class TransientFault(RuntimeError):
    """Raise to ask for a retry with backoff."""


def _is_cuda_oom(exc: BaseException) -> bool:
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "CUDA out of memory" in text or "CUDA error: out of memory" in text
    )


def _is_input_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"JobSpecError", "DecodingError", "PayloadError"})


def classify(exc: BaseException) -> FaultKind:
    """Sort an exception raised while running a job into a :class:`FaultKind`."""
    if _is_input_error(exc):
        return FaultKind.INPUT
    if isinstance(exc, TimeoutError):
        return FaultKind.TIMEOUT
    transient = (
        TransientFault,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        sa_exc.OperationalError,
        sa_exc.DisconnectionError,
        ConnectionError,
    )
    if isinstance(exc, transient) or _is_cuda_oom(exc):
        return FaultKind.TRANSIENT
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return FaultKind.TRANSIENT
    return FaultKind.INTERNAL


def describe(exc: BaseException) -> str:
    """The error as stored in ``jobs.error``: a one-line summary, then the traceback."""
    summary = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(exc))
    return f"{summary}\n\n{tb}"[:TRACEBACK_LIMIT]
