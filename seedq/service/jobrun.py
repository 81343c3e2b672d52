"""Running one claimed job's tree: parse its spec, search, write every node as it comes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from seedq.decoding.types import GroupGenerator, GroupRequest, GroupResult
from seedq.reasoning.jobs import JobSpec
from seedq.reasoning.runner import TreeResult, run_tree
from seedq.reasoning.tree import Node
from seedq.service.events import WorkerListener
from seedq.service.guards import JobLimits
from seedq.service.records import generation_rows, node_row
from seedq.service.usage import JobUsage
from seedq.store import repo
from seedq.store.db import Database
from seedq.store.rows import Claimed

log = logging.getLogger(__name__)


class EngineTap:
    """One generator of the worker (its own or one derived for a batch's engine options),
    remembering the engine name its results report."""

    def __init__(self, inner: GroupGenerator) -> None:
        self.inner = inner
        self.engine: str | None = None

    async def generate(self, request: GroupRequest) -> GroupResult:
        result = await self.inner.generate(request)
        self.engine = result.engine
        return result

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


class NodeWriter:
    """The ``on_node`` callback: upsert the node and its generations (off the event loop)."""

    def __init__(self, db: Database, claim: Claimed, engine: Callable[[], str | None],
                 listener: WorkerListener | None = None) -> None:
        self.db = db
        self.claim = claim
        self.engine = engine
        self.written = 0
        self.listener = listener or WorkerListener()
        self.last = time.perf_counter()

    async def __call__(self, node: Node) -> None:
        now = time.perf_counter()
        self.listener.node_done(self.engine() or "unknown", now - self.last)
        self.last = now
        row = node_row(node)
        gens = generation_rows(node, self.engine())
        await asyncio.to_thread(
            repo.record_node, self.db, self.claim.job_id, self.claim.attempt, row, gens
        )
        self.written += 1


class Observed:
    """A job's view of its generator that tells ``listener`` about every group result."""

    def __init__(self, tap: EngineTap, listener: WorkerListener) -> None:
        self.tap = tap
        self.listener = listener

    async def generate(self, request: GroupRequest) -> GroupResult:
        result = await self.tap.generate(request)
        self.listener.group_done(result.engine, result)
        return result


async def build_tree(
    db: Database,
    generator: EngineTap,
    claim: Claimed,
    *,
    timeout: float,
    listener: WorkerListener | None = None,
    limits: JobLimits | None = None,
    usage: JobUsage | None = None,
) -> TreeResult:
    """Run the tree of ``claim``; nodes reach the database as the search emits them, and
    ``listener`` hears of every group and node, ``usage`` of the generator and every group
    result. Raises ``JobSpecError`` for a bad stored spec and ``TimeoutError`` past
    ``timeout``."""
    spec = JobSpec.from_json(claim.payload)
    writer = NodeWriter(db, claim, lambda: generator.engine, listener)
    observed: Any = Observed(generator, listener) if listener is not None else generator
    if usage is not None:
        usage.serve(generator)
        observed = usage.watch(observed)
    if limits is not None:  # prompt tokens and the memory budget (seedq.service.guards)
        observed = limits.wrap(observed, claim.job_id)
    async with asyncio.timeout(timeout):
        result = await run_tree(spec, observed, on_node=writer)
    log.debug("job %s: %d nodes written", claim.job_id, writer.written)
    return result
