"""Per-forward overhead of the round batcher's decode forward against a plain HF forward,
and the slot KV cache's decode forward against both.

For each row count, ``rows`` sequences with ``--kv`` positions already in the cache feed one
token each:

- ``round``: ``RoundBatch.forward`` as the batcher calls it (the round's left-padded
  ``DynamicCache``, its ``[rows, width]`` padding mask turned into a 4D boolean then additive
  mask, explicit position ids, ``logits_to_keep=1``, logits cut to the vocab, float, CPU);
- ``hf``: ``model(input_ids, attention_mask=[rows, kv+1] ones, cache=DynamicCache)``
  on the same KV tensors (the plain HF batched decode forward);
- ``slot``: ``LanguageModel.forward`` on a ``SlotCache`` (``seedq/decoding/slot_cache.py``)
  holding the same rows (``prepare`` builds the ``[rows, 1, 1, width]`` mask and position
  ids, timed too; ``logits_to_keep=1``): keys/values are written in place, no KV copy;
- ``slot_round``: ``SlotRoundBatch.forward`` (``seedq/decoding/engines/round_slots.py``), the
  round batcher's storage on a slot cache (``SEEDQ_ROUND_KV=slots``) as the batcher calls it:
  the ``slot`` forward plus the round's bookkeeping (feeds, position check, capacity check,
  logits per row, float, CPU).

All start every forward from the same cache length (the new column is cropped off outside
the timed region; the slot caches simply commit nothing). The rows share one prompt (equal
lengths, no padding: the HF baseline needs no padding either). Repetitions are interleaved
(round, hf, slot, slot_round, round, hf, ...) per row count; each repetition times ``--forwards``
forwards (``--tiny-forwards`` for the tiny model) and keeps the mean; medians (min-max) over
repetitions. Overhead = round median / hf median - 1; slot vs HF = slot median / hf median
- 1 (likewise slot_round vs HF). Also timed (``kv_cat_ms``): the per-forward KV copy the
round and HF paths pay (``DynamicCache`` concatenates every layer's K and V with the new
column), what the slot cache removes.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/overhead.py --models tiny,smollm2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seedq.decoding import kvcache  # noqa: E402
from seedq.decoding.engines.round_batch import RoundBatch, Row, _layers  # noqa: E402
from seedq.decoding.engines.round_slots import SlotRoundBatch  # noqa: E402
from seedq.decoding.loading import LoadedModel, load, wrap  # noqa: E402
from seedq.decoding.models import LanguageModel  # noqa: E402
from seedq.decoding.slot_cache import SlotCache  # noqa: E402
from seedq.decoding.tiny import tiny_model, tiny_tokenizer  # noqa: E402


def load_model(name: str) -> LoadedModel:
    if name == "tiny":
        return wrap(tiny_model(0), tiny_tokenizer(), "tiny")
    return load(name, "cpu", "float32")


def prefill(model: LanguageModel, kv: int) -> tuple[DynamicCache, int]:
    """One row's cache of ``kv`` positions and its next token."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.vocab_size, (kv,), generator=generator).tolist()
    cache = kvcache.new_cache()
    logits = model.forward_chain(ids, cache, keep=1)
    return cache, int(logits[-1].argmax())


def round_batch(cache: DynamicCache, token: int, kv: int, rows: int) -> RoundBatch:
    batch = RoundBatch()
    members: list[Any] = [Row(None, None, token, kv) for _ in range(rows)]  # type: ignore[arg-type]
    batch.join(members, [kvcache.clone(cache) for _ in range(rows)])
    return batch


def time_round(model: LanguageModel, batch: RoundBatch, forwards: int) -> float:
    mask, width = batch.mask, batch.width
    total = 0.0
    for _ in range(forwards):
        began = time.perf_counter()
        batch.forward(model)
        total += time.perf_counter() - began
        assert batch.cache is not None
        kvcache.crop(batch.cache, width)
        batch.mask = mask
    return total / forwards


