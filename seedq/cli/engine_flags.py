"""Engine flags: the worker's engine settings (``seedq worker``, ``seedq run``) and the engine
options of one batch (``seedq submit``, ``seedq run``; never models: those are worker
settings, see :mod:`seedq.service.engines`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from seedq.service import engines

F = TypeVar("F", bound=Callable[..., Any])

SPECULATION_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("gamma", int, "draft length of chain drafts (sd, seed)"),
    ("k_config", str, "tree draft shape, e.g. 2,1,1 (mcsd, seed)"),
    ("mcsd_rule", str, "tree candidates drawn 'with' or 'without' replacement"),
    ("verify_batch", int, "seed: drafts verified per target forward"),
    ("draft_batch", int, "seed: sequences drafted together"),
)
ENGINE_OPTIONS = ("engine", "target_model", "draft_model", "device", "dtype")
ENGINE_HELP = "this batch's engine: ar, batch, sd, mcsd or seed (default: the worker's)"


def engine_options(func: F) -> F:
    """Overrides of the worker's engine settings (SEEDQ_ENGINE, SEEDQ_TARGET_MODEL, ...)."""
    opts = [
        click.option("--engine", "engine", default=None, help="ar, batch, sd, mcsd or seed"),
        click.option("--target", "target_model", default=None, help="target model"),
        click.option("--draft", "draft_model", default=None, help="draft model or 'ngram'"),
        click.option("--device", "device", default=None, help="cpu, cuda, cuda:1 ..."),
        click.option("--dtype", "dtype", default=None, help="float32, float16 or bfloat16"),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def speculation_flags(func: F) -> F:
    """``--gamma``, ``--k-config``, ``--mcsd-rule``, ``--verify-batch``, ``--draft-batch``."""
    for name, kind, help_text in reversed(SPECULATION_FLAGS):
        flag = engines.flag_of(name)
        func = click.option(flag, name, type=kind, default=None, help=help_text)(func)
    return func


def batch_engine_flags(func: F) -> F:
    """``--engine`` plus :func:`speculation_flags`."""
    func = speculation_flags(func)
    return click.option("--engine", "engine", default=None, help=ENGINE_HELP)(func)


def pop_batch_engine(options: dict[str, Any], engine: str | None = None) -> dict[str, Any] | None:
    """Take the engine options out of ``options`` and validate them; a bad one is a click
    error naming its flag."""
    given: dict[str, Any] = {name: options.pop(name, None) for name, _, _ in SPECULATION_FLAGS}
    given["engine"] = options.pop("engine", engine)
    try:
        return engines.normalize(given)
    except engines.EngineOptionError as exc:
        raise click.BadParameter(exc.reason, param_hint=exc.flag) from exc


def pop_run_engine(options: dict[str, Any], engine: str | None) -> dict[str, Any] | None:
    """``seedq run``: ``--engine`` picks the in-process worker's engine (as on ``seedq
    worker``); the speculation flags, when any is given, become the batch's options, with
    that engine."""
    if all(options.get(name) is None for name, _, _ in SPECULATION_FLAGS):
        for name, _, _ in SPECULATION_FLAGS:
            options.pop(name, None)
        return None
    return pop_batch_engine(options, engine)
