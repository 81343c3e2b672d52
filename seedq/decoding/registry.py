"""The engines, one entry each: its name, whether it needs a draft, which speculation options
apply to it and how it is built. :class:`~seedq.decoding.config.EngineConfig`, the factory,
the service's batch options and every command's flags derive from :data:`ENGINE_SPECS`, so
adding an engine means adding one entry here.

Options that do not apply to an engine are ignored by it when they merely hold a default (a
worker's config carries every default), but refused when a caller gives them explicitly
(:func:`check_applicable`): ``--engine ar --gamma 4`` is an error, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, TypeAlias

from seedq.decoding.types import DecodingError

if TYPE_CHECKING:
    from seedq.decoding.config import EngineConfig
    from seedq.decoding.engines.base import Engine, Runtime
    from seedq.decoding.engines.seed import SeedScheduler

    Built: TypeAlias = Engine | SeedScheduler

# every speculation option of EngineConfig, with the help text of its flag
OPTIONS: dict[str, str] = {
    "gamma": "draft length of a chain draft (auto: the longest draft it may pick; 1..64)",
    "k_config": "draft tree, candidates per depth, e.g. 2,1,1 (mcsd: 2,1,1; seed: else a chain)",
    "mcsd_rule": "tree candidates drawn 'with' or 'without' replacement",
    "verify_batch": "drafts verified per target forward (1 = strict FCFS; 1..256)",
    "draft_batch": "sequences drafted together in one batched draft forward (1..256)",
    "draft_threads": "drafter threads working in parallel (1..64)",
}


@dataclass(frozen=True)
class EngineSpec:
    """One engine. ``default_tree``: the draft tree used when no ``k_config`` is given;
    ``()`` means a chain of ``gamma`` tokens (when the engine drafts at all)."""

    name: str
    summary: str
    needs_draft: bool
    options: tuple[str, ...]
    build: Callable[[EngineConfig, Runtime], Built]
    default_tree: tuple[int, ...] = ()
    drafts: bool = False  # drafts with --draft when given, else with prompt lookup (auto)

    @property
    def uses_drafter(self) -> bool:
        return self.needs_draft or self.drafts


def _ar(config: EngineConfig, runtime: Runtime) -> Built:
    from seedq.decoding.engines.ar import AutoregressiveEngine

    return AutoregressiveEngine(runtime)


def _batch(config: EngineConfig, runtime: Runtime) -> Built:
    from seedq.decoding.engines.batch import BatchEngine

    return BatchEngine(runtime)


def _auto(config: EngineConfig, runtime: Runtime) -> Built:
    from seedq.decoding.engines.batch import BatchEngine

    return BatchEngine(runtime)  # stands for its groups when round batching is off


def _speculative(config: EngineConfig, runtime: Runtime) -> Built:
    from seedq.decoding.engines.speculative import SpeculativeEngine

    return SpeculativeEngine(runtime, config.engine)


def _seed(config: EngineConfig, runtime: Runtime) -> Built:
    from seedq.decoding.engines.seed import SeedScheduler

    return SeedScheduler(
        runtime,
        verify_batch=config.verify_batch,
        draft_batch=config.draft_batch,
        draft_threads=config.draft_threads,
    )


ENGINE_SPECS: tuple[EngineSpec, ...] = (
    EngineSpec("ar", "the target alone, one sequence after another", False, (), _ar),
    EngineSpec("batch", "the target alone, all sequences in one padded batch", False, (), _batch),
    EngineSpec(
        "auto",
        "round batching that drafts only where the measured cost and acceptance say it pays",
        False, ("gamma",), _auto, drafts=True,
    ),
    EngineSpec("sd", "speculative decoding with a chain draft", True, ("gamma",), _speculative),
    EngineSpec(
        "mcsd",
        "multi-candidate speculative decoding with a draft tree",
        True,
        ("k_config", "mcsd_rule"),
        _speculative,
        default_tree=(2, 1, 1),
    ),
    EngineSpec(
        "seed",
        "SeeD: parallel drafter sessions, one FCFS verifier",
        True,
        ("gamma", "k_config", "mcsd_rule", "verify_batch", "draft_batch", "draft_threads"),
        _seed,
    ),
)
NAMES: tuple[str, ...] = tuple(spec.name for spec in ENGINE_SPECS)
SPECULATIVE: tuple[str, ...] = tuple(spec.name for spec in ENGINE_SPECS if spec.needs_draft)
DRAFTING: tuple[str, ...] = tuple(spec.name for spec in ENGINE_SPECS if spec.uses_drafter)
_BY_NAME = {spec.name: spec for spec in ENGINE_SPECS}


def flag_of(field: str) -> str:
    """The command-line flag of an option (``k_config`` -> ``--k-config``)."""
    return "--" + field.replace("_", "-")


class OptionNotApplicable(DecodingError):
    """An explicitly given option that the chosen engine does not use."""

    def __init__(self, field: str, engine: str) -> None:
        users = [spec.name for spec in ENGINE_SPECS if field in spec.options]
        self.field = field
        self.reason = (
            f"does not apply to engine {engine!r} (only to {', '.join(users) or 'no engine'})"
        )
        super().__init__(f"{flag_of(field)} {self.reason}")


class ConflictingOptions(OptionNotApplicable):
    """Two explicitly given options that contradict each other."""

    def __init__(self, field: str, other: str, why: str) -> None:
        self.field = field
        self.reason = f"cannot be given together with {flag_of(other)} ({why})"
        DecodingError.__init__(self, f"{flag_of(field)} {self.reason}")


def parse_k_config(text: str) -> tuple[int, ...]:
    """``"2,1,1"`` -> ``(2, 1, 1)`` (the one parser of ``--k-config``; ranges are
    EngineConfig's); raises ``ValueError`` with a message naming the expected form."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected integers like 2,1,1, got {text!r}") from None


def get(name: str) -> EngineSpec:
    """The entry of engine ``name``; an unknown name raises :class:`DecodingError`."""
    spec = _BY_NAME.get(name)
    if spec is None:
        raise DecodingError(f"engine must be one of {', '.join(NAMES)}, got {name!r}")
    return spec


def applies(engine: str, field: str) -> bool:
    return field in get(engine).options


def users_of(field: str) -> tuple[str, ...]:
    """The engines an option applies to."""
    return tuple(spec.name for spec in ENGINE_SPECS if field in spec.options)


def check_applicable(engine: str, given: Iterable[str]) -> None:
    """Refuse the explicitly ``given`` options that ``engine`` does not use (the first one
    raises :class:`OptionNotApplicable`), and ``gamma`` given together with ``k_config``
    (:class:`ConflictingOptions`: the tree would win silently); names that are not
    speculation options are skipped."""
    spec = get(engine)
    given = list(given)
    for field in given:
        if field in OPTIONS and field not in spec.options:
            raise OptionNotApplicable(field, engine)
    if "gamma" in given and "k_config" in given:
        raise ConflictingOptions("gamma", "k_config",
                                 "a k-config draft tree replaces the chain of gamma tokens")


def canonical(config: EngineConfig) -> EngineConfig:
    """``config`` with the options its engine does not use reset to their defaults, so that
    configs that behave alike compare equal."""
    spec = get(config.engine)
    defaults = {f.name: f.default for f in fields(config) if f.name in OPTIONS}
    reset = {name: value for name, value in defaults.items() if name not in spec.options}
    return replace(config, **reset)  # type: ignore[arg-type]


def draft_tree(config: EngineConfig) -> tuple[int, ...]:
    """The draft tree of ``config`` (``()``: a chain of ``config.gamma`` tokens)."""
    spec = get(config.engine)
    given = config.k_config if "k_config" in spec.options else ()
    return given or spec.default_tree


def build(config: EngineConfig, runtime: Runtime) -> Built:
    """The engine of ``config`` over ``runtime``."""
    return get(config.engine).build(config, runtime)
