"""The handles a command needs, opened once from :class:`~seedq.settings.Settings`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis import Redis
from rq import Queue

from seedq import queue as q
from seedq.settings import Settings
from seedq.store import migrate
from seedq.store.db import Database

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Settings, the database and Redis: built once per process and passed down."""

    settings: Settings
    db: Database
    redis: Redis

    def queue(self, name: str | None = None) -> Queue:
        return q.rq_queue(self.redis, name or self.settings.queue)

    def close(self) -> None:
        self.db.close()
        self.redis.close()


def open_services(
    settings: Settings, *, check_schema: bool = True, redis: Redis | None = None
) -> Services:
    """Connect to the database (refusing an out-of-date schema) and to Redis."""
    db = Database(settings.database_url)
    try:
        if check_schema:
            migrate.ensure_current(db)
    except Exception:
        db.close()
        raise
    return Services(settings, db, redis if redis is not None else q.connect(settings.redis_url))
