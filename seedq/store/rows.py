"""Plain typed records that cross the store boundary (no ORM objects leave the store)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, TypeVar

T = TypeVar("T")
NUL = "\x00"
REPLACEMENT = "\ufffd"


def scrub(value: T) -> T:
    """``value`` with every NUL character (in strings, dict keys and values, lists) replaced
    by U+FFFD. PostgreSQL refuses NUL in TEXT and JSONB, and a model can write one; the
    store scrubs on every database so that both keep the same text."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT) if NUL in value else value  # type: ignore[return-value]
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list | tuple):
        return type(value)(scrub(v) for v in value)  # type: ignore[return-value]
    return value


class NodeRow(TypedDict):
    node_id: str
    parent_id: str | None
    depth: int
    kind: str
    thought: str | None
    evaluation: str | None
    score: float | None
    selected: bool
    failure: str | None
    metrics: dict[str, Any]


class GenerationRow(TypedDict):
    gen_key: str
    group_key: str
    seq_index: int
    node_id: str | None
    role: str | None
    strategy: str | None
    depth: int | None
    engine: str | None
    sequences: int
    shared: int
    new_tokens: int
    drafted_tokens: int
    accepted_tokens: int
    target_forwards: int
    draft_forwards: int
    reused_prompt_tokens: NotRequired[int]  # revision 0005; absent: 0
    draft_seconds: float
    verify_seconds: float
    wait_seconds: float
    wall_seconds: float


@dataclass(frozen=True)
class NewJob:
    """A validated line, ready to be stored as a queued job."""

    id: str
    line_no: int
    custom_id: str
    task: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Rejection:
    """A line that failed validation: where, which field, why, and its raw text."""

    line_no: int
    field: str | None
    reason: str
    raw: str
    custom_id: str | None = None  # the line's own, when it has a usable one

    def message(self) -> str:
        where = f"line {self.line_no}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


@dataclass(frozen=True)
class Claimed:
    """A job this worker now owns: attempt number, its stored payload and the engine
    options of its batch (None: the worker's own engine)."""

    job_id: str
    batch_id: str
    attempt: int
    payload: dict[str, Any]
    engine: dict[str, Any] | None = None
    attempt_base: int = 0  # attempts made before the last `seedq retry`

    @property
    def budget_used(self) -> int:
        """Attempts counted against ``max_attempts`` (those since the last retry)."""
        return self.attempt - self.attempt_base


@dataclass(frozen=True)
class ClaimRefused:
    """Why a dequeued job was not started (``status`` is its current database status)."""

    job_id: str
    status: str | None


@dataclass(frozen=True)
class StaleJob:
    job_id: str
    attempts: int
    worker: str | None
    attempt_base: int = 0

    @property
    def budget_used(self) -> int:
        return self.attempts - self.attempt_base


@dataclass(frozen=True)
class RetryTarget:
    job_id: str
    batch_id: str
    queue: str
