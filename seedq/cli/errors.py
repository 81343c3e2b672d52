"""One-line errors for what is wrong around seedq rather than in it.

An unreachable or missing database, Redis down, a schema missing or behind, an unknown model,
a bad ``SEEDQ_*`` value, a taken metrics port: each becomes ``Error: <one line>`` on stderr
and exit code 2 (like a usage error), never a traceback. URLs in these messages go through
:func:`seedq.settings.mask_url`.
"""

from __future__ import annotations

from typing import Any

import click
import redis.exceptions
from sqlalchemy import exc as sa_exc

from seedq.decoding.types import DecodingError
from seedq.service.metrics import MetricsError
from seedq.settings import Settings, SettingsError, mask_url
from seedq.store.db import StoreError

SETTINGS_KEY = "seedq.settings"


class ConfigError(click.ClickException):
    """A configuration or environment error: one line, exit code 2."""

    exit_code = 2


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def remember(settings: Settings) -> Settings:
    """Keep the command's settings, so that error messages can name its (masked) URLs."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[SETTINGS_KEY] = settings
    return settings


def _settings() -> Settings | None:
    ctx = click.get_current_context(silent=True)
    found = ctx.meta.get(SETTINGS_KEY) if ctx is not None else None
    return found if isinstance(found, Settings) else None


def _where(attr: str) -> str:
    settings = _settings()
    return f" at {mask_url(getattr(settings, attr))}" if settings is not None else ""


def _is_query_error(exc: BaseException) -> bool:
    """Errors of the statement itself (``seedq query``), not of the environment."""
    from seedq.store.readonly import QueryError, ReadOnlyViolation

    return isinstance(exc, QueryError | ReadOnlyViolation)


def _database_down(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError)


def describe(exc: BaseException, *, connections_only: bool = False) -> str | None:
    """The one-line message for an environment error, or None for any other exception
    (with ``connections_only``, for anything but Redis or the database being unreachable)."""
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return f"cannot reach Redis{_where('redis_url')}: {first_line(str(exc))}"
    if _database_down(exc):
        orig: Any = getattr(exc, "orig", None) or exc
        return f"cannot open the database{_where('database_url')}: {first_line(str(orig))}"
    if connections_only:
        return None
    if isinstance(exc, StoreError) and not _is_query_error(exc):
        return first_line(str(exc))
    if isinstance(exc, SettingsError | MetricsError):
        return first_line(str(exc))
    if isinstance(exc, DecodingError):
        return first_line(str(exc))
    return None


def as_config_error(exc: BaseException) -> ConfigError | None:
    """``exc`` (or, for a ClickException a command raised from one, its cause) as a
    :class:`ConfigError`; None when it is not an environment error."""
    if isinstance(exc, ConfigError):
        return None
    top = exc
    cause: BaseException | None = exc.__cause__ if isinstance(exc, click.ClickException) else exc
    for depth in range(4):  # e.g. ClickException <- SubmitError <- redis ConnectionError
        if cause is None or isinstance(cause, click.ClickException):
            return None
        message = describe(cause, connections_only=depth > 0)
        if message is not None:
            if "nothing was submitted" in str(top) and "nothing was submitted" not in message:
                message += "; nothing was submitted"
            return ConfigError(_mask_known(message))
        cause = cause.__cause__
    return None


def _mask_known(message: str) -> str:
    settings = _settings()
    if settings is None:
        return message
    for url in (settings.database_url, settings.redis_url):
        if url and url in message:
            message = message.replace(url, mask_url(url))
    return message
