"""Which engine, which models, which speculation settings: one frozen value."""

from __future__ import annotations

from dataclasses import dataclass

from seedq.decoding import registry
from seedq.decoding.types import DecodingError

ENGINES = registry.NAMES  # one entry per engine in seedq.decoding.registry
MCSD_RULES = ("with", "without")  # candidates drawn with / without replacement
DTYPES = ("float32", "float16", "bfloat16")
NGRAM = "ngram"  # prompt-lookup drafting (seedq.decoding.loading.NGRAM)


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build a group generator.

    Each engine uses only the speculation options its registry entry lists
    (:mod:`seedq.decoding.registry`); the others keep their defaults and are ignored.

    ``target`` / ``draft`` are Hugging Face ids or local directories, or the built-in
    name ``smollm2`` (SmolLM2-135M-Instruct, shipped offline). ``draft`` may also be
    ``smollm2-int8`` (an int8 dynamically quantized copy of the target), ``smollm2-bf16``
    (its weights in bfloat16) or ``ngram`` (prompt-lookup drafting, no draft model).
    """

    engine: str = "ar"
    target: str = "smollm2"
    draft: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    gamma: int = 4  # draft length for chain drafts (sd, seed without k_config)
    k_config: tuple[int, ...] = ()  # tree draft, e.g. (2, 1, 1); () means a chain of gamma
    mcsd_rule: str = "without"
    verify_batch: int = 1  # seed: drafts verified per target forward (1 = strict FCFS)
    draft_batch: int = 1  # seed: sequences drafted together in one batched draft forward
    draft_threads: int = 2  # seed: drafter threads working in parallel

    def __post_init__(self) -> None:
        spec = registry.get(self.engine)  # raises for an unknown engine
        if self.dtype not in DTYPES:
            raise DecodingError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.mcsd_rule not in MCSD_RULES:
            raise DecodingError(f"mcsd_rule must be 'with' or 'without', got {self.mcsd_rule!r}")
        if not 1 <= self.gamma <= 64:
            raise DecodingError(f"gamma must be in 1..64, got {self.gamma}")
        if any(k < 1 for k in self.k_config) or len(self.k_config) > 16:
            raise DecodingError(f"k_config needs 1..16 entries, each >= 1, got {self.k_config}")
        if not (1 <= self.verify_batch <= 256 and 1 <= self.draft_batch <= 256):
            raise DecodingError("verify_batch and draft_batch must be in 1..256")
        if not 1 <= self.draft_threads <= 64:
            raise DecodingError(f"draft_threads must be in 1..64, got {self.draft_threads}")
        if spec.needs_draft and not self.draft:
            raise DecodingError(f"engine {self.engine!r} needs a draft (--draft)")

    @property
    def speculative(self) -> bool:
        return registry.get(self.engine).needs_draft

    @property
    def drafting(self) -> str | None:
        """What drafts for this engine: the draft model's name, ``ngram`` (prompt lookup;
        ``auto`` without ``draft``), or None for an engine that never drafts."""
        spec = registry.get(self.engine)
        if spec.needs_draft:
            return self.draft
        return (self.draft or NGRAM) if spec.drafts else None
