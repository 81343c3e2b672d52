"""The handles a command needs, opened once from :class:`~seedq.settings.Settings`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from redis import Redis
from rq import Queue

from seedq import queue as q
from seedq.settings import Settings
from seedq.store import identity, migrate
from seedq.store.db import Database

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Settings, the database and Redis: built once per process and passed down."""

    settings: Settings
    db: Database
    redis: Redis
    _store_id: str | None = field(default=None, repr=False)

    def queue(self, name: str | None = None) -> Queue:
        return q.rq_queue(self.redis, name or self.settings.queue)

    @property
    def store_id(self) -> str:
        """The id of the SQL store (read once), carried by every job payload."""
        if self._store_id is None:
            self._store_id = identity.store_id(self.db)
        return self._store_id

    def close(self) -> None:
        self.db.close()
        self.redis.close()


def open_services(
    settings: Settings, *, check_schema: bool = True, redis: Redis | None = None
) -> Services:
    """Connect to the database (refusing an out-of-date schema) and to Redis."""
    path = settings.sqlite_path()
    if check_schema and path is not None and not path.exists():  # say so, do not create it
        raise migrate.SchemaOutOfDate(
            f"no database at {path.absolute()}: run `seedq db upgrade` first"
        )
    db = Database(settings.database_url)
    try:
        if check_schema:
            migrate.ensure_current(db)
    except Exception:
        db.close()
        raise
    return Services(settings, db, redis if redis is not None else q.connect(settings.redis_url))
