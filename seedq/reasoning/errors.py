"""Errors raised by the reasoning package."""

from __future__ import annotations


class JobSpecError(ValueError):
    """A job line is invalid. ``field`` names the offending field (dotted for nested ones,
    e.g. ``search.breadth`` or ``templates.thought``); ``reason`` says what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ReasoningError(RuntimeError):
    """The search could not continue (for example the generator broke the group contract)."""
