"""What the chaos run checks from SQL once the batches are done: every job completed exactly
once, its tree is exactly the one a clean run builds (the canned generator is deterministic),
and no node or generation row is duplicated or left over from an earlier attempt."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from seedq import queue as q
from seedq.reasoning.jobs import JobSpec
from seedq.reasoning.runner import run_tree
from seedq.reasoning.tree import Node
from seedq.service.context import Services
from seedq.service.records import generation_rows
from workers.testing import CannedGenerator


@dataclass
class Verdict:
    jobs: int = 0
    completed: int = 0
    lost: list[str] = field(default_factory=list)  # not completed (queued, running, failed)
    duplicated: list[str] = field(default_factory=list)  # a key stored twice
    leftover: list[str] = field(default_factory=list)  # rows of an older attempt or tree
    incomplete: list[str] = field(default_factory=list)  # expected rows missing
    redis_leftover: int = 0  # entries still waiting in Redis after everything completed
    attempts: Counter[int] = field(default_factory=Counter)
    retried_by_kill: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.leftover or self.incomplete
                    or self.redis_leftover)


async def _expected(payload: dict[str, Any]) -> tuple[set[str], set[str]]:
    nodes: list[Node] = []

    async def keep(node: Node) -> None:
        nodes.append(node)

    await run_tree(JobSpec.from_json(payload), CannedGenerator(0.0), on_node=keep)
    gens = {g["gen_key"] for n in nodes for g in generation_rows(n, "canned")}
    return {n.node_id for n in nodes}, gens


def _rows(services: Services, sql: str, **params: Any) -> list[Any]:
    with services.db.engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def verify(services: Services, batch_ids: list[str]) -> Verdict:
    v = Verdict()
    jobs = _rows(
        services,
        "SELECT id, status, attempts, payload, error_kind FROM jobs "
        "WHERE batch_id = ANY(:b) AND status <> 'rejected' ORDER BY id",
        b=batch_ids,
    )
    nodes: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for job_id, node_id, attempt in _rows(
        services, "SELECT n.job_id, n.node_id, n.attempt FROM nodes n JOIN jobs j "
        "ON j.id = n.job_id WHERE j.batch_id = ANY(:b)", b=batch_ids
    ):
        nodes[job_id].append((node_id, attempt))
    gens: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for job_id, key, attempt in _rows(
        services, "SELECT g.job_id, g.gen_key, g.attempt FROM generations g JOIN jobs j "
        "ON j.id = g.job_id WHERE j.batch_id = ANY(:b)", b=batch_ids
    ):
        gens[job_id].append((key, attempt))
    for job_id, status, attempts, payload, _kind in jobs:
        v.jobs += 1
        v.attempts[attempts] += 1
        if status != "completed":
            v.lost.append(job_id)
            continue
        v.completed += 1
        want_nodes, want_gens = asyncio.run(_expected(payload))
        _compare(v, job_id, attempts, nodes[job_id], want_nodes)
        _compare(v, job_id, attempts, gens[job_id], want_gens)
    for name in {r[0] for r in _rows(
        services, "SELECT DISTINCT queue FROM batches WHERE id = ANY(:b)", b=batch_ids
    )}:
        v.redis_leftover += q.pending_count(services.queue(name))
    return v


def _compare(v: Verdict, job_id: str, attempt: int, stored: list[tuple[str, int]],
             wanted: set[str]) -> None:
    keys = Counter(k for k, _ in stored)
    if any(n > 1 for n in keys.values()):
        v.duplicated.append(job_id)
    if set(keys) - wanted or any(a != attempt for _, a in stored):
        v.leftover.append(job_id)
    if wanted - set(keys):
        v.incomplete.append(job_id)
