"""The engine registry: one entry per engine, and everything that derives from it (the
config's checks, the factory, the draft shape, the service's batch options)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from seedq.decoding import registry
from seedq.decoding.config import EngineConfig
from seedq.decoding.drafters import DraftShape
from seedq.decoding.factory import derive_generator, draft_shape, load_generator
from seedq.decoding.types import DecodingError, GroupRequest, SamplingParams
from seedq.service import engines

REQUEST = GroupRequest(("the cat",) * 2, SamplingParams(max_new_tokens=6))


def test_every_registered_engine_builds_from_the_tiny_models_and_is_lossless() -> None:
    base = load_generator(EngineConfig(engine="ar", target="tiny", draft="tiny-draft"))
    try:
        expected = [s.token_ids for s in base.run(REQUEST).sequences]
        for spec in registry.ENGINE_SPECS:
            config = EngineConfig(engine=spec.name, target="tiny",
                                  draft="tiny-draft" if spec.needs_draft else None)
            generator = derive_generator(base, config)
            try:
                result = generator.run(REQUEST)
            finally:
                generator.close()
            assert result.engine == spec.name
            assert [s.token_ids for s in result.sequences] == expected, spec.name
            drafted = sum(s.metrics.drafted_tokens for s in result.sequences)
            if spec.needs_draft:
                assert drafted > 0, spec.name
            elif not spec.drafts:  # auto drafts by prompt lookup where its plan says so
                assert drafted == 0, spec.name
    finally:
        base.close()


def test_options_are_config_fields_and_each_applies_somewhere() -> None:
    config_fields = {f.name for f in fields(EngineConfig)}
    assert set(registry.OPTIONS) <= config_fields
    for name in registry.OPTIONS:
        assert registry.users_of(name), f"{name} applies to no engine"
    for spec in registry.ENGINE_SPECS:
        assert set(spec.options) <= set(registry.OPTIONS), spec.name
        if spec.options:
            assert spec.uses_drafter, f"{spec.name} has speculation options but drafts nothing"


@pytest.mark.parametrize("spec", registry.ENGINE_SPECS, ids=lambda s: s.name)
def test_config_needs_a_draft_exactly_where_the_registry_says(spec: registry.EngineSpec) -> None:
    assert EngineConfig(engine=spec.name, draft="d").speculative == spec.needs_draft
    if spec.needs_draft:
        with pytest.raises(DecodingError, match="needs a draft"):
            EngineConfig(engine=spec.name)
    else:
        EngineConfig(engine=spec.name)


@pytest.mark.parametrize(
    ("engine", "field", "users"),
    [("ar", "gamma", "auto, sd, seed"), ("sd", "verify_batch", "seed"),
     ("mcsd", "gamma", "auto, sd, seed"),
     ("sd", "k_config", "mcsd, seed"), ("batch", "draft_threads", "seed")],
)
def test_explicit_options_an_engine_does_not_use_are_refused(
    engine: str, field: str, users: str
) -> None:
    flag = registry.flag_of(field)
    with pytest.raises(registry.OptionNotApplicable, match=f"{flag} does not apply to engine "
                       f"'{engine}' \\(only to {users}\\)"):
        registry.check_applicable(engine, [field])
    registry.check_applicable("seed", [o for o in registry.OPTIONS if o != "gamma"])
    with pytest.raises(engines.EngineOptionError, match=f"{flag}: does not apply"):
        engines.normalize({"engine": engine, field: (2, 1) if field == "k_config" else 2})


def test_service_options_derive_from_the_registry() -> None:
    assert tuple(registry.OPTIONS) == engines.OPTION_FIELDS[1:]
    assert engines.OPTION_FIELDS[0] == "engine"
    assert engines.SPECULATIVE == ("sd", "mcsd", "seed")
    assert engines.normalize({"engine": "seed", "draft_threads": 3, "k_config": "2,1"}) == {
        "engine": "seed", "k_config": [2, 1], "draft_threads": 3}
    with pytest.raises(engines.EngineOptionError, match=r"--gamma: .*give --engine too"):
        engines.normalize({"gamma": 3})  # the workers' engine is unknown at submit


def test_a_worker_config_with_defaults_serves_any_engine() -> None:
    """Only explicitly given options are refused: the worker's defaults (gamma=4 ...) are not."""
    worker = EngineConfig(engine="seed", target="t", draft="d", verify_batch=2, gamma=3)
    derived = engines.derived_config(worker, {"engine": "ar"})
    assert derived == EngineConfig(engine="ar", target="t", draft="d")  # unused options reset
    assert engines.derived_config(worker, {"verify_batch": 4}).verify_batch == 4
    with pytest.raises(DecodingError, match="--verify-batch does not apply to engine 'sd'"):
        engines.derived_config(worker, {"engine": "sd", "verify_batch": 2})  # stored elsewhere


def test_draft_shape_follows_the_registry() -> None:
    def shape(**options: object) -> DraftShape:
        return draft_shape(EngineConfig(draft="d", **options))  # type: ignore[arg-type]

    assert shape(engine="sd", gamma=3) == DraftShape.chain(3)
    assert shape(engine="sd", k_config=(2, 2)) == DraftShape.chain(4)  # sd never drafts trees
    assert shape(engine="mcsd") == DraftShape((2, 1, 1), False)
    assert shape(engine="mcsd", k_config=(3,), mcsd_rule="with") == DraftShape((3,), True)
    assert shape(engine="seed", gamma=2) == DraftShape.chain(2)
    assert shape(engine="seed", k_config=(2, 1)) == DraftShape((2, 1), False)


def test_gamma_and_k_config_together_are_refused() -> None:
    """A k-config tree replaces the chain of gamma tokens: both given is an error, not a
    silent choice."""
    message = "--gamma cannot be given together with --k-config"
    with pytest.raises(registry.ConflictingOptions, match=message):
        registry.check_applicable("seed", ["gamma", "k_config"])
    with pytest.raises(engines.EngineOptionError, match="--gamma: cannot be given together"):
        engines.normalize({"engine": "seed", "gamma": 3, "k_config": (2, 1)})
    registry.check_applicable("seed", ["k_config", "verify_batch"])
    registry.check_applicable("seed", ["gamma", "draft_batch"])
