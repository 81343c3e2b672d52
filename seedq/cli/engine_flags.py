"""Engine flags, one set for every command, derived from :mod:`seedq.decoding.registry`:
``--engine``, the models (``--target``, ``--draft``, ``--device``, ``--dtype``) and one flag
per speculation option (``--gamma``, ``--k-config``, ``--mcsd-rule``, ``--verify-batch``,
``--draft-batch``, ``--draft-threads``).

``seedq generate`` and ``seedq solve`` build their own engine (defaults: ``ar`` over
``smollm2`` on the CPU); ``seedq worker`` and ``seedq run`` override the worker's settings;
``seedq submit`` and ``seedq run`` give a batch its engine options (never models: those are
worker settings, see :mod:`seedq.service.engines`). A speculation flag given explicitly must
apply to the chosen engine, else it is refused naming the flag and the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import click

from seedq.decoding import registry
from seedq.decoding.config import DTYPES, MCSD_RULES, EngineConfig
from seedq.decoding.options import DecodingOptions, OptionsError
from seedq.decoding.types import DecodingError
from seedq.service import engines

F = TypeVar("F", bound=Callable[..., Any])

MODEL_OPTIONS = ("target_model", "draft_model", "device", "dtype")
ENGINE_OPTIONS = ("engine", *MODEL_OPTIONS)  # the worker settings a command may override
LOCAL_DEFAULTS = {"engine": "ar", "target_model": "smollm2", "device": "cpu", "dtype": "float32"}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(EngineConfig)}


class KConfig(click.ParamType):
    """``2,1,1`` -> ``(2, 1, 1)``, parsed once here; ranges are EngineConfig's."""

    name = "K,K,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return registry.parse_k_config(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_TYPES: dict[str, click.ParamType] = {
    "k_config": KConfig(),
    "mcsd_rule": click.Choice(MCSD_RULES),
}


def _apply(func: F, options: Sequence[Callable[[Any], Any]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def _help(name: str, text: str) -> str:
    default = DEFAULTS[name]
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    unset = f"; default {shown}" if shown != "" else ""
    return f"{text} [{', '.join(registry.users_of(name))} only{unset}]"


def speculation_flags(func: F) -> F:
    """One flag per option of :data:`seedq.decoding.registry.OPTIONS`, default None (unset:
    the engine's default)."""
    flags = [
        click.option(registry.flag_of(name), name, type=_TYPES.get(name, click.INT),
                     default=None, help=_help(name, text))
        for name, text in registry.OPTIONS.items()
    ]
    return _apply(func, flags)


def engine_flag(*, local: bool, help_text: str | None = None) -> Callable[[F], F]:
    """``--engine``: a choice of the registry's engines (``ar`` by default where ``local``)."""
    names = ", ".join(registry.NAMES)
    return click.option(
        "--engine", "engine", type=click.Choice(registry.NAMES),
        default=LOCAL_DEFAULTS["engine"] if local else None, show_default=local,
        help=help_text or (f"the engine: {names}" if local else "the worker's engine"),
    )


def model_flags(*, local: bool) -> Callable[[F], F]:
    """``--target``, ``--draft``, ``--device``, ``--dtype`` (worker overrides unless local)."""

    def default(name: str) -> Any:
        return LOCAL_DEFAULTS.get(name) if local else None

    flags = [
        click.option("--target", "target_model", default=default("target_model"),
                     show_default=local, help="target model: HF id, directory or smollm2"),
        click.option("--draft", "draft_model", default=None,
                     help="draft model: HF id, directory, smollm2-int8, smollm2-bf16 or ngram"),
        click.option("--device", "device", default=default("device"), show_default=local,
                     help="cpu, cuda, cuda:1 ..."),
        click.option("--dtype", "dtype", type=click.Choice(DTYPES), default=default("dtype"),
                     show_default=local),
    ]
    return lambda func: _apply(func, flags)


def local_engine_flags(func: F) -> F:
    """``seedq generate`` / ``seedq solve``: an engine of their own, all engine flags."""
    return engine_flag(local=True)(model_flags(local=True)(speculation_flags(func)))


def engine_options(func: F) -> F:
    """``seedq worker``: overrides of SEEDQ_ENGINE, SEEDQ_TARGET_MODEL, ... (no speculation
    options: those are per batch)."""
    return engine_flag(local=False)(model_flags(local=False)(func))


def batch_engine_flags(func: F) -> F:
    """``seedq submit``: the batch's ``--engine`` plus :func:`speculation_flags`."""
    help_text = f"this batch's engine: {', '.join(registry.NAMES)} (default: the worker's)"
    return engine_flag(local=False, help_text=help_text)(speculation_flags(func))


def run_engine_flags(func: F) -> F:
    """``seedq run``: the in-process worker's engine and models, plus the batch's
    speculation options."""
    return engine_options(speculation_flags(func))


def take_speculation(options: dict[str, Any], engine: str | None) -> dict[str, Any] | None:
    """Pop the speculation flags from ``options``; the given ones (with ``engine``) validated
    as :func:`seedq.service.engines.normalize` stores them, None when none is given. A bad
    value, or an option ``engine`` does not use, is a click error naming the flag."""
    given: dict[str, Any] = {name: options.pop(name, None) for name in registry.OPTIONS}
    if all(value is None for value in given.values()):
        return None
    try:
        return engines.normalize({**given, "engine": engine})
    except engines.EngineOptionError as exc:
        raise click.BadParameter(exc.reason, param_hint=exc.flag) from exc


def pop_batch_engine(options: dict[str, Any], engine: str | None = None) -> dict[str, Any] | None:
    """``seedq submit``: the batch's engine options (``--engine`` and speculation flags)."""
    engine = options.pop("engine", None) or engine
    return take_speculation(options, engine) or engines.normalize({"engine": engine})


def pop_run_engine(options: dict[str, Any], engine: str) -> dict[str, Any] | None:
    """``seedq run``: ``--engine`` picks the in-process worker's engine (as on ``seedq
    worker``); the speculation flags, when any is given, become the batch's options with
    that ``engine`` (the effective one: the flag, the demo's or SEEDQ_ENGINE)."""
    return take_speculation(options, engine)


def local_engine_config(options: dict[str, Any]) -> EngineConfig:
    """``seedq generate`` / ``seedq solve``: pop the engine flags and build the config."""
    models = {name: options.pop(name) for name in MODEL_OPTIONS}
    engine = options.pop("engine")
    speculation = take_speculation(options, engine) or {}
    speculation.pop("engine", None)
    if "k_config" in speculation:
        speculation["k_config"] = tuple(speculation["k_config"])
    try:
        return EngineConfig(
            engine=engine, target=models["target_model"], draft=models["draft_model"],
            device=models["device"], dtype=models["dtype"], **speculation,
        )
    except DecodingError as exc:
        raise click.UsageError(str(exc)) from exc


def local_decoding_options() -> DecodingOptions:
    """``seedq generate`` / ``seedq solve``: the decoding options from ``SEEDQ_*`` variables,
    read once; a bad value is a usage error naming the variable."""
    try:
        return DecodingOptions.from_env()
    except OptionsError as exc:
        raise click.UsageError(str(exc)) from exc
