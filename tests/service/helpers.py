"""Helpers of the service tests: job files, in-process workers, waiting on the database."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from seedq.service.context import Services
from seedq.service.worker import TreeWorker
from tests.conftest import PYTHON, REPO
from workers.testing import CannedGenerator

QUESTIONS = [
    ("Janet has 16 eggs and eats 3. How many are left?", "13"),
    ("Tom has 4 apples and buys 5 more. How many does he have?", "9"),
    ("A box holds 6 pens. How many pens are in 3 boxes?", "18"),
    ("Sara had 20 dollars and spent 7. How much is left?", "13"),
    ("There are 12 birds and 5 fly away. How many remain?", "7"),
    ("A class has 8 rows of 4 desks. How many desks?", "32"),
]


def gsm8k_lines(
    n: int, *, prefix: str = "q", search: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    lines = []
    for i in range(n):
        question, answer = QUESTIONS[i % len(QUESTIONS)]
        line: dict[str, Any] = {
            "custom_id": f"{prefix}{i}",
            "task": "gsm8k",
            "question": f"{question} (#{i})",
            "answer": answer,
        }
        if search is not None:
            line["search"] = search
        lines.append(line)
    return lines


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


SMALL = {"breadth": 2, "depth": 2, "beam": 1}


def run_burst(services: Services, generator: Any = None, **kwargs: Any) -> TreeWorker:
    """A burst worker in this process (no signal handlers) until the queue is drained."""
    gen = generator if generator is not None else CannedGenerator(0.005)
    worker = TreeWorker(services, lambda: gen, install_signals=False, **kwargs)
    worker.work(burst=True)
    return worker


def scalar(services: Services, sql: str, **params: Any) -> Any:
    with services.db.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def rows(services: Services, sql: str, **params: Any) -> list[Any]:
    with services.db.engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def wait_until(cond: Callable[[], Any], timeout: float = 20.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


class WorkerProcesses:
    """``python -m workers.gpu -v`` processes, each logging to ``tmp_path/worker<i>.log``."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"worker{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [PYTHON, "-m", "workers.gpu", "-v", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
