"""Engine options per batch: validated at submit, served by the worker over its own models.

A batch may name an engine and speculation settings (``engine`` and the options of
:data:`seedq.decoding.registry.OPTIONS`: ``gamma``, ``k_config``, ``mcsd_rule``,
``verify_batch``, ``draft_batch``, ``draft_threads``); never models, which stay a worker
setting. Speculation options need ``engine`` and must apply to it (the registry says which).
They are stored as ``batches.engine`` (a JSON object of the given options only) and override
the worker's own :class:`~seedq.decoding.config.EngineConfig`. The worker builds one derived
generator per distinct config (``seedq.decoding.factory.derive_generator``, same loaded
models) and keeps it for its lifetime, so the trees of one config share one generator. All
of them share the target's ``TargetHub`` (:mod:`seedq.decoding.target`): ONE SeeD scheduler
(one verifier, FCFS over the seed groups of every option set; each group carries its own
options) and one target lock, so two engines never run target forwards at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from seedq.decoding import registry
from seedq.decoding.config import EngineConfig
from seedq.decoding.registry import flag_of
from seedq.decoding.types import DecodingError, GroupGenerator
from seedq.service.jobrun import EngineTap

SPECULATIVE = registry.SPECULATIVE
OPTION_FIELDS = ("engine", *registry.OPTIONS)
# stands in for the worker's draft model when options are checked at submit
SUBMIT_DRAFT = "worker-draft"


class EngineOptionError(ValueError):
    """A bad engine option, named by its command-line flag."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{flag_of(field)}: {reason}")
        self.field = field
        self.flag = flag_of(field)
        self.reason = reason


class EngineUnavailable(DecodingError):
    """This worker cannot serve a batch's engine options (it lacks the draft model)."""


def parse_k_config(text: str) -> tuple[int, ...]:
    """``"2,1,1"`` -> ``(2, 1, 1)`` (:func:`seedq.decoding.registry.parse_k_config`)."""
    try:
        return registry.parse_k_config(text)
    except ValueError as exc:
        raise EngineOptionError("k_config", str(exc)) from exc


def normalize(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The given (non-None) options, validated, as stored (``k_config`` a list); None when
    no option is given. Raises :class:`EngineOptionError` naming the first bad flag."""
    for key in set(options) - set(OPTION_FIELDS):
        raise EngineOptionError(key, "not an engine option (models are worker settings)")
    given = {k: options[k] for k in OPTION_FIELDS if options.get(k) is not None}
    if not given:
        return None
    if isinstance(given.get("k_config"), str):
        given["k_config"] = parse_k_config(given["k_config"])
    for field, value in given.items():  # each alone first, so that the error names its flag
        _check({field: value}, field)
    _check_applicable(given)
    _check(given, "engine")
    if "k_config" in given:
        given["k_config"] = list(given["k_config"])
    return given


def _check_applicable(given: Mapping[str, Any]) -> None:
    """Speculation options need ``engine`` (the workers' is not known at submit) and must
    apply to it."""
    options = [field for field in given if field != "engine"]
    if options and "engine" not in given:
        raise EngineOptionError(
            options[0], f"applies to {', '.join(registry.users_of(options[0]))} only; give "
            "--engine too (the workers' engine is not known at submit)"
        )
    try:
        registry.check_applicable(given.get("engine", "ar"), options)
    except registry.OptionNotApplicable as exc:
        raise EngineOptionError(exc.field, exc.reason) from exc


def _check(values: Mapping[str, Any], field: str) -> None:
    fields: dict[str, Any] = {k: tuple(v) if k == "k_config" else v for k, v in values.items()}
    try:
        EngineConfig(**{"draft": SUBMIT_DRAFT, **fields})  # type: ignore[arg-type]
    except DecodingError as exc:
        raise EngineOptionError(field, str(exc)) from exc
    except TypeError as exc:
        raise EngineOptionError(field, f"invalid value ({exc})") from exc


def derived_config(base: EngineConfig, options: Mapping[str, Any]) -> EngineConfig:
    """The worker's config with a batch's options applied (raises ``DecodingError``, also
    for an option that does not apply to the resulting engine); the options that engine
    does not use are reset to their defaults."""
    check_known(options)
    fields: dict[str, Any] = {k: tuple(v) if k == "k_config" else v for k, v in options.items()}
    config = replace(base, **fields)
    registry.check_applicable(config.engine, options)
    return registry.canonical(config)


def check_known(options: Mapping[str, Any]) -> None:
    """Stored options name engine settings only, never models."""
    unknown = set(options) - set(OPTION_FIELDS)
    if unknown:
        raise DecodingError(f"unknown engine options: {', '.join(sorted(unknown))}")


class GeneratorPool:
    """The worker's own generator plus one derived generator per distinct EngineConfig, all
    over one target hub; closing the pool closes the derived generators, then the worker's
    own, which stops the shared scheduler."""

    def __init__(self, base: GroupGenerator, worker: str) -> None:
        self.base = EngineTap(base)
        self.worker = worker
        self.derived: dict[EngineConfig, EngineTap] = {}

    def for_options(self, options: Mapping[str, Any] | None) -> EngineTap:
        """The generator serving ``options`` (the worker's own when there are none);
        raises :class:`EngineUnavailable` when this worker cannot serve them."""
        if not options:
            return self.base
        from seedq.decoding.factory import LocalGenerator, derive_generator

        inner = self.base.inner
        if not isinstance(inner, LocalGenerator):
            raise EngineUnavailable(
                f"worker {self.worker} runs a {type(inner).__name__}, which cannot switch "
                f"engines; engine options {dict(options)} need a worker with real models"
            )
        check_known(options)
        try:
            config = derived_config(inner.config, options)
            if config == inner.config:
                return self.base
            if config not in self.derived:
                self.derived[config] = EngineTap(derive_generator(inner, config))
        except DecodingError as exc:
            if options.get("engine", inner.config.engine) not in SPECULATIVE:
                raise
            raise self._unavailable(inner.config, options, exc) from exc
        return self.derived[config]

    def _unavailable(
        self, base: EngineConfig, options: Mapping[str, Any], exc: DecodingError
    ) -> EngineUnavailable:
        engine = options.get("engine", base.engine)
        held = f"draft {base.draft!r}" if base.draft else "no draft model"
        return EngineUnavailable(
            f"batch engine {engine!r} needs a draft model (SEEDQ_DRAFT_MODEL, e.g. "
            f"'smollm2-int8', 'tiny-draft' or 'ngram') over target {base.target!r}; worker "
            f"{self.worker} holds {held} ({exc}). Start workers with SEEDQ_DRAFT_MODEL set on "
            "a queue of their own (seedq worker --queue NAME) and submit the batch with "
            "--queue NAME"
        )

    def close(self) -> None:
        for tap in self.derived.values():
            tap.close()
        self.base.close()
