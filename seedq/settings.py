"""One ``Settings`` object, read from ``SEEDQ_*`` environment variables once and passed down.

Without any variable set, seedq talks to a local Redis (``redis://127.0.0.1:6379/0``) and keeps
its database in an SQLite file at an absolute per-user path
(``$XDG_DATA_HOME/seedq/seedq.sqlite``, else ``~/.local/share/seedq/seedq.sqlite``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from seedq.decoding.options import DecodingOptions, OptionsError, parse_integer, parse_number

if TYPE_CHECKING:
    from seedq.decoding.config import EngineConfig

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "seedq"


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    """An SQLite file at an absolute per-user data path, whatever the working directory."""
    env = os.environ if env is None else env
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(data).expanduser().absolute() / 'seedq' / 'seedq.sqlite'}"


DEFAULT_DATABASE_URL = default_database_url()


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to print and log."""
    return _mask_password(url)


class SettingsError(ValueError):
    """An environment variable has a value seedq cannot use."""


N = TypeVar("N", int, float)


def _env_int(env: Mapping[str, str], name: str, default: int, low: int) -> int:
    return _env_value(env, name, default, low, parse_integer)


def _env_float(env: Mapping[str, str], name: str, default: float, low: float) -> float:
    return _env_value(env, name, default, low, parse_number)


def _env_value(env: Mapping[str, str], name: str, default: N, low: N,
               parse: Callable[[str], N]) -> N:
    """``name``'s value (``default`` when unset or empty), at least ``low``; errors name it."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} {exc}") from None
    if value < low:
        raise SettingsError(f"{name} must be >= {low}, got {value}")
    return value


def decoding_options(env: Mapping[str, str]) -> DecodingOptions:
    """The decoding options (prefix cache, round batcher, attention, SeeD threads, model
    cache; :mod:`seedq.decoding.options`), read with the other settings so that a bad value
    is one error naming the variable at start instead of a failure at first use."""
    try:
        return DecodingOptions.from_env(env)
    except OptionsError as exc:
        raise SettingsError(str(exc)) from None


def _env_str(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw


def _env_port(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port (0: any free one), or None when unset."""
    if not env.get(name):
        return None
    port = _env_int(env, name, 0, 0)
    if port > 65535:
        raise SettingsError(f"{name} must be a TCP port (0-65535), got {port}")
    return port


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
    engine: str = "auto"
    device: str = "cpu"
    dtype: str = "float32"
    round_size: int = 4
    # defaults re-run a kill -9'd worker's jobs within ~7 s: TTL 5 + maintenance every 2
    heartbeat_seconds: float = 1.0
    heartbeat_ttl: int = 5
    maintenance_seconds: float = 2.0
    dequeue_timeout: int = 5
    max_attempts: int = 3
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 600.0
    job_timeout: int = 3600
    shutdown_grace_seconds: float = 30.0
    result_ttl: int = 86400
    metrics_port: int | None = None  # a worker serves Prometheus metrics here when set
    metrics_addr: str = "0.0.0.0"
    # seedq query: its own login (default: database_url as query_role), its time limit
    query_database_url: str | None = None
    query_role: str = "seedq_reader"
    query_timeout: float = 60.0
    # input limits of submit (per line) and of the worker (per job)
    max_line_bytes: int = 1_048_576
    max_json_depth: int = 32
    max_prompt_tokens: int = 8192
    max_tree_nodes: int = 65_536  # breadth x depth x draft tree size
    max_draft_tree: int = 256  # nodes of a --k-config draft tree
    worker_memory_budget_mb: int | None = None  # None: 75% of RAM; 0: no guard
    # prefix cache, round batcher, attention, SeeD threads, model cache (SEEDQ_ROUND_* ...)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)

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
        decoding = decoding_options(env)
        heartbeat = _env_float(env, "SEEDQ_HEARTBEAT_SECONDS", cls.heartbeat_seconds, 0.05)
        default_ttl = max(cls.heartbeat_ttl, int(heartbeat * 4) + 1)
        return cls(
            redis_url=_env_str(env, "SEEDQ_REDIS_URL", DEFAULT_REDIS_URL) or DEFAULT_REDIS_URL,
            database_url=_env_str(env, "SEEDQ_DATABASE_URL", None) or default_database_url(env),
            queue=_env_str(env, "SEEDQ_QUEUE", DEFAULT_QUEUE) or DEFAULT_QUEUE,
            target_model=_env_str(env, "SEEDQ_TARGET_MODEL", "smollm2") or "smollm2",
            draft_model=_env_str(env, "SEEDQ_DRAFT_MODEL", None),
            engine=_env_str(env, "SEEDQ_ENGINE", "auto") or "auto",
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
            metrics_port=_env_port(env, "SEEDQ_METRICS_PORT"),
            metrics_addr=_env_str(env, "SEEDQ_METRICS_ADDR", "0.0.0.0") or "0.0.0.0",
            decoding=decoding,
            **_guard_settings(env),
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
            elif isinstance(value, DecodingOptions):
                value = asdict(value)
            out[f.name] = value
        return out


def _guard_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The query and input-limit settings (see docs/DEPLOY.md)."""
    budget = env.get("SEEDQ_WORKER_MEMORY_BUDGET_MB")
    return {
        "query_database_url": _env_str(env, "SEEDQ_QUERY_DATABASE_URL", None),
        "query_role": _env_str(env, "SEEDQ_QUERY_ROLE", "seedq_reader") or "seedq_reader",
        "query_timeout": _env_float(env, "SEEDQ_QUERY_TIMEOUT", Settings.query_timeout, 0.001),
        "max_line_bytes": _env_int(env, "SEEDQ_MAX_LINE_BYTES", Settings.max_line_bytes, 64),
        "max_json_depth": _env_int(env, "SEEDQ_MAX_JSON_DEPTH", Settings.max_json_depth, 2),
        "max_prompt_tokens": _env_int(
            env, "SEEDQ_MAX_PROMPT_TOKENS", Settings.max_prompt_tokens, 1
        ),
        "max_tree_nodes": _env_int(env, "SEEDQ_MAX_TREE_NODES", Settings.max_tree_nodes, 1),
        "max_draft_tree": _env_int(env, "SEEDQ_MAX_DRAFT_TREE", Settings.max_draft_tree, 1),
        "worker_memory_budget_mb": (
            _env_int(env, "SEEDQ_WORKER_MEMORY_BUDGET_MB", 0, 0) if budget else None
        ),
    }


def url_password(url: str) -> str | None:
    """The password in ``url`` (``user:pw@`` or a ``password=`` query parameter), if any."""
    _scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    creds, at, _host = rest.rpartition("@")
    if at and ":" in creds:
        return creds.split(":", 1)[1] or None
    match = re.search(r"[?&]password=([^&#]*)", url)
    return match.group(1) or None if match else None


def _mask_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    rest = url.partition("://")[2]
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***{at}{host}"
    return url
