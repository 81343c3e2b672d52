"""Build a group generator from an EngineConfig: load models once, pick the drafter and the
engine, and expose both a blocking ``run`` and the awaitable ``generate`` of GroupGenerator."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from seedq.decoding import cancel, loading, registry
from seedq.decoding.config import EngineConfig
from seedq.decoding.drafters import Drafter, DraftShape, ModelDrafter, NgramDrafter
from seedq.decoding.engines.base import Engine, Runtime
from seedq.decoding.engines.batch import BatchEngine
from seedq.decoding.engines.round_batch import AUTO, BATCH, MODES, SEED, RoundMode
from seedq.decoding.engines.rounds import RoundBatcher
from seedq.decoding.engines.seed import GroupSpec, SeedScheduler
from seedq.decoding.loading import LoadedModel
from seedq.decoding.options import DecodingOptions
from seedq.decoding.prefix_cache import PrefixCaches
from seedq.decoding.target import TargetHub
from seedq.decoding.tiny import TINY_DRAFT, TINY_TARGET, perturbed_copy, tiny_model, tiny_tokenizer
from seedq.decoding.types import DecodingError, GroupRequest, GroupResult


def draft_shape(config: EngineConfig) -> DraftShape:
    """A tree when the engine's registry entry uses one (``k_config``, else its default
    tree), else a chain of ``gamma`` tokens."""
    tree = registry.draft_tree(config)
    if tree:
        return DraftShape(tree, config.mcsd_rule == "with")
    return DraftShape.chain(config.gamma)


class LocalGenerator:
    """A GroupGenerator over in-process models. ``ar``, ``sd`` and ``mcsd`` run one group at
    a time (under the target lock shared with every generator over the same target).
    ``batch``, ``auto`` and ``seed`` groups go to the one round batcher of the target, which
    decodes the groups of all callers in shared forwards: ``auto`` rows draft where the
    batcher's cost model says it pays, ``seed`` rows at every step (all of the round's
    drafting rows in one batched draft forward per depth, verified first-come-first-served
    in the round's shared forward); :func:`round_mode` says which configs run there. Seed
    with a draft tree or with the scheduler's own options goes to the one threaded SeeD
    scheduler of the target, which interleaves the groups of concurrent callers;
    ``round_batcher=False`` in the runtime's options (``SEEDQ_ROUND_BATCHER=0``) runs every
    engine outside the round. A cancelled
    ``generate`` frees the target: a seed or round group is dropped at its next step, any
    other group stops at its next forward (:mod:`seedq.decoding.cancel`)."""

    def __init__(self, config: EngineConfig, runtime: Runtime, hub: TargetHub | None = None
                 ) -> None:
        self.config = config
        self.runtime = runtime
        self._owns_hub = hub is None
        self.hub = hub or TargetHub()
        # None: this engine does not run in the round
        self.mode = round_mode(config, runtime.options)
        built = BatchEngine(runtime) if self.mode is SEED else _engine(config, runtime)
        self._spec: GroupSpec | None = None
        if isinstance(built, SeedScheduler):
            self._spec = built.own_spec()
            built = self.hub.share(built)
        self.engine: Engine | SeedScheduler = built
        self.rounds: RoundBatcher | None = None
        if self.mode is not None:
            self.rounds = self.hub.round_batcher(runtime)
        self.speculates = self.mode is AUTO  # drafts where the cost model says it pays
        for model in (runtime.target, runtime.draft_model):
            if model is not None:
                cancel.install(model.model)

    @property
    def name(self) -> str:
        return self.config.engine

    def run(self, request: GroupRequest) -> GroupResult:
        if isinstance(self.engine, SeedScheduler):
            return self.engine.run(request, self._spec)
        if self.rounds is not None:
            return self.rounds.run(request, self.runtime, self.mode or BATCH)
        with self.hub.lock:
            cancel.check()  # given up on while it waited for the target
            return self.engine.run(request)

    async def generate(self, request: GroupRequest) -> GroupResult:
        if isinstance(self.engine, SeedScheduler):
            return await asyncio.wrap_future(self.engine.submit(request, self._spec))
        if self.rounds is not None:  # a cancelled await cancels the future: dropped
            return await asyncio.wrap_future(
                self.rounds.submit(request, self.runtime, self.mode or BATCH))
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._run_until, request, stop)
        finally:
            stop.set()  # a caller that gave up stops the thread at its next forward

    def _run_until(self, request: GroupRequest, stop: threading.Event) -> GroupResult:
        with cancel.cancellable(stop):
            return self.run(request)

    def close(self) -> None:
        """Stops the shared scheduler and round batcher when this generator owns the hub
        (the worker's own generator does; derived ones do not)."""
        if self._owns_hub:
            self.hub.close()


def round_mode(config: EngineConfig, options: DecodingOptions | None = None
               ) -> RoundMode | None:
    """How the config's groups run in the round batcher, None when they do not:
    ``options.round_batcher`` off (each engine alone), engines that decode one group at a time
    (``ar``, ``sd``, ``mcsd``), and ``seed`` with a draft tree (``k_config``) or the SeeD
    scheduler's own options (``verify_batch``, ``draft_batch``, ``draft_threads`` other than
    their defaults): those run on the threaded SeeD scheduler."""
    if options is not None and not options.round_batcher:
        return None
    mode = MODES.get(config.engine)
    if mode is SEED and (registry.draft_tree(config) or any(
            getattr(config, name) != getattr(EngineConfig, name) for name in SCHEDULER_OPTIONS)):
        return None
    return mode


SCHEDULER_OPTIONS = ("verify_batch", "draft_batch", "draft_threads")


def _engine(config: EngineConfig, runtime: Runtime) -> Engine | SeedScheduler:
    return registry.build(config, runtime)  # one entry per engine: seedq.decoding.registry


def generator_from_models(
    config: EngineConfig, target: LoadedModel, draft: LoadedModel | None = None,
    prefix: PrefixCaches | None = None, hub: TargetHub | None = None,
    options: DecodingOptions | None = None,
) -> LocalGenerator:
    """Wire already-loaded models (tests pass tiny in-process ones). ``prefix``: prefix
    caches to share (another runtime's over the same models), else new ones; ``hub``: the
    target lock and SeeD scheduler to share (another generator's over the same target);
    ``options``: the worker's decoding options (None: read from the environment)."""
    options = DecodingOptions.from_env() if options is None else options
    drafter: Drafter | None = None
    if config.drafting:
        shape = draft_shape(config)
        if config.drafting == loading.NGRAM:
            drafter = NgramDrafter(shape, target.model.vocab_size)
        elif draft is None:
            raise DecodingError(f"engine {config.engine!r} needs a draft model")
        else:
            loading.check_compatible(target.tokenizer, draft.tokenizer, config.draft or "draft")
            drafter = ModelDrafter(draft.model, shape)
    if draft is not None and drafter is None:
        loading.check_compatible(target.tokenizer, draft.tokenizer, config.draft or "draft")
    # the draft model is held even by a non-speculative engine, so that generators derived
    # from this one (derive_generator) can draft with it
    if prefix is None:
        prefix = PrefixCaches.with_limit(options.prefix_cache_bytes)
    runtime = Runtime(config, target.model, target.tokenizer, drafter,
                      draft.model if draft is not None else None, prefix, options)
    return LocalGenerator(config, runtime, hub)


def load_generator(config: EngineConfig, options: DecodingOptions | None = None
                   ) -> LocalGenerator:
    """Load the target (and draft) named in the config and build the generator.
    ``options``: the worker's decoding options (``Settings.decoding``; None: read from the
    environment once, here)."""
    options = DecodingOptions.from_env() if options is None else options
    target = load_model(config.target, config, options)
    draft = None
    if config.draft and config.draft != loading.NGRAM:
        draft = load_model(config.draft, config, options)
    generator = generator_from_models(config, target, draft, options=options)
    if generator.rounds is not None and generator.speculates:
        generator.rounds.calibrate(generator.runtime)  # auto: the cost curve, at start
    return generator


def load_model(name: str, config: EngineConfig, options: DecodingOptions) -> LoadedModel:
    """One model by name (the built-in tiny ones, a converted built-in, a hub id or path)."""
    if name in (TINY_TARGET, TINY_DRAFT):
        model: Any = tiny_model(0) if name == TINY_TARGET else perturbed_copy(tiny_model(0), 0.05)
        model = model.to(device=config.device, dtype=loading.DTYPES[config.dtype])
        return loading.wrap(model, tiny_tokenizer(), name, options.attention)
    return loading.load(name, config.device, config.dtype, options)


def derive_generator(base: LocalGenerator, config: EngineConfig) -> LocalGenerator:
    """Another engine or other speculation settings over the models ``base`` already holds
    (no loading). ``config.target``/``config.draft`` must name the same models as base's."""
    runtime = base.runtime
    if config.target != base.config.target:
        raise DecodingError(
            f"this generator holds target {base.config.target!r}, not {config.target!r}"
        )
    target = LoadedModel(runtime.target, runtime.tokenizer)
    draft = None
    if config.drafting not in (None, loading.NGRAM):
        if runtime.draft_model is None or config.draft != base.config.draft:
            held = base.config.draft if runtime.draft_model is not None else "no draft model"
            raise DecodingError(
                f"engine {config.engine!r} needs draft {config.draft!r}; this generator holds "
                f"{held}"
            )
        draft = LoadedModel(runtime.draft_model, runtime.tokenizer)
    return generator_from_models(config, target, draft, runtime.prefix, base.hub,
                                 runtime.options)
