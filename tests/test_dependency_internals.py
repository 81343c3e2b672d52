"""The internals of rq and transformers that seedq relies on, checked one by one.

``pyproject.toml`` bounds both to the minor release verified here, because seedq goes past
their public API: :class:`seedq.service.worker.TreeWorker` subclasses rq's ``BaseWorker`` and
calls its execution bookkeeping, :mod:`seedq.service.maintenance` reads rq's registries and
intermediate queue, and :mod:`seedq.decoding.kvcache` (and ``prefix_cache``) edit the
``keys``/``values`` tensors of transformers' ``DynamicLayer`` in place. Before widening a
bound, run this file against the new release: each failure names what moved.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

# (module, attribute path, parameters seedq passes to it: by keyword, or by position first)
RQ_CALLS: list[tuple[str, str, tuple[str, ...]]] = [
    ("rq.worker", "BaseWorker.__init__", (
        "queues", "name", "connection", "serializer", "worker_ttl", "maintenance_interval",
        "job_monitoring_interval",
    )),
    ("rq.worker", "BaseWorker.handle_job_success",
     ("job", "queue", "started_job_registry", "execution")),
    ("rq.worker", "BaseWorker.handle_job_failure", ("job", "queue", "exc_string", "execution")),
    ("rq.worker", "BaseWorker.cleanup_execution", ("job", "pipeline", "execution")),
    ("rq.worker", "BaseWorker.prepare_execution", ("job",)),
    ("rq.worker", "BaseWorker.prepare_job_execution", ("job", "remove_from_intermediate_queue")),
    ("rq.worker", "BaseWorker.heartbeat", ("timeout", "pipeline")),
    ("rq.worker", "BaseWorker.register_birth", ()),
    ("rq.worker", "BaseWorker.register_death", ()),
    ("rq.worker", "BaseWorker.set_state", ("state",)),
    ("rq.worker", "BaseWorker.get_heartbeat_ttl", ("job", "working_time")),  # overridden
    ("rq.worker", "Worker.all", ("connection", "serializer")),
    ("rq.queue", "Queue.dequeue_any", ("queues", "timeout", "connection", "serializer")),
    ("rq.queue", "Queue.enqueue_many", ("job_datas", "pipeline")),
    ("rq.executions", "Execution.heartbeat", ("started_job_registry", "ttl", "pipeline")),
    ("rq.job", "Job.heartbeat", ("timestamp", "ttl", "pipeline", "xx")),
    ("rq.job", "Job.set_status", ("status", "pipeline")),
    ("rq.job", "Job._handle_failure", ("exc_string", "pipeline", "worker_name")),
    ("rq.intermediate_queue", "IntermediateQueue.__init__", ("queue_key", "connection")),
    ("rq.intermediate_queue", "IntermediateQueue.get_job_ids", ()),
    ("rq.intermediate_queue", "IntermediateQueue.set_first_seen", ("job_id",)),
    ("rq.intermediate_queue", "IntermediateQueue.should_be_cleaned_up", ("job_id",)),
    ("rq.intermediate_queue", "IntermediateQueue.remove", ("job_id",)),
    ("rq.registry", "StartedJobRegistry.get_job_and_execution_ids", ("cleanup",)),
    ("rq.registry", "StartedJobRegistry.parse_job_id", ("entry",)),
    ("rq.worker_registration", "clean_worker_registry", ("queue",)),
    ("rq.utils", "current_timestamp", ()),
    ("rq.utils", "utcparse", ("string",)),
    ("rq.utils", "as_text", ("v",)),
    ("rq.utils", "now", ()),
]
# properties seedq reads on rq objects (TreeWorker overrides dequeue_timeout)
RQ_PROPERTIES = [
    ("rq.worker", "BaseWorker", "key"),
    ("rq.worker", "BaseWorker", "dequeue_timeout"),
    ("rq.queue", "Queue", "intermediate_queue_key"),
    ("rq.queue", "Queue", "started_job_registry"),
]


def _resolve(module: str, path: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _call_problem(module: str, path: str, params: tuple[str, ...]) -> str | None:
    try:
        func = _resolve(module, path)
    except (ImportError, AttributeError):
        return f"{module}.{path} is gone"
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None  # a builtin: nothing to compare
    names = set(signature.parameters)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    missing = [p for p in params if p not in names and not takes_kwargs]
    if missing:
        return f"{module}.{path}{signature} no longer takes {', '.join(missing)}"
    return None


def test_rq_internals_the_worker_relies_on() -> None:
    problems = [
        problem for module, path, params in RQ_CALLS
        if (problem := _call_problem(module, path, params)) is not None
    ]
    for module, cls, name in RQ_PROPERTIES:
        if not isinstance(inspect.getattr_static(_resolve(module, cls), name, None), property):
            problems.append(f"{module}.{cls}.{name} is no longer a property")
    from rq.worker import WorkerStatus

    if not hasattr(WorkerStatus, "IDLE"):
        problems.append("rq.worker.WorkerStatus.IDLE is gone")
    assert not problems, "rq internals seedq relies on moved:\n" + "\n".join(problems)


def test_rq_job_keeps_the_fields_the_worker_sets() -> None:
    import fakeredis
    from rq.job import Job

    job = Job(connection=fakeredis.FakeRedis())
    missing = [name for name in ("_result", "started_at") if name not in vars(job)]
    assert not missing, f"rq.job.Job no longer has the attributes seedq sets: {missing}"


def test_transformers_dynamic_cache_layers_the_kv_code_edits() -> None:
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    assert hasattr(cache, "layers"), "transformers DynamicCache has no .layers any more"
    keys, values = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    for index in range(2):
        cache.update(keys, values, index)
    layers: list[Any] = [
        layer for layer in cache.layers if getattr(layer, "is_initialized", False)
    ]
    assert len(layers) == 2, "DynamicCache layers no longer expose is_initialized"
    for layer in layers:
        for name in ("keys", "values"):
            assert isinstance(getattr(layer, name, None), torch.Tensor), (
                f"{type(layer).__name__}.{name} is no longer the layer's tensor"
            )
        layer.keys = layer.keys[..., :3, :]  # kvcache.crop
        layer.values = layer.values[..., :3, :]
    assert cache.get_seq_length() == 3, "get_seq_length no longer follows DynamicLayer.keys"
    params = inspect.signature(DynamicCache.__init__).parameters
    assert "ddp_cache_data" in params, "DynamicCache(ddp_cache_data=...) is gone (kvcache.clone)"
    rebuilt = DynamicCache(ddp_cache_data=[(keys, values)])
    first: Any = rebuilt.layers[0]
    assert torch.equal(first.keys, keys), "ddp_cache_data no longer fills layers"


@pytest.mark.parametrize("name", ["cache", "use_cache", "logits_to_keep", "position_ids"])
def test_transformers_forward_keywords_the_models_pass(name: str) -> None:
    from transformers import LlamaForCausalLM

    params = inspect.signature(LlamaForCausalLM.forward).parameters
    assert name in params, (
        f"LlamaForCausalLM.forward no longer takes {name!r} (seedq/decoding/models.py)"
    )
