"""How long does `seedq cancel` take on a large queued batch, and what does it leave in Redis?

    .venv/bin/python bench/cancel.py [--jobs 100000]

A private ``redis-server`` on a free 127.0.0.1 port and a temporary SQLite file: submit
``--jobs`` lines, cancel the batch, report the seconds and what is left (queue entries and RQ
job records). Prints JSON and writes bench/results/cancel.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rq.job import Job as RQJob  # noqa: E402

from bench.chaos_servers import PrivateRedis  # noqa: E402
from seedq import queue as q  # noqa: E402
from seedq.service import control  # noqa: E402
from seedq.service.context import open_services  # noqa: E402
from seedq.service.submit import submit_file  # noqa: E402
from seedq.settings import Settings  # noqa: E402
from seedq.store import migrate  # noqa: E402
from seedq.store.db import Database  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "cancel.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="seedq-cancel-") as tmp:
        root = Path(tmp)
        redis = PrivateRedis(root)
        redis.start()
        url = f"sqlite:///{root / 'seedq.sqlite'}"
        db = Database(url)
        migrate.upgrade(db)
        db.close()
        services = open_services(Settings(redis_url=redis.url, database_url=url, queue="bench"))
        try:
            path = root / "in.jsonl"
            line = {"task": "gsm8k", "question": "Tom has 4 apples and buys 5. How many?",
                    "answer": "9"}
            path.write_text("".join(json.dumps({**line, "custom_id": f"c{i}"}) + "\n"
                                    for i in range(args.jobs)))
            batch = submit_file(services, path).batch_id
            queue = services.queue()
            before = services.redis.llen(queue.key)
            t0 = time.perf_counter()
            cancelled = control.cancel_batch(services, batch)
            seconds = time.perf_counter() - t0
            left_records = sum(
                services.redis.exists(*(RQJob.key_for(q.job_id_for(batch, n))
                                        for n in range(i, min(i + 1000, args.jobs + 1))))
                for i in range(1, args.jobs + 1, 1000)
            )
            figures = {"jobs": args.jobs, "queued_before": before, "cancelled": cancelled,
                       "cancel_seconds": round(seconds, 2),
                       "queue_entries_left": services.redis.llen(queue.key),
                       "rq_records_left": left_records}
        finally:
            services.close()
            redis.stop()
    text = json.dumps(figures, indent=2)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
