"""The store's reads behind show/report, on SQLite and PostgreSQL, against a real batch."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from seedq.store import analytics
from seedq.store.db import Database
from seedq.store.trees import batch_trees
from tests.report.conftest import Batches


def stored_nodes(db: Database, batch: str) -> dict[str, set[str]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT j.custom_id, n.node_id FROM nodes n JOIN jobs j ON j.id = n.job_id"
                 " WHERE j.batch_id = :b"), {"b": batch}
        ).all()
    out: dict[str, set[str]] = {}
    for custom_id, node_id in rows:
        out.setdefault(custom_id, set()).add(node_id)
    return out


def test_batch_trees_match_the_nodes_table(batches: Batches, db: Database) -> None:
    trees = batch_trees(db, batches.seed)
    assert [t.custom_id for t in trees] == list(batches.custom_ids)
    assert {t.custom_id: {n.node_id for n in t.nodes} for t in trees} == stored_nodes(
        db, batches.seed
    )
    for tree in trees:
        assert tree.status == "completed" and tree.nodes[0].node_id == "0"
        path = tree.best_path
        assert path[0] == "0" and path[-1].endswith(".s")
        assert all(tree.nodes[0].depth <= n.depth for n in tree.nodes)
        thoughts = [n for n in tree.nodes if n.kind != "root"]
        assert all(n.figures.seconds > 0 and n.figures.new_tokens > 0 for n in thoughts)
        assert sum(n.figures.drafted_tokens for n in thoughts) > 0  # seed drafted
    (only,) = batch_trees(db, batches.seed, batches.custom_ids[1])
    assert only.custom_id == batches.custom_ids[1]


def test_overview_and_rates(batches: Batches, db: Database) -> None:
    ar, seed = analytics.overview(db, batches.ar), analytics.overview(db, batches.seed)
    assert ar is not None and seed is not None
    assert analytics.overview(db, "no-such-batch") is None
    assert ar.counts == seed.counts == {"completed": 2}
    assert ar.success_rate == 1.0 and ar.engines == ("ar",) and seed.engines == ("seed",)
    assert ar.engine_options == {"engine": "ar"} and set(seed.tasks) == {"gsm8k", "custom"}
    assert ar.acceptance is None and seed.acceptance is not None and 0 <= seed.acceptance <= 1
    assert seed.tokens_per_second and seed.tokens_per_second > 0
    rates = analytics.tree_rates(db, [batches.ar, batches.seed])
    assert len(rates) == 4
    for rate in rates:
        assert rate.tokens_per_second and rate.tokens_per_second > 0
        assert rate.busy_fraction is not None and 0 < rate.busy_fraction <= 1
        # seed measures the target's busy time; ar does not: estimated from generations
        assert rate.measured == (rate.batch_id == batches.seed)


def test_models_and_measured_busy_are_recorded(batches: Batches, db: Database) -> None:
    ar, seed = analytics.overview(db, batches.ar), analytics.overview(db, batches.seed)
    assert ar is not None and seed is not None
    assert [(m.target, m.draft, m.engine, m.device, m.dtype) for m in ar.models] == [
        ("tiny", None, "ar", "cpu", "float32")  # ar uses no draft model
    ]
    assert [(m.target, m.draft, m.engine, m.device, m.dtype) for m in seed.models] == [
        ("tiny", "tiny-draft", "seed", "cpu", "float32")
    ]
    assert seed.models[0].label == "target tiny, draft tiny-draft (seed, cpu float32)"
    assert analytics.batch_models(db, batches.seed) == seed.models
    with db.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT j.batch_id, j.custom_id, j.wall_seconds, j.result FROM jobs j"
                 " WHERE j.batch_id IN (:a, :s)"), {"a": batches.ar, "s": batches.seed}
        ).all()
    rates = {(r.batch_id, r.custom_id): r for r in analytics.tree_rates(
        db, [batches.ar, batches.seed])}
    for batch, custom_id, wall, result in stored:
        record = json.loads(result) if isinstance(result, str) else result
        busy = record.get("target_busy")
        if batch == batches.ar:
            assert busy is None
            continue
        assert busy["groups"] > 0 and 0 < busy["busy_seconds"] <= busy["group_seconds"] + 1e-6
        assert busy["job_seconds"] == pytest.approx(wall, abs=0.05)
        assert busy["fraction"] == pytest.approx(busy["busy_seconds"] / busy["group_seconds"])
        rate = rates[(batch, custom_id)]
        # the measured fraction, not the estimate from generations rows
        assert rate.busy_fraction == pytest.approx(busy["fraction"])


def test_latency_and_acceptance(batches: Batches, db: Database) -> None:
    rows = analytics.latency(db, [batches.seed])
    assert {r.role for r in rows} >= {"thought", "solution"}
    assert {r.depth for r in rows} >= {1}
    assert all(r.generations > 0 and r.max_seconds >= r.avg_seconds > 0 for r in rows)
    acc = analytics.acceptance(db, [batches.ar, batches.seed])
    assert all(r.drafted == 0 for r in acc if r.batch_id == batches.ar)
    seed_rows = [r for r in acc if r.batch_id == batches.seed]
    assert {r.position for r in seed_rows if r.role == "thought"} == {0, 1}  # breadth 2
    assert sum(r.drafted for r in seed_rows) > 0


def test_comparison_on_the_same_custom_ids(batches: Batches, db: Database) -> None:
    rows = analytics.comparison(db, [batches.ar, batches.seed])
    assert [(r.task, r.batch_id) for r in rows] == [
        (task, batch)
        for task in ("custom", "gsm8k", analytics.ALL_TASKS)
        for batch in (batches.ar, batches.seed)
    ]
    for row in rows:
        assert row.trees == (2 if row.task == analytics.ALL_TASKS else 1)
        assert row.seconds_per_tree and row.seconds_per_tree > 0 and row.speedup
        if row.batch_id == batches.ar:
            assert row.speedup == 1.0 and row.acceptance is None
        else:
            assert row.acceptance is not None
