"""``seedq status``, ``seedq workers`` (both with ``--watch``) and ``seedq submit --wait``.

Both say when no live worker listens on a batch's queue: the status table shows ``no worker``
instead of an ETA, and ``submit --wait`` warns (and keeps waiting, a worker may come).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import click

from seedq.cli.progress import TreeProgress
from seedq.queue import pending_count
from seedq.service import control, present
from seedq.service.context import Services
from seedq.store import reports
from seedq.store.batch_object import batch_object

WORKER_CHECK_SECONDS = 5.0


def listened_queues(services: Services) -> set[str]:
    """The queues at least one live worker listens on."""
    return {name for w in control.list_workers(services) for name in w.queues}


def no_worker_hint(queue: str) -> str:
    return f"no live worker listens on queue {queue}: start one with `seedq worker --queue {queue}`"


def status_json(services: Services, batch: str | None, limit: int) -> str:
    """One batch object for BATCH, else a list of them (see :mod:`seedq.store.batch_object`)."""
    ids = [batch] if batch else reports.recent_batch_ids(services.db, limit)
    summaries = reports.summarize(services.db, ids)
    if batch and not summaries:
        raise click.ClickException(f"no batch {batch!r}")
    listened = listened_queues(services)
    objects = [batch_object(s, workers_listening=s.queue in listened) for s in summaries]
    return json.dumps(objects[0] if batch else objects, indent=2)


def status_frame(services: Services, batch: str | None, limit: int) -> tuple[str, str, bool]:
    """The status table, the notes under it (queues, workers) and whether BATCH is done."""
    ids = [batch] if batch else reports.recent_batch_ids(services.db, limit)
    summaries = reports.summarize(services.db, ids)
    if batch and not summaries:
        raise click.ClickException(f"no batch {batch!r}")
    alive = control.list_workers(services)
    listened = {name for w in alive for name in w.queues}
    table = present.status_table(summaries, listened) if summaries else "no batches yet"
    notes = []
    busy = {s.queue for s in summaries if not s.done}
    for name in sorted({s.queue for s in summaries} or {services.settings.queue}):
        line = f"queue {name}: {pending_count(services.queue(name))} waiting"
        if name in busy and name not in listened:
            line += f"; {no_worker_hint(name)}"
        notes.append(line)
    notes.append(f"{len(alive)} live worker(s)")
    return table, "\n".join(notes), bool(batch) and all(s.done for s in summaries)


def workers_frame(services: Services, include_dead: bool) -> str:
    infos = control.list_workers(services, include_dead=include_dead)
    return present.workers_table(infos) if infos else "no live workers"


def watch(frame: Callable[[], tuple[str, bool]], interval: float) -> None:
    """Show ``frame()``'s text every ``interval`` seconds (redrawn in place on a terminal)
    until it says it is done, or Ctrl-C."""
    tty = sys.stdout.isatty()
    try:
        while True:
            text, done = frame()
            if tty:
                click.clear()
            stamp = time.strftime("%H:%M:%S")
            click.echo(f"{text}\n(every {interval:g}s, {stamp}; Ctrl-C to stop)")
            if done:
                return
            time.sleep(interval)
            if not tty:
                click.echo("")
    except KeyboardInterrupt:
        return


def wait_for(services: Services, batch_id: str, poll: float = 1.0) -> None:
    """A progress bar (on a terminal) over finished jobs until the batch is done, warning
    while no live worker listens on its queue."""
    summary = reports.summarize(services.db, [batch_id])[0]
    total = summary.total - summary.counts.get("rejected", 0)
    warned, checked = False, 0.0
    with TreeProgress(total, batch_id) as bar:
        while not summary.done:
            if time.monotonic() - checked >= WORKER_CHECK_SECONDS:
                checked = time.monotonic()
                listened = summary.queue in listened_queues(services)
                if not listened and not warned:
                    bar.note(f"waiting: {no_worker_hint(summary.queue)}")
                elif listened and warned:
                    bar.note(f"a worker now listens on queue {summary.queue}")
                warned = not listened
            time.sleep(poll)
            summary = reports.summarize(services.db, [batch_id])[0]
            bar.set_done(total - summary.remaining)
    click.echo(present.status_table([summary]), err=True)
