"""A private Redis for ``seedq run`` when none answers: ``redis-server`` on a temporary unix
socket when the binary exists, else an in-process ``fakeredis`` server."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
from redis import Redis

log = logging.getLogger(__name__)
START_TIMEOUT = 10.0


class EmbeddedRedisError(RuntimeError):
    pass


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """Start with :meth:`start` (or ``with``); ``client`` is connected to it, ``url`` is its
    address (None for fakeredis, which only this process can reach)."""

    def __init__(self, prefer_server: bool = True) -> None:
        self.prefer_server = prefer_server
        self.client: Redis | None = None
        self.url: str | None = None
        self.kind: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    def start(self) -> EmbeddedRedis:
        binary = shutil.which("redis-server") if self.prefer_server else None
        if binary:
            self._start_server(binary)
        else:
            self._start_fake()
        return self

    def _start_server(self, binary: str) -> None:
        self._dir = tempfile.mkdtemp(prefix="seedq-redis-")
        sock = Path(self._dir) / "redis.sock"
        args = [
            binary,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"unix://{sock}"
        deadline = time.monotonic() + START_TIMEOUT
        while not (sock.exists() and redis_answers(self.url)):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError("the private redis-server did not start")
            time.sleep(0.05)
        self.client = Redis.from_url(self.url)
        self.kind = "redis-server"
        log.info("started a private redis-server on %s", sock)

    def _start_fake(self) -> None:
        try:
            import fakeredis
        except ImportError as exc:
            raise EmbeddedRedisError(
                "no Redis answers, redis-server is not installed and fakeredis is missing "
                "(pip install fakeredis)"
            ) from exc
        self.client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        self.kind = "fakeredis"
        log.info("using an in-process fakeredis")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
