"""Job lines: validation into a frozen :class:`JobSpec` (the contract with the service).

A line is a JSON object with the task's own fields (gsm8k ``question``/``answer``,
creative_writing ``sentences``/``input``, blocksworld ``init``/``goal``/``plan`` ...),
optionally ``task``, ``custom_id`` (or ``id``), ``search`` (an object of
:class:`SearchParams` fields) and ``meta`` (free-form, ignored). Anything else is an error
naming the field.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.params import EVALUATORS, GENERATORS, SEARCHES, SearchParams
from seedq.reasoning.tasks import TASK_NAMES, Task, get_task

RESERVED_FIELDS = ("custom_id", "id", "task", "search", "meta")
MAX_ID_LENGTH = 256

__all__ = [
    "EVALUATORS",
    "GENERATORS",
    "SEARCHES",
    "TASK_NAMES",
    "JobSpec",
    "JobSpecError",
    "SearchParams",
    "derive_seed",
    "parse_job",
]


@dataclass(frozen=True)
class JobSpec:
    """One validated job: which task, its normalized input and how to search."""

    custom_id: str | None
    task: str
    input: dict[str, Any]
    search: SearchParams

    def to_json(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "task": self.task,
            "input": self.input,
            "search": self.search.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        """Inverse of :meth:`to_json`; the input and parameters are validated again."""
        if not isinstance(data, Mapping):
            raise JobSpecError("spec", "must be an object")
        task = get_task(data.get("task"))
        raw_input = data.get("input")
        if not isinstance(raw_input, Mapping):
            raise JobSpecError("input", "must be an object")
        normalized = task.validate(raw_input)
        params = SearchParams.from_json(data.get("search") or {})
        task.check_search(normalized, params)
        return cls(_custom_id(data), task.name, normalized, params)


def parse_job(
    line: dict[str, Any],
    *,
    default_task: str | None = None,
    defaults: SearchParams | None = None,
) -> JobSpec:
    """Validate one job line. The task is the line's ``task`` field, else ``default_task``.

    Search parameters, lowest precedence first: the :class:`SearchParams` defaults, the
    task's own defaults for this input (e.g. blocksworld depth = the gold plan length,
    creative_writing depth 2), the fields of ``defaults`` that differ from the
    :class:`SearchParams` defaults (treated as set by the caller), the line's ``search``
    object. A missing seed is derived from ``custom_id`` (else from the input), so a re-run
    reproduces the tree. Raises :class:`JobSpecError` naming the first bad field.
    """
    if not isinstance(line, Mapping):
        raise JobSpecError("line", f"must be a JSON object, got {type(line).__name__}")
    name = line.get("task") if line.get("task") is not None else default_task
    if name is None:
        raise JobSpecError("task", "missing: give a 'task' field or a default task")
    task = get_task(name)
    _check_fields(line, task)
    custom_id = _custom_id(line)
    data = task.validate(line)
    search = line.get("search")
    if search is not None and not isinstance(search, Mapping):
        raise JobSpecError("search", f"must be an object, got {type(search).__name__}")
    params = _base_params(task.search_defaults(data), defaults).updated(search or {})
    if params.seed is None:
        params = replace(params, seed=derive_seed(custom_id, task.name, data))
    task.check_search(data, params)
    return JobSpec(custom_id=custom_id, task=task.name, input=data, search=params)


def _base_params(task_defaults: Mapping[str, Any], defaults: SearchParams | None
                 ) -> SearchParams:
    plain = SearchParams()
    if defaults is None:
        return plain.updated(task_defaults)
    caller_set = {name: value for name, value in defaults.to_json().items()
                  if value != getattr(plain, name)}
    return plain.updated({**task_defaults, **caller_set})


def derive_seed(custom_id: str | None, task: str, data: Mapping[str, Any]) -> int:
    """A stable 31-bit seed from the job's id, or from its task and input when it has none."""
    key = custom_id if custom_id is not None else json.dumps(
        {"task": task, "input": data}, sort_keys=True, ensure_ascii=False
    )
    return zlib.crc32(key.encode("utf-8")) & 0x7FFFFFFF


def _check_fields(line: Mapping[str, Any], task: Task) -> None:
    known = (*RESERVED_FIELDS, *task.fields, *task.ignored)
    for name in line:
        if name not in known:
            raise JobSpecError(
                str(name),
                f"unknown field for task {task.name!r} (known: {', '.join(known)})",
            )


def _custom_id(line: Mapping[str, Any]) -> str | None:
    field = "custom_id" if line.get("custom_id") is not None else "id"
    value = line.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise JobSpecError(field, "must be a string or an integer")
    text = str(value)
    if not text.strip() or len(text) > MAX_ID_LENGTH:
        raise JobSpecError(field, f"must be 1..{MAX_ID_LENGTH} characters")
    return text
