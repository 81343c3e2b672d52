"""Progress bars of ``seedq solve``, ``seedq run`` and ``seedq submit --wait``.

Drawn with ``rich`` on stderr, and only when stderr is a terminal: on a pipe or in a file
nothing is drawn (the commands' own lines are unchanged). A bar shows trees done/total and
the tokens per second generated since it started.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from seedq.decoding.types import GroupGenerator, GroupRequest, GroupResult
from seedq.service.events import JobEnd, WorkerListener

ENDED = ("completed", "failed")  # attempts that finish a tree (a retry runs it again)


def group_tokens(result: GroupResult) -> int:
    return sum(seq.metrics.new_tokens for seq in result.sequences)


class TreeProgress:
    """Trees done of ``total``, and tokens/s; a no-op unless the console is a terminal."""

    def __init__(self, total: int | None, label: str = "trees",
                 console: Console | None = None) -> None:
        self.console = console if console is not None else Console(stderr=True)
        self.enabled = self.console.is_terminal
        self.tokens = 0
        self.started = time.perf_counter()
        self._bar: Progress | None = None
        self._task: Any = None
        self.total, self.label = total, label

    def start(self) -> TreeProgress:
        if self.enabled and self._bar is None:
            self.started = time.perf_counter()
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                console=self.console, transient=False,
            )
            self._task = self._bar.add_task(self.label, total=self.total, rate="")
            self._bar.start()
        return self

    def stop(self) -> None:
        if self._bar is not None:
            self._refresh()
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> TreeProgress:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)
            self._refresh()

    def set_done(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
            self._refresh()

    def add_tokens(self, n: int) -> None:
        self.tokens += n
        self._refresh()

    def tokens_per_second(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def _refresh(self) -> None:
        if self._bar is not None and self.tokens:
            self._bar.update(self._task, rate=f"{self.tokens_per_second():.1f} tokens/s")

    def echo(self, text: str) -> None:
        """A line of the command's output: on stdout, or above the bar when both stdout and
        the bar share the terminal (so that they do not overwrite each other)."""
        if self._bar is not None and sys.stdout.isatty():
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(text)

    def note(self, text: str) -> None:
        """A line above the bar (plain stderr when there is no bar)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def counting(self, generator: GroupGenerator) -> GroupGenerator:
        """``generator``, adding the tokens of every group it returns to the bar."""
        return _Counting(generator, self) if self.enabled else generator

    def listener(self) -> WorkerListener:
        """The bar as a worker listener (``seedq run``'s in-process worker)."""
        return _Listener(self)


class _Counting:
    def __init__(self, inner: GroupGenerator, progress: TreeProgress) -> None:
        self.inner = inner
        self.progress = progress

    async def generate(self, request: GroupRequest) -> GroupResult:
        result = await self.inner.generate(request)
        self.progress.add_tokens(group_tokens(result))
        return result

    def __getattr__(self, name: str) -> Any:  # close() and the like
        return getattr(self.inner, name)


class _Listener(WorkerListener):
    def __init__(self, progress: TreeProgress) -> None:
        self.progress = progress

    def jobs_expected(self, total: int) -> None:
        self.progress.set_total(total)

    def job_ended(self, end: JobEnd) -> None:
        if end.status in ENDED:
            self.progress.advance()

    def group_done(self, engine: str, result: GroupResult) -> None:
        self.progress.add_tokens(group_tokens(result))
