"""The ``generations`` table holds exactly one row per generated sequence, counted from the
generator side, on SQLite and PostgreSQL; a re-run of the jobs writes no extra row."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import text

from seedq import queue as q
from seedq.decoding.types import GroupRequest, GroupResult
from seedq.service import control
from seedq.service.context import Services
from seedq.service.submit import submit_file
from seedq.store import reports
from tests.service.helpers import gsm8k_lines, rows, run_burst, write_jsonl
from workers.testing import CannedGenerator

# (search, sequences of one tree). Canned thoughts are gsm8k steps, canned judgements "sure",
# and a canned proposal holds ONE step, so a 2-way proposal has one failed node.
SEARCHES: list[tuple[dict[str, Any], int]] = [
    # 2 + 2 thoughts, (2 + 2) x 2 value samples, 1 solution
    ({"breadth": 2, "depth": 2, "beam": 1, "value_samples": 2}, 13),
    # per depth: 1 proposal + 3 vote samples for its one usable node; 1 solution
    ({"breadth": 2, "depth": 2, "beam": 2, "generator": "propose", "evaluator": "vote",
      "vote_samples": 3}, 9),
    # dfs, budget 3: root -> 0.1, 0.2; 0.1 -> 0.1.1; 3 thoughts, 3 values, 1 solution
    ({"search": "dfs", "breadth": 2, "depth": 2, "node_budget": 3}, 7),
    # bfs, breadth 3, beam 2, depth 2: 3 + 6 thoughts and values, 1 solution
    ({"breadth": 3, "depth": 2, "beam": 2}, 19),
]
QUESTION_NO = re.compile(r"\(#(\d+)\)")


class SequenceCounter(CannedGenerator):
    """The canned generator, counting the sequences it returns per job line."""

    def __init__(self) -> None:
        super().__init__(0.002)
        self.per_line: Counter[int] = Counter()

    async def generate(self, request: GroupRequest) -> GroupResult:
        result = await super().generate(request)
        match = QUESTION_NO.search(request.prompts[0])
        assert match is not None, request.prompts[0]
        self.per_line[int(match.group(1))] += len(result.sequences)
        return result


def submit(services: Services, tmp_path: Path) -> str:
    lines = [gsm8k_lines(len(SEARCHES))[i] | {"search": s} for i, (s, _) in enumerate(SEARCHES)]
    return submit_file(services, write_jsonl(tmp_path / "in.jsonl", lines)).batch_id


def rows_per_line(services: Services, batch: str) -> dict[int, int]:
    found = rows(
        services,
        "SELECT j.line_no, COUNT(g.id) FROM jobs j LEFT JOIN generations g ON g.job_id = j.id "
        "WHERE j.batch_id = :b GROUP BY j.line_no",
        b=batch,
    )
    return {line - 1: count for line, count in found}


def test_one_row_per_generated_sequence(services: Services, tmp_path: Path) -> None:
    batch = submit(services, tmp_path)
    counter = SequenceCounter()
    run_burst(services, counter, round_size=4)
    assert reports.summarize(services.db, [batch])[0].counts == {"completed": len(SEARCHES)}
    assert dict(counter.per_line) == {i: n for i, (_, n) in enumerate(SEARCHES)}
    assert rows_per_line(services, batch) == dict(counter.per_line)
    check_rows(services, batch)
    # the same jobs again (retried): the same keys are upserted, nothing is added
    with services.db.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET status = 'failed' WHERE batch_id = :b"), {"b": batch})
    assert control.retry(services, batch_id=batch) == len(SEARCHES)
    again = SequenceCounter()
    run_burst(services, again)
    assert again.per_line == counter.per_line
    assert rows_per_line(services, batch) == dict(counter.per_line)
    # retry keeps the attempt history: the upserted rows belong to the second attempt
    assert rows(services, "SELECT DISTINCT attempt FROM generations") == [(2,)]


def check_rows(services: Services, batch: str) -> None:
    """Every row is one sequence with its metrics; shared ones have no node; keys follow
    the group and index; the metrics add up to the trees' phase totals."""
    got = rows(
        services,
        "SELECT g.gen_key, g.group_key, g.seq_index, g.node_id, g.role, g.strategy, g.shared,"
        " g.sequences, g.new_tokens, g.drafted_tokens, g.accepted_tokens, g.engine"
        " FROM generations g JOIN jobs j ON j.id = g.job_id WHERE j.batch_id = :b",
        b=batch,
    )
    for key, group, index, node_id, role, strategy, shared, sequences, new, drafted, \
            accepted, engine in got:
        assert key == f"{group}#{index}" and sequences == 1 and engine == "canned"
        assert group.endswith("/" + {"sample": "thought"}.get(strategy, strategy))
        assert (node_id is None) == (shared > 1), key
        assert role == {"sample": "thought", "propose": "thought", "value": "evaluation",
                        "vote": "evaluation"}.get(strategy, strategy)
        assert new > 0 and drafted >= accepted > 0
    strategies = Counter(r[5] for r in got)
    assert strategies == {"sample": 4 + 3 + 9, "value": 8 + 3 + 9, "propose": 2, "vote": 6,
                          "solution": 4}
    for line in range(1, len(SEARCHES) + 1):
        job_id = q.job_id_for(batch, line)
        (result,) = rows(services, "SELECT result FROM jobs WHERE id = :i", i=job_id)
        totals = result[0] if isinstance(result[0], dict) else json.loads(result[0])
        (tokens,) = rows(
            services, "SELECT SUM(new_tokens) FROM generations WHERE job_id = :i", i=job_id
        )
        assert tokens[0] == totals["metrics"]["total"]["new_tokens"]
