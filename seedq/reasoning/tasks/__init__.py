"""Task plugins, registered by name."""

from __future__ import annotations

from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.tasks.base import Outcome, Problem, Step, Task
from seedq.reasoning.tasks.blocksworld import BlocksworldTask
from seedq.reasoning.tasks.creative_writing import CreativeWritingTask
from seedq.reasoning.tasks.custom import CustomTask
from seedq.reasoning.tasks.gsm8k import Gsm8kTask

TASKS: dict[str, Task] = {
    task.name: task
    for task in (Gsm8kTask(), CreativeWritingTask(), BlocksworldTask(), CustomTask())
}
TASK_NAMES = tuple(TASKS)


def get_task(name: object) -> Task:
    """The registered task ``name``; JobSpecError(field="task") when unknown."""
    try:
        return TASKS[name]  # type: ignore[index]
    except (KeyError, TypeError):
        raise JobSpecError("task", f"unknown task {name!r} (known: {', '.join(TASKS)})") from None


__all__ = ["TASKS", "TASK_NAMES", "Outcome", "Problem", "Step", "Task", "get_task"]
