"""Chaos run: kill -9 workers mid-batch, restart Redis and PostgreSQL, fuzz submit, then check
from SQL that every job completed exactly once with no duplicate or leftover rows.

    .venv/bin/python bench/chaos.py [--kills 30] [--redis-restarts 3] [--pg-restarts 2]
                                    [--fuzz-files 40] [--jobs 300] [--json FILE]

Everything runs on 127.0.0.1: a private ``redis-server`` (AOF on) and a private PostgreSQL
cluster (``initdb``/``pg_ctl`` in a temporary directory, as the ``postgres`` user through
``runuser`` when run as root), both on free ports, and worker processes
(``python -m workers.gpu`` with the canned test generator) with seedq's default heartbeat,
TTL and maintenance settings. Redis restarts are SIGKILL + restart (the second one also wipes
its data); PostgreSQL restarts are ``pg_ctl stop -m immediate`` + start. The run is bounded
by its counts and ``--time-limit``; figures are printed and written as JSON (see
docs/RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_checks import verify  # noqa: E402
from bench.chaos_fuzz import fuzz_submit  # noqa: E402
from bench.chaos_pool import Recoveries, WorkerPool  # noqa: E402
from bench.chaos_servers import PrivatePostgres, PrivateRedis  # noqa: E402
from seedq.service.context import Services, open_services  # noqa: E402
from seedq.service.submit import submit_file  # noqa: E402
from seedq.settings import Settings  # noqa: E402
from seedq.store import migrate, reports  # noqa: E402
from seedq.store.db import Database  # noqa: E402

log = logging.getLogger("chaos")
QUESTION = "Tom has {a} apples and buys {b} more. How many does he have?"


@dataclass
class ChaosConfig:
    kills: int = 30
    redis_restarts: int = 3  # the second one (or the only one) wipes Redis' data
    pg_restarts: int = 2
    fuzz_files: int = 40
    jobs: int = 300
    workers: int = 3
    round_size: int = 2
    delay: float = 0.15  # seconds per canned generation: a tree takes about a second
    kill_every: float = 2.5
    max_attempts: int = 8  # kills and outages each spend an attempt of the jobs they hit
    time_limit: float = 480.0
    seed: int = 10


def plain_batch(services: Services, folder: Path, n: int, tag: str) -> str:
    lines = [
        json.dumps({"custom_id": f"{tag}-{i}", "task": "gsm8k",
                    "question": QUESTION.format(a=i % 50, b=i % 7), "answer": str(i % 50 + i % 7),
                    "search": {"breadth": 2, "depth": 2, "beam": 1}})
        for i in range(n)
    ]
    path = folder / f"{tag}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return submit_file(services, path).batch_id


def restart_plan(cfg: ChaosConfig) -> dict[int, str]:
    """Which kill each restart follows: spread evenly, Redis and PostgreSQL alternating."""
    kinds = [f"redis{'-wipe' if i == min(1, cfg.redis_restarts - 1) else ''}"
             for i in range(cfg.redis_restarts)]
    pgs = ["postgres"] * cfg.pg_restarts
    order: list[str] = []
    while kinds or pgs:
        if kinds:
            order.append(kinds.pop(0))
        if pgs:
            order.append(pgs.pop(0))
    step = max(1, cfg.kills // (len(order) + 1))
    return {min(cfg.kills, step * (i + 1)): kind for i, kind in enumerate(order)}


class Chaos:
    def __init__(self, cfg: ChaosConfig, root: Path) -> None:
        self.cfg, self.root = cfg, root
        self.redis = PrivateRedis(root)
        self.pg = PrivatePostgres(root)
        self.rng = random.Random(cfg.seed)
        self.restarts: list[dict[str, Any]] = []
        self.batch_ids: list[str] = []
        self.pool: WorkerPool

    def start_servers(self) -> Services:
        self.redis.start()
        self.pg.start()
        db = Database(self.pg.url)
        migrate.upgrade(db)
        db.close()
        settings = Settings(redis_url=self.redis.url, database_url=self.pg.url, queue="chaos",
                            max_attempts=self.cfg.max_attempts)
        return open_services(settings)

    def restart(self, kind: str, recoveries: Recoveries) -> None:
        t0 = time.monotonic()
        recoveries.outage_began()
        if kind.startswith("redis"):
            self.redis.crash()
            time.sleep(1.0)
            if kind == "redis-wipe":
                self.redis.wipe()
            self.redis.start()
        else:
            self.pg.crash()
            time.sleep(1.0)
            self.pg.start()
        recoveries.outage_ended()
        self.restarts.append({"kind": kind, "down_seconds": round(time.monotonic() - t0, 2)})
        log.warning("restarted %s (down %.1fs)", kind, time.monotonic() - t0)

    def top_up(self, services: Services, folder: Path, pool: WorkerPool) -> None:
        """Keep work queued while kills remain, so that every kill hits a running tree."""
        try:
            queued = sum(s.counts.get("queued", 0)
                         for s in reports.summarize(services.db, self.batch_ids))
            if queued < 4 * pool.size * self.cfg.round_size:
                tag = f"top{len(self.batch_ids)}"
                self.batch_ids.append(plain_batch(services, folder, 40, tag))
        except Exception as exc:  # an outage: next time
            log.info("top-up skipped: %s", exc)

    def run(self) -> dict[str, Any]:
        cfg, t0 = self.cfg, time.monotonic()
        services = self.start_servers()
        folder = self.root / "files"
        folder.mkdir()
        fuzz = fuzz_submit(services, folder, cfg.fuzz_files)
        self.batch_ids += fuzz.batch_ids
        self.batch_ids.append(plain_batch(services, folder, cfg.jobs, "base"))
        pool = self.pool = WorkerPool(services.settings, self.root, cfg)
        recoveries = Recoveries(services)
        plan = restart_plan(cfg)
        try:
            pool.start(cfg.workers)
            recoveries.start()
            self.kill_loop(services, folder, pool, recoveries, plan, t0)
            done = self.wait_done(services, t0)
            pool.stop_all()
            recoveries.stop()
            verdict = verify(services, self.batch_ids)
        finally:
            pool.kill_all()
            services.close()
            self.redis.stop()
            self.pg.stop()
            self.pg.remove()
        return self.figures(fuzz, pool, recoveries, verdict, done, time.monotonic() - t0)

    def kill_loop(self, services: Services, folder: Path, pool: WorkerPool,
                  recoveries: Recoveries, plan: dict[int, str], t0: float) -> None:
        time.sleep(self.cfg.kill_every)
        while pool.kills < self.cfg.kills and time.monotonic() - t0 < self.cfg.time_limit / 2:
            pool.check()
            self.top_up(services, folder, pool)
            victim = pool.kill_one(self.rng, recoveries)
            if victim is None:
                time.sleep(0.2)
                continue
            if pool.kills in plan:
                self.restart(plan.pop(pool.kills), recoveries)
            time.sleep(self.cfg.kill_every)
        for kind in list(plan.values()):  # restarts not reached (time limit): do them anyway
            self.restart(kind, recoveries)

    def wait_done(self, services: Services, t0: float) -> bool:
        while time.monotonic() - t0 < self.cfg.time_limit:
            self.pool.check()
            try:
                if all(s.done for s in reports.summarize(services.db, self.batch_ids)):
                    return True
            except Exception:
                pass
            time.sleep(0.5)
        return False

    def figures(self, fuzz: Any, pool: WorkerPool, rec: Recoveries, verdict: Any, done: bool,
                wall: float) -> dict[str, Any]:
        return {
            "config": asdict(self.cfg),
            "postgres": f"private cluster (initdb/pg_ctl as {self.pg.as_user or 'this user'})",
            "kills": pool.kills,
            "worker_exits": pool.exits,
            "redis_restarts": sum(r["kind"].startswith("redis") for r in self.restarts),
            "redis_wipes": sum(r["kind"] == "redis-wipe" for r in self.restarts),
            "pg_restarts": sum(r["kind"] == "postgres" for r in self.restarts),
            "restarts": self.restarts,
            "fuzz": {k: v for k, v in asdict(fuzz).items() if k != "batch_ids"},
            "jobs": verdict.jobs,
            "completed": verdict.completed,
            "lost": len(verdict.lost),
            "duplicated": len(verdict.duplicated),
            "leftover": len(verdict.leftover),
            "incomplete": len(verdict.incomplete),
            "redis_leftover": verdict.redis_leftover,
            "attempts_histogram": dict(sorted(verdict.attempts.items())),
            "recovery": rec.summary(),
            "all_done": done,
            "ok": verdict.ok and done,
            "wall_seconds": round(wall, 1),
            "examples": {"lost": verdict.lost[:5], "leftover": verdict.leftover[:5]},
        }


def run_chaos(cfg: ChaosConfig, keep: Path | None = None) -> dict[str, Any]:
    """Run it; ``keep``: a folder for the worker logs and files, left in place."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        return Chaos(cfg, Path(tempfile.mkdtemp(prefix="run-", dir=keep))).run()
    with tempfile.TemporaryDirectory(prefix="seedq-chaos-") as tmp:
        return Chaos(cfg, Path(tmp)).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    defaults = ChaosConfig()
    for name, value in asdict(defaults).items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    p.add_argument("--keep", type=Path, default=None, help="keep worker logs under this folder")
    args = vars(p.parse_args(argv))
    out, keep = args.pop("json"), args.pop("keep")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    figures = run_chaos(ChaosConfig(**args), keep)
    text = json.dumps(figures, indent=2)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    threading.excepthook = lambda a: log.error("thread died: %s", a.exc_value)
    sys.exit(main())
