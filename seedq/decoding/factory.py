"""Build a group generator from an EngineConfig: load models once, pick the drafter and the
engine, and expose both a blocking ``run`` and the awaitable ``generate`` of GroupGenerator."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from seedq.decoding import loading
from seedq.decoding.config import EngineConfig
from seedq.decoding.drafters import Drafter, DraftShape, ModelDrafter, NgramDrafter
from seedq.decoding.engines.ar import AutoregressiveEngine
from seedq.decoding.engines.base import Engine, Runtime
from seedq.decoding.engines.batch import BatchEngine
from seedq.decoding.engines.seed import SeedScheduler
from seedq.decoding.engines.speculative import SpeculativeEngine
from seedq.decoding.loading import LoadedModel
from seedq.decoding.tiny import TINY_DRAFT, TINY_TARGET, perturbed_copy, tiny_model, tiny_tokenizer
from seedq.decoding.types import DecodingError, GroupRequest, GroupResult

DEFAULT_TREE = (2, 1, 1)


def draft_shape(config: EngineConfig) -> DraftShape:
    replacement = config.mcsd_rule == "with"
    if config.engine == "mcsd":
        return DraftShape(config.k_config or DEFAULT_TREE, replacement)
    if config.engine == "seed" and config.k_config:
        return DraftShape(config.k_config, replacement)
    return DraftShape.chain(config.gamma)


class LocalGenerator:
    """A GroupGenerator over in-process models. Non-seed engines run one group at a time;
    the seed engine's scheduler interleaves the groups of concurrent callers."""

    def __init__(self, config: EngineConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self._lock = threading.Lock()
        self.engine: Engine | SeedScheduler = _engine(config, runtime)

    @property
    def name(self) -> str:
        return self.config.engine

    def run(self, request: GroupRequest) -> GroupResult:
        if isinstance(self.engine, SeedScheduler):
            return self.engine.run(request)
        with self._lock:
            return self.engine.run(request)

    async def generate(self, request: GroupRequest) -> GroupResult:
        if isinstance(self.engine, SeedScheduler):
            return await asyncio.wrap_future(self.engine.submit(request))
        return await asyncio.to_thread(self.run, request)

    def close(self) -> None:
        if isinstance(self.engine, SeedScheduler):
            self.engine.close()


def _engine(config: EngineConfig, runtime: Runtime) -> Engine | SeedScheduler:
    if config.engine == "ar":
        return AutoregressiveEngine(runtime)
    if config.engine == "batch":
        return BatchEngine(runtime)
    if config.engine in ("sd", "mcsd"):
        return SpeculativeEngine(runtime, config.engine)
    return SeedScheduler(runtime, config.verify_batch, config.draft_batch, config.draft_threads)


def generator_from_models(
    config: EngineConfig, target: LoadedModel, draft: LoadedModel | None = None
) -> LocalGenerator:
    """Wire already-loaded models (tests pass tiny in-process ones)."""
    drafter: Drafter | None = None
    if config.speculative:
        shape = draft_shape(config)
        if config.draft == loading.NGRAM:
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
    runtime = Runtime(config, target.model, target.tokenizer, drafter,
                      draft.model if draft is not None else None)
    return LocalGenerator(config, runtime)


def load_generator(config: EngineConfig) -> LocalGenerator:
    """Load the target (and draft) named in the config and build the generator."""
    target = _load(config.target, config)
    draft = None
    if config.draft and config.draft != loading.NGRAM:
        draft = _load(config.draft, config)
    return generator_from_models(config, target, draft)


def _load(name: str, config: EngineConfig) -> LoadedModel:
    if name in (TINY_TARGET, TINY_DRAFT):
        model: Any = tiny_model(0) if name == TINY_TARGET else perturbed_copy(tiny_model(0), 0.05)
        model = model.to(device=config.device, dtype=loading.DTYPES[config.dtype])
        return loading.wrap(model, tiny_tokenizer(), name)
    return loading.load(name, config.device, config.dtype)


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
    if config.speculative and config.draft != loading.NGRAM:
        if runtime.draft_model is None or config.draft != base.config.draft:
            held = base.config.draft if runtime.draft_model is not None else "no draft model"
            raise DecodingError(
                f"engine {config.engine!r} needs draft {config.draft!r}; this generator holds "
                f"{held}"
            )
        draft = LoadedModel(runtime.draft_model, runtime.tokenizer)
    return generator_from_models(config, target, draft)
