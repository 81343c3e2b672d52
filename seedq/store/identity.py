"""The identity of a SQL store: a random ``store_id`` kept in ``seedq_meta``.

Written by migration 0004 at ``seedq db upgrade`` (or here, at first use, when the row is
missing). Every job payload carries it, so a worker connected to another database never takes
a job that its database cannot record (see ``seedq.queue.JobPayload``).
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from seedq.store.db import Database
from seedq.store.models import Meta

STORE_ID_KEY = "store_id"


def new_store_id() -> str:
    return f"s{secrets.token_hex(8)}"


def store_id(db: Database) -> str:
    """The id of the store behind ``db``; created on first use when missing."""
    with db.session() as s:
        found = s.scalar(select(Meta.value).where(Meta.key == STORE_ID_KEY))
    if found:
        return found
    try:
        with db.session() as s:
            s.add(Meta(key=STORE_ID_KEY, value=new_store_id()))
    except IntegrityError:
        pass  # another process wrote it first: read theirs
    with db.session() as s:
        return str(s.scalar(select(Meta.value).where(Meta.key == STORE_ID_KEY)))
