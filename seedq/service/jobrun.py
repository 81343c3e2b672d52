"""Running one claimed job's tree: parse its spec, search, write every node as it comes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from seedq.decoding.types import GroupGenerator, GroupRequest, GroupResult
from seedq.reasoning.jobs import JobSpec
from seedq.reasoning.runner import TreeResult, run_tree
from seedq.reasoning.tree import Node
from seedq.service.records import generation_rows, node_row
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

    def __init__(self, db: Database, claim: Claimed, engine: Callable[[], str | None]) -> None:
        self.db = db
        self.claim = claim
        self.engine = engine
        self.written = 0

    async def __call__(self, node: Node) -> None:
        row = node_row(node)
        gens = generation_rows(node, self.engine())
        await asyncio.to_thread(
            repo.record_node, self.db, self.claim.job_id, self.claim.attempt, row, gens
        )
        self.written += 1


async def build_tree(
    db: Database, generator: EngineTap, claim: Claimed, *, timeout: float
) -> TreeResult:
    """Run the tree of ``claim``; nodes reach the database as the search emits them.
    Raises ``JobSpecError`` for a bad stored spec and ``TimeoutError`` past ``timeout``."""
    spec = JobSpec.from_json(claim.payload)
    writer = NodeWriter(db, claim, lambda: generator.engine)
    async with asyncio.timeout(timeout):
        result = await run_tree(spec, generator, on_node=writer)
    log.debug("job %s: %d nodes written", claim.job_id, writer.written)
    return result
