"""What served one job, recorded in its ``jobs.result``: the models and the target's busy time.

``result["models"]`` (:class:`ModelsRecord`): the target and draft models (None when the
engine does not draft: ``ar``, ``batch``), the engine that generated the job's groups
(after the batch's engine options), the device and dtype, all taken from the generator that
served the job (its ``EngineConfig``). A generator without a config (a test double) leaves
the models None; ``generator`` names its class in any case.

``result["target_busy"]`` (:class:`TargetBusyRecord`), only when the engine measures it
(``seed``, and ``batch`` through its round batcher, report ``target_busy_seconds`` in
``GroupResult.stats``): the
target's busy seconds summed over the job's groups, the summed wall seconds of those groups
and the job's wall seconds. ``fraction`` is busy over group seconds: each group's measured
fraction weighted by its wall time, as the report's estimate from ``generations`` rows is
(a tree's groups may overlap, so busy over the job's wall could pass 1).
"""

from __future__ import annotations

from typing import Any, TypedDict

from seedq.decoding.config import EngineConfig
from seedq.decoding.types import GroupGenerator, GroupRequest, GroupResult

BUSY_KEY = "target_busy_seconds"


class ModelsRecord(TypedDict):
    target: str | None
    draft: str | None
    engine: str | None
    device: str | None
    dtype: str | None
    generator: str


class TargetBusyRecord(TypedDict):
    busy_seconds: float
    group_seconds: float
    job_seconds: float
    groups: int  # groups that reported busy seconds
    fraction: float | None


def models_of(generator: Any, engines: set[str] | None = None) -> ModelsRecord:
    """The models behind ``generator`` (an ``EngineTap``, or any GroupGenerator); ``engines``:
    the engine names its results reported for the job (preferred over the config's when
    there is exactly one)."""
    inner = getattr(generator, "inner", generator)
    config = getattr(inner, "config", None)
    seen = sorted(engines or ())
    engine = seen[0] if len(seen) == 1 else ", ".join(seen) or None
    if not isinstance(config, EngineConfig):
        engine = engine or _text(getattr(inner, "engine", None))
        return ModelsRecord(target=None, draft=None, engine=engine, device=None,
                            dtype=None, generator=type(inner).__name__)
    return ModelsRecord(target=config.target, draft=config.drafting,
                        engine=engine or config.engine, device=config.device,
                        dtype=config.dtype, generator=type(inner).__name__)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class JobUsage:
    """Counts, for one job, the engines and the target busy time its group results report.
    ``watch`` wraps the job's view of its generator; ``serve`` notes the generator itself."""

    def __init__(self) -> None:
        self.generator: Any = None
        self.engines: set[str] = set()
        self.busy_seconds = 0.0
        self.group_seconds = 0.0
        self.groups = 0

    def serve(self, generator: Any) -> None:
        self.generator = generator

    def watch(self, generator: GroupGenerator) -> GroupGenerator:
        return _Watched(generator, self)

    def add(self, result: GroupResult) -> None:
        self.engines.add(result.engine)
        busy = result.stats.get(BUSY_KEY)
        if busy is None:
            return
        self.busy_seconds += float(busy)
        self.group_seconds += float(result.wall_seconds)
        self.groups += 1

    def models(self) -> ModelsRecord | None:
        return None if self.generator is None else models_of(self.generator, self.engines)

    def target_busy(self, job_seconds: float) -> TargetBusyRecord | None:
        """None when no group reported busy seconds (engines that do not measure it)."""
        if not self.groups:
            return None
        fraction = min(self.busy_seconds / self.group_seconds, 1.0) if self.group_seconds \
            else None
        return TargetBusyRecord(busy_seconds=self.busy_seconds, group_seconds=self.group_seconds,
                                job_seconds=job_seconds, groups=self.groups, fraction=fraction)

    def record(self, job_seconds: float) -> dict[str, Any]:
        """The keys this adds to ``jobs.result`` (those known)."""
        out: dict[str, Any] = {}
        models = self.models()
        if models is not None:
            out["models"] = dict(models)
        busy = self.target_busy(job_seconds)
        if busy is not None:
            out["target_busy"] = dict(busy)
        return out


class _Watched:
    def __init__(self, inner: GroupGenerator, usage: JobUsage) -> None:
        self.inner = inner
        self.usage = usage

    async def generate(self, request: GroupRequest) -> GroupResult:
        result = await self.inner.generate(request)
        self.usage.add(result)
        return result
