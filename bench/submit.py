"""How fast does `seedq submit` take a 10,000-line file? Validation, one bulk insert, one
`Queue.enqueue_many` pipeline per 2,000 jobs.

    .venv/bin/python bench/submit.py [--lines 10000] [--repeat 3] [--sqlite-only]

Uses the real Redis (SEEDQ_REDIS_URL, default local) and both databases: a temporary SQLite
file and a temporary schema in PostgreSQL (SEEDQ_BENCH_PG_URL, default the local `test`
database). Prints a table and writes bench/results/submit.json. Everything it creates is
removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seedq.service.context import open_services  # noqa: E402
from seedq.service.submit import submit_file  # noqa: E402
from seedq.settings import Settings  # noqa: E402
from seedq.store import migrate  # noqa: E402
from seedq.store.db import Database  # noqa: E402

PG_URL = os.environ.get("SEEDQ_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SEEDQ_REDIS_URL", "redis://127.0.0.1:6379/0")
PHASES = ("validate", "store", "enqueue", "total")


def write_dataset(path: Path, lines: int) -> None:
    with path.open("w") as f:
        for i in range(lines):
            line = {
                "custom_id": f"bench-{i}",
                "task": "gsm8k",
                "question": f"Tom has {i} apples and buys 3 more. How many now?",
                "answer": str(i + 3),
                "search": {"breadth": 2, "depth": 2},
            }
            f.write(json.dumps(line) + "\n")


def run_once(url: str, dataset: Path) -> dict[str, float]:
    settings = Settings(
        redis_url=REDIS_URL, database_url=url, queue=f"seedq-bench-{uuid.uuid4().hex[:8]}"
    )
    services = open_services(settings)
    try:
        report = submit_file(services, dataset)
        return dict(report.timings)
    finally:
        queue = services.queue()
        keys = list(services.redis.scan_iter(match=f"*{settings.queue}*", count=1000))
        job_keys = [f"rq:job:{report.batch_id}-{n:06d}" for n in range(1, report.accepted + 1)]
        for i in range(0, len(job_keys), 1000):
            services.redis.delete(*job_keys[i : i + 1000])
        if keys:
            services.redis.delete(*keys)
        services.redis.srem("rq:queues", queue.key)
        assert len(queue) == 0
        services.close()


def bench_database(name: str, url: str, dataset: Path, repeat: int) -> dict[str, object]:
    db = Database(url)
    migrate.upgrade(db)
    db.close()
    runs = [run_once(url, dataset) for _ in range(repeat)]
    return {
        "database": name,
        **{p: statistics.median(r[p] for r in runs) for p in PHASES},
        "best_total": min(r["total"] for r in runs),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "submit.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="seedq-bench-") as tmp:
        dataset = Path(tmp) / "bench.jsonl"
        write_dataset(dataset, args.lines)
        results.append(
            bench_database("sqlite", f"sqlite:///{tmp}/bench.sqlite", dataset, args.repeat)
        )
        if not args.sqlite_only:
            schema = f"seedq_bench_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
            try:
                url = f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
                results.append(bench_database("postgresql", url, dataset, args.repeat))
            finally:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
                admin.dispose()
    print(f"seedq submit, {args.lines} lines, median of {args.repeat} (seconds)")
    print(f"{'database':<12}" + "".join(f"{p:>10}" for p in PHASES) + f"{'lines/s':>10}")
    for r in results:
        rate = args.lines / float(r["total"])  # type: ignore[arg-type]
        print(
            f"{r['database']:<12}"
            + "".join(f"{float(r[p]):>10.2f}" for p in PHASES)  # type: ignore[arg-type]
            + f"{rate:>10.0f}"
        )
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "lines": args.lines,
                "repeat": args.repeat,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                },
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
