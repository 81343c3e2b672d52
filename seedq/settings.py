"""One ``Settings`` object, read from ``SEEDQ_*`` environment variables once and passed down.

Without any variable set, seedq talks to a local Redis (``redis://127.0.0.1:6379/0``) and keeps
its database in an SQLite file under ``./var``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seedq.decoding.config import EngineConfig

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "sqlite:///var/seedq.sqlite"
DEFAULT_QUEUE = "seedq"


class SettingsError(ValueError):
    """An environment variable has a value seedq cannot use."""


def _env_int(env: Mapping[str, str], name: str, default: int, low: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc
    if value < low:
        raise SettingsError(f"{name} must be >= {low}, got {value}")
    return value


def _env_float(env: Mapping[str, str], name: str, default: float, low: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc
    if value < low:
        raise SettingsError(f"{name} must be >= {low}, got {value}")
    return value


def _env_str(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to know; built once (``Settings.from_env()``).

    Timing fields are seconds. ``heartbeat_seconds`` is how often a worker proves it is alive;
    a job whose worker missed heartbeats for ``heartbeat_ttl`` seconds is treated as abandoned
    and re-run. ``maintenance_seconds`` is how often any worker looks for such jobs.
    """

    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    queue: str = DEFAULT_QUEUE
    target_model: str = "smollm2"
    draft_model: str | None = None
    engine: str = "ar"
    device: str = "cpu"
    dtype: str = "float32"
    round_size: int = 4
    heartbeat_seconds: float = 5.0
    heartbeat_ttl: int = 20
    maintenance_seconds: float = 15.0
    dequeue_timeout: int = 5
    max_attempts: int = 3
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 600.0
    job_timeout: int = 3600
    shutdown_grace_seconds: float = 30.0
    result_ttl: int = 86400

    def __post_init__(self) -> None:
        if self.heartbeat_ttl <= self.heartbeat_seconds:
            raise SettingsError(
                f"SEEDQ_HEARTBEAT_TTL ({self.heartbeat_ttl}) must exceed "
                f"SEEDQ_HEARTBEAT_SECONDS ({self.heartbeat_seconds})"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``SEEDQ_*`` variables (``os.environ`` by default)."""
        env = os.environ if env is None else env
        heartbeat = _env_float(env, "SEEDQ_HEARTBEAT_SECONDS", cls.heartbeat_seconds, 0.05)
        default_ttl = max(cls.heartbeat_ttl, int(heartbeat * 4) + 1)
        return cls(
            redis_url=_env_str(env, "SEEDQ_REDIS_URL", DEFAULT_REDIS_URL) or DEFAULT_REDIS_URL,
            database_url=_env_str(env, "SEEDQ_DATABASE_URL", DEFAULT_DATABASE_URL)
            or DEFAULT_DATABASE_URL,
            queue=_env_str(env, "SEEDQ_QUEUE", DEFAULT_QUEUE) or DEFAULT_QUEUE,
            target_model=_env_str(env, "SEEDQ_TARGET_MODEL", "smollm2") or "smollm2",
            draft_model=_env_str(env, "SEEDQ_DRAFT_MODEL", None),
            engine=_env_str(env, "SEEDQ_ENGINE", "ar") or "ar",
            device=_env_str(env, "SEEDQ_DEVICE", "cpu") or "cpu",
            dtype=_env_str(env, "SEEDQ_DTYPE", "float32") or "float32",
            round_size=_env_int(env, "SEEDQ_ROUND_SIZE", cls.round_size, 1),
            heartbeat_seconds=heartbeat,
            heartbeat_ttl=_env_int(env, "SEEDQ_HEARTBEAT_TTL", default_ttl, 1),
            maintenance_seconds=_env_float(
                env, "SEEDQ_MAINTENANCE_SECONDS", cls.maintenance_seconds, 0.05
            ),
            dequeue_timeout=_env_int(env, "SEEDQ_DEQUEUE_TIMEOUT", cls.dequeue_timeout, 1),
            max_attempts=_env_int(env, "SEEDQ_MAX_ATTEMPTS", cls.max_attempts, 1),
            retry_backoff_seconds=_env_float(
                env, "SEEDQ_RETRY_BACKOFF", cls.retry_backoff_seconds, 0.0
            ),
            retry_backoff_max_seconds=_env_float(
                env, "SEEDQ_RETRY_BACKOFF_MAX", cls.retry_backoff_max_seconds, 0.0
            ),
            job_timeout=_env_int(env, "SEEDQ_JOB_TIMEOUT", cls.job_timeout, 1),
            shutdown_grace_seconds=_env_float(
                env, "SEEDQ_SHUTDOWN_GRACE", cls.shutdown_grace_seconds, 0.0
            ),
            result_ttl=_env_int(env, "SEEDQ_RESULT_TTL", cls.result_ttl, 1),
        )

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given fields changed; ``None`` values are ignored."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` after a transient fault."""
        delay = self.retry_backoff_seconds * (2 ** max(attempt - 1, 0))
        return float(min(delay, self.retry_backoff_max_seconds))

    def engine_config(self) -> EngineConfig:
        """The decoding engine this worker loads (raises ``DecodingError`` when inconsistent)."""
        from seedq.decoding.config import EngineConfig

        return EngineConfig(
            engine=self.engine,
            target=self.target_model,
            draft=self.draft_model,
            device=self.device,
            dtype=self.dtype,
        )

    def sqlite_path(self) -> Path | None:
        """The SQLite file of ``database_url``, or None for another database."""
        prefix = "sqlite:///"
        if not self.database_url.startswith(prefix):
            return None
        raw = self.database_url[len(prefix) :].split("?", 1)[0]
        return None if raw in ("", ":memory:") else Path(raw)

    def describe(self) -> dict[str, Any]:
        """The settings as a dict, with any password in URLs masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_url") and isinstance(value, str):
                value = _mask_password(value)
            out[f.name] = value
        return out


def _mask_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, at, host = rest.rpartition("@")
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***{at}{host}"
    return url
