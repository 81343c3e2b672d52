"""Private Redis and PostgreSQL servers for the chaos run, on 127.0.0.1 and free ports.

``PrivateRedis`` runs ``redis-server`` with AOF (``appendfsync always``) in a temporary
directory; ``crash()`` kills it with SIGKILL, ``wipe()`` deletes its data, ``start()`` brings
it back on the same port. ``PrivatePostgres`` makes a cluster with ``initdb`` in a temporary
directory (as the ``postgres`` user through ``runuser`` when run as root: PostgreSQL refuses
to run as root) and starts it with ``pg_ctl``; ``crash()`` is ``pg_ctl stop -m immediate``.
Nothing here touches the shared servers on the default ports.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

log = logging.getLogger("chaos.servers")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


class PrivateRedis:
    def __init__(self, root: Path) -> None:
        self.dir = root / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--logfile", str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: client.ping(), f"redis on port {self.port}")
        client.close()

    def crash(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def wipe(self) -> None:
        """Lose every key: the data directory is emptied while the server is down."""
        for path in self.dir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("initdb not found (install the postgresql package)")
    return Path(initdb).parent


class PrivatePostgres:
    """A throw-away cluster; ``as_user`` is the account it runs as (``postgres`` when root)."""

    def __init__(self, root: Path) -> None:
        self.bin = _pg_bin()
        self.port = free_port()
        self.as_user = "postgres" if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="seedq-chaos-pg-"))
        self.data = self.dir / "data"
        if self.as_user is not None:
            user = pwd.getpwnam(self.as_user)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_user is not None:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "pg.log"),
                  "-w", "-t", "60", "start")

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            log.warning("private PostgreSQL was not running")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
