"""Every query of docs/SQL.md runs on SQLite and PostgreSQL, on real data."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import text

from seedq.service.context import Services
from seedq.service.submit import submit_file
from seedq.store.readonly import run_readonly
from tests.conftest import REPO
from tests.service.helpers import SMALL, gsm8k_lines, run_burst, write_jsonl

SQL_DOC = REPO / "docs" / "SQL.md"


def doc_queries() -> list[tuple[str, str]]:
    text = SQL_DOC.read_text()
    out, heading = [], ""
    for block in re.finditer(r"^## ([^\n]+)$|^```sql\n(.*?)^```", text, re.M | re.S):
        if block.group(1):
            heading = block.group(1).strip()
        else:
            out.append((heading, block.group(2)))
    return out


QUERIES = doc_queries()


def test_the_doc_has_the_promised_queries() -> None:
    headings = {h for h, _ in QUERIES}
    for wanted in (
        "Latency per depth",
        "Acceptance per task",
        "Slowest nodes",
        "Sequences per strategy",
        "Speedup of one batch against another",
    ):
        assert wanted in headings


def test_every_query_runs_and_returns_rows(services: Services, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(3, search=SMALL))
    a = submit_file(services, path).batch_id
    b = submit_file(services, path).batch_id
    run_burst(services)
    with services.db.engine.begin() as conn:  # as `seedq submit --engine seed` stores it
        conn.execute(text("UPDATE batches SET engine = '{\"engine\": \"seed\"}' WHERE id = :b"),
                     {"b": b})
    for heading, sql in QUERIES:
        res = run_readonly(
            services.settings.database_url, sql.replace("BATCH_A", a).replace("BATCH_B", b)
        )
        assert res.columns, heading
        if heading != "Failed jobs and why":
            assert res.rows, f"{heading}: no rows"
        if heading == "Acceptance per task":
            (row,) = res.rows
            assert row[0] == "gsm8k" and row[1] == "canned" and 0.7 < float(row[4]) < 0.8
        if heading == "Sequences per strategy":  # 3 trees: 4 thoughts, 4 values, 1 solution
            assert [tuple(r[:4]) for r in res.rows] == [
                ("evaluation", "value", 12, 6),  # 2 expansions per tree
                ("solution", "solution", 3, 3),
                ("thought", "sample", 12, 6),
            ]
        if heading == "Engine asked for and engine that ran":
            assert sorted((r[0], r[1], r[2]) for r in res.rows) == sorted(
                [(a, None, "canned"), (b, "seed", "canned")]
            )
        if heading == "Latency per depth":
            assert [r[0] for r in res.rows] == [1, 1, 2, 2, 3]  # depth 3: the solution