def time_hf(model: LanguageModel, batch: RoundBatch, token: int, forwards: int) -> float:
    assert batch.cache is not None
    rows, width = len(batch.rows), batch.width
    cache = DynamicCache(ddp_cache_data=[(layer.keys.clone(), layer.values.clone())
                                         for layer in _layers(batch.cache)])
    ids = torch.full((rows, 1), token, dtype=torch.long)
    mask = torch.ones((rows, width + 1), dtype=torch.long)
    total = 0.0
    with torch.inference_mode():
        for _ in range(forwards):
            began = time.perf_counter()
            out = model.model(input_ids=ids, attention_mask=mask, cache=cache,
                              use_cache=True)
            total += time.perf_counter() - began
            kvcache.crop(cache, width)
    last_hf_logits[:] = [out.logits[:, -1, : model.vocab_size].float()]
    return total / forwards


last_hf_logits: list[torch.Tensor] = []


def slot_cache(model: LanguageModel, cache: DynamicCache, kv: int, rows: int) -> SlotCache:
    """``rows`` copies of the prefilled row in a slot cache with room for 64 more tokens."""
    slots = SlotCache(model.model.config, rows, kv + 64, model.dtype, model.device)
    for _ in range(rows):
        slots.load(slots.allocate(), cache)
    return slots


def time_slot(model: LanguageModel, slots: SlotCache, token: int, forwards: int) -> float:
    """Decode forwards of one token per row; nothing is committed, so every forward starts
    from the same lengths (and overwrites the same column)."""
    ids = torch.full((slots.active, 1), token, dtype=torch.long)
    total = 0.0
    for _ in range(forwards):
        began = time.perf_counter()
        step = slots.prepare([1] * slots.active)
        logits = model.forward(ids, slots, step.attention_mask,  # type: ignore[arg-type]
                               step.position_ids, keep=1)
        total += time.perf_counter() - began
    last_slot_logits[:] = [logits[:, -1].cpu()]
    return total / forwards


last_slot_logits: list[torch.Tensor] = []


def slot_round(cache: DynamicCache, token: int, kv: int, rows: int) -> SlotRoundBatch:
    batch = SlotRoundBatch()
    members: list[Any] = [Row(None, None, token, kv) for _ in range(rows)]  # type: ignore[arg-type]
    batch.join(members, [cache] * rows)  # join copies them into its slots
    return batch


def time_slot_round(model: LanguageModel, batch: SlotRoundBatch, forwards: int) -> float:
    """``SlotRoundBatch.forward``; nothing is settled, so every forward starts from the same
    lengths."""
    total = 0.0
    for _ in range(forwards):
        began = time.perf_counter()
        out = batch.forward(model)
        total += time.perf_counter() - began
    last_slot_round_logits[:] = [torch.cat([row[-1:] for row in out])]
    return total / forwards


last_slot_round_logits: list[torch.Tensor] = []


def time_cat(batch: RoundBatch, forwards: int) -> float:
    """What ``DynamicCache`` copies per forward in both paths: every layer's K and V
    concatenated with one new column (no model compute)."""
    assert batch.cache is not None
    layers = _layers(batch.cache)
    column = [(layer.keys[..., -1:, :].clone(), layer.values[..., -1:, :].clone())
              for layer in layers]
    total = 0.0
    for _ in range(forwards):
        began = time.perf_counter()
        for layer, (k, v) in zip(layers, column, strict=True):
            torch.cat([layer.keys, k], dim=-2)
            torch.cat([layer.values, v], dim=-2)
        total += time.perf_counter() - began
    return total / forwards


