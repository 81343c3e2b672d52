"""Worker-wide decoding options: one frozen value, read from the environment once (by
``seedq.settings.Settings``, or :meth:`DecodingOptions.from_env` for a library caller) and
passed down to the runtime, the round batcher, the SeeD scheduler and the model loader; no
engine reads the environment itself.

- ``SEEDQ_PREFIX_CACHE_MB`` -> ``prefix_cache_mb``: prefix-cache KV per model (512; 0 off)
- ``SEEDQ_ROUND_BATCHER`` -> ``round_batcher``: ``0`` runs every engine outside the round
- ``SEEDQ_ROUND_TOKEN_BUDGET`` -> ``round_token_budget``: tokens per round forward (64)
- ``SEEDQ_ROUND_KV_MB`` -> ``round_kv_mb``: the round's KV budget (0: unlimited)
- ``SEEDQ_ROUND_KV`` -> ``round_kv``: ``slots`` (default) or ``dynamic`` round storage
- ``SEEDQ_PREFILL_CHUNK`` -> ``prefill_chunk``: prefill tokens per forward (256; 0: whole)
- ``SEEDQ_PREFILL_MIX`` -> ``prefill_mix``: ``1`` (default) feeds a joining group's prefill
  chunks in the same target forward as the round's rows (packed); ``0`` between forwards
- ``SEEDQ_ATTENTION`` -> ``attention``: ``packed`` (default) or transformers' ``sdpa``
- ``SEEDQ_SEED_THREADS`` -> ``seed_threads``: ``VERIFIER,DRAFTER`` intra-op threads
- ``SEEDQ_CACHE_DIR`` -> ``cache_dir``: converted models (``$XDG_CACHE_HOME/seedq``)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROUND_KV_KINDS = ("slots", "dynamic")
ATTENTION_KINDS = ("packed", "sdpa")
DEFAULT_PREFIX_CACHE_MB = 512.0
DEFAULT_TOKEN_BUDGET = 64
DEFAULT_PREFILL_CHUNK = 256
MB = 1 << 20


class OptionsError(ValueError):
    """A decoding option (or the environment variable it was read from) is unusable;
    ``field`` names the option."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class DecodingOptions:
    """How this process decodes, whatever the engine: see the module's table."""

    prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB
    round_batcher: bool = True
    round_token_budget: int = DEFAULT_TOKEN_BUDGET
    round_kv_mb: float = 0.0
    round_kv: str = "slots"
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    prefill_mix: bool = True
    attention: str = "packed"
    seed_threads: tuple[int, int] | None = None  # (verifier, each drafter); None: split
    cache_dir: str | None = None  # None: $XDG_CACHE_HOME/seedq (~/.cache/seedq)

    def __post_init__(self) -> None:
        lows = {"prefix_cache_mb": 0, "round_token_budget": 1, "round_kv_mb": 0,
                "prefill_chunk": 0}
        for name, low in lows.items():
            if getattr(self, name) < low:
                raise OptionsError(f"{name} must be >= {low}, got {getattr(self, name)}", name)
        for name, allowed in (("round_kv", ROUND_KV_KINDS), ("attention", ATTENTION_KINDS)):
            if getattr(self, name) not in allowed:
                raise OptionsError(f"{name} must be one of {', '.join(allowed)}, "
                                   f"got {getattr(self, name)!r}", name)
        if self.seed_threads is not None and (
                len(self.seed_threads) != 2 or min(self.seed_threads) < 0):
            raise OptionsError(f"seed_threads must be two thread counts (0: torch's default), "
                               f"got {self.seed_threads}", "seed_threads")

    @property
    def prefix_cache_bytes(self) -> int:
        return int(self.prefix_cache_mb * MB)

    @property
    def round_kv_bytes(self) -> int:
        """The round's KV budget in bytes; 0 = unlimited."""
        return int(self.round_kv_mb * MB)

    @property
    def model_cache_dir(self) -> Path:
        """Where converted models are kept: ``cache_dir``, else ``~/.cache/seedq``."""
        return Path(self.cache_dir or Path.home() / ".cache" / "seedq").expanduser()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DecodingOptions:
        """The options from ``SEEDQ_*`` variables (``os.environ`` by default); a bad value
        raises :class:`OptionsError` naming the variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for variable, (name, parse) in _VARIABLES.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                raise OptionsError(f"{variable} {exc}") from None
        if "cache_dir" not in values and env.get("XDG_CACHE_HOME"):
            values["cache_dir"] = str(Path(env["XDG_CACHE_HOME"]) / "seedq")
        try:
            return cls(**values)
        except OptionsError as exc:  # "<field> must ...": name the variable instead
            variable = next(v for v, (name, _) in _VARIABLES.items() if name == exc.field)
            raise OptionsError(str(exc).replace(str(exc.field), variable, 1), exc.field
                               ) from None


def parse_number(raw: str) -> float:
    """A variable's float value; ValueError "must be a number, got ..." (also for
    ``seedq.settings``)."""
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"must be a number, got {raw!r}") from None


def parse_integer(raw: str) -> int:
    """A variable's int value; ValueError "must be an integer, got ..."."""
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"must be an integer, got {raw!r}") from None


def _switch(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError(f"must be one of 0, 1, got {raw!r}")
    return raw == "1"


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        kind = raw.lower()
        if kind not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return kind
    return parse


def _threads(raw: str) -> tuple[int, int]:
    if not re.fullmatch(r"\d+,\d+", raw):
        raise ValueError(f"must be VERIFIER,DRAFTER thread counts like 2,1, got {raw!r}")
    verifier, drafter = (int(x) for x in raw.split(","))
    return verifier, drafter


_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "SEEDQ_PREFIX_CACHE_MB": ("prefix_cache_mb", parse_number),
    "SEEDQ_ROUND_BATCHER": ("round_batcher", _switch),
    "SEEDQ_ROUND_TOKEN_BUDGET": ("round_token_budget", parse_integer),
    "SEEDQ_ROUND_KV_MB": ("round_kv_mb", parse_number),
    "SEEDQ_ROUND_KV": ("round_kv", _choice(ROUND_KV_KINDS)),
    "SEEDQ_PREFILL_CHUNK": ("prefill_chunk", parse_integer),
    "SEEDQ_PREFILL_MIX": ("prefill_mix", _switch),
    "SEEDQ_ATTENTION": ("attention", _choice(ATTENTION_KINDS)),
    "SEEDQ_SEED_THREADS": ("seed_threads", _threads),
    "SEEDQ_CACHE_DIR": ("cache_dir", str),
}