def same_logits(model: LanguageModel, batch: RoundBatch, slots: SlotCache,
                slot_batch: SlotRoundBatch, token: int) -> tuple[float, float, float]:
    """Max |round - hf|, |slot - hf| and |slot_round - hf| logit differences of one forward
    (the paths agree)."""
    mask, width = batch.mask, batch.width
    out: Any = batch.forward(model)
    logits = torch.cat([row[-1:] for row in out]) if isinstance(out, list) else out
    assert batch.cache is not None
    kvcache.crop(batch.cache, width)
    batch.mask = mask
    time_hf(model, batch, token, 1)
    time_slot(model, slots, token, 1)
    time_slot_round(model, slot_batch, 1)
    hf = last_hf_logits[0]
    return (float((logits - hf).abs().max()), float((last_slot_logits[0] - hf).abs().max()),
            float((last_slot_round_logits[0] - hf).abs().max()))


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_model(name: str, rows_list: list[int], kv: int, reps: int, forwards: int
                ) -> list[dict[str, Any]]:
    model = load_model(name).model
    cache, token = prefill(model, kv)
    out = []
    for rows in rows_list:
        batch = round_batch(cache, token, kv, rows)
        slots = slot_cache(model, cache, kv, rows)
        slot_batch = slot_round(cache, token, kv, rows)
        diff, slot_diff, slot_round_diff = same_logits(  # also warms all paths up
            model, batch, slots, slot_batch, token)
        times: dict[str, list[float]] = {"round": [], "hf": [], "slot": [], "slot_round": [],
                                         "cat": []}
        for _ in range(reps):
            times["round"].append(time_round(model, batch, forwards))
            times["hf"].append(time_hf(model, batch, token, forwards))
            times["slot"].append(time_slot(model, slots, token, forwards))
            times["slot_round"].append(time_slot_round(model, slot_batch, forwards))
            times["cat"].append(time_cat(batch, forwards))
        round_ms = summary([t * 1e3 for t in times["round"]])
        hf_ms = summary([t * 1e3 for t in times["hf"]])
        slot_ms = summary([t * 1e3 for t in times["slot"]])
        slot_round_ms = summary([t * 1e3 for t in times["slot_round"]])
        cat_ms = summary([t * 1e3 for t in times["cat"]])
        overhead = round_ms["median"] / hf_ms["median"] - 1
        slot_vs_hf = slot_ms["median"] / hf_ms["median"] - 1
        slot_round_vs_hf = slot_round_ms["median"] / hf_ms["median"] - 1
        entry: dict[str, Any] = {
                 "model": name, "rows": rows, "kv": kv, "round_ms": round_ms, "hf_ms": hf_ms,
                 "slot_ms": slot_ms, "slot_round_ms": slot_round_ms, "kv_cat_ms": cat_ms,
                 "overhead": overhead, "slot_vs_hf": slot_vs_hf,
                 "slot_round_vs_hf": slot_round_vs_hf,
                 "round_raw_s": times["round"], "hf_raw_s": times["hf"],
                 "slot_raw_s": times["slot"], "slot_round_raw_s": times["slot_round"],
                 "kv_cat_raw_s": times["cat"],
                 "max_abs_logit_diff": diff, "slot_max_abs_logit_diff": slot_diff,
                 "slot_round_max_abs_logit_diff": slot_round_diff}
        print(f"{name:8} rows {rows:2}: round {round_ms['median']:8.3f} ms  "
              f"hf {hf_ms['median']:8.3f} ms  slot {slot_ms['median']:8.3f} ms  "
              f"slot_round {slot_round_ms['median']:8.3f} ms  "
              f"overhead {overhead:+.1%}  slot vs hf {slot_vs_hf:+.1%}  "
              f"slot_round vs hf {slot_round_vs_hf:+.1%}  "
              f"KV cat {cat_ms['median']:8.3f} ms",
              flush=True)
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--rows", default="1,4,8,16")
    parser.add_argument("--kv", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--forwards", type=int, default=10, help="timed per repetition")
    parser.add_argument("--tiny-forwards", type=int, default=100,
                        help="the same for the tiny model (ms-scale forwards: noisier)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    results = []
    for name in args.models.split(","):
        forwards = args.tiny_forwards if name == "tiny" else args.forwards
        results.extend(bench_model(name, rows, args.kv, args.reps, forwards))
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "reps": args.reps, "forwards": args.forwards,
            "tiny_forwards": args.tiny_forwards, "kv": args.kv}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print("| model | rows | round ms median (min-max) | HF ms median (min-max) "
          "| slot ms median (min-max) | slot_round ms median (min-max) | round overhead "
          "| slot vs HF | slot_round vs HF | KV cat ms (share of HF) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rm, hm, sm, srm = r["round_ms"], r["hf_ms"], r["slot_ms"], r["slot_round_ms"]
        print(f"| {r['model']} | {r['rows']} | {spread(rm)} | {spread(hm)} | {spread(sm)} | "
              f"{spread(srm)} | {r['overhead']:+.1%} | {r['slot_vs_hf']:+.1%} | "
              f"{r['slot_round_vs_hf']:+.1%} | "
              f"{r['kv_cat_ms']['median']:.3f} ({r['kv_cat_ms']['median'] / hm['median']:.0%}) |")


def spread(ms: dict[str, float]) -> str:
    return f"{ms['median']:.3f} ({ms['min']:.3f}-{ms['max']:.3f})"


if __name__ == "__main__":
    main()
