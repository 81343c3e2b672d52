"""Per-forward overhead of the round batcher's decode forward against a plain HF forward.

For each row count, ``rows`` sequences with ``--kv`` positions already in the cache feed one
token each:

- ``round``: ``RoundBatch.forward`` as the batcher calls it (the round's left-padded
  ``DynamicCache``, its ``[rows, width]`` padding mask turned into a 4D boolean then additive
  mask, explicit position ids, ``logits_to_keep=1``, logits cut to the vocab, float, CPU);
- ``hf``: ``model(input_ids, attention_mask=[rows, kv+1] ones, past_key_values=DynamicCache)``
  on the same KV tensors (the plain HF batched decode forward).

Both start every forward from the same cache length (the new column is cropped off outside
the timed region). The rows share one prompt (equal lengths, no padding: the HF baseline needs
no padding either). Repetitions are interleaved (round, hf, round, hf, ...) per row count;
each repetition times ``--forwards`` forwards (``--tiny-forwards`` for the tiny model) and
keeps the mean; medians (min-max) over repetitions. Overhead = round median / hf median - 1.
Also timed (``kv_cat_ms``): the per-forward KV copy both paths pay (``DynamicCache``
concatenates every layer's K and V with the new column), what a slot/static cache removes.

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
from seedq.decoding.loading import LoadedModel, load, wrap  # noqa: E402
from seedq.decoding.models import LanguageModel  # noqa: E402
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
            out = model.model(input_ids=ids, attention_mask=mask, past_key_values=cache,
                              use_cache=True)
            total += time.perf_counter() - began
            kvcache.crop(cache, width)
    last_hf_logits[:] = [out.logits[:, -1, : model.vocab_size].float()]
    return total / forwards


last_hf_logits: list[torch.Tensor] = []


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


def same_logits(model: LanguageModel, batch: RoundBatch, token: int) -> float:
    """Max |round - hf| logit difference of one forward (the two paths agree)."""
    mask, width = batch.mask, batch.width
    logits = batch.forward(model)
    assert batch.cache is not None
    kvcache.crop(batch.cache, width)
    batch.mask = mask
    time_hf(model, batch, token, 1)
    return float((logits - last_hf_logits[0]).abs().max())


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_model(name: str, rows_list: list[int], kv: int, reps: int, forwards: int
                ) -> list[dict[str, Any]]:
    model = load_model(name).model
    cache, token = prefill(model, kv)
    out = []
    for rows in rows_list:
        batch = round_batch(cache, token, kv, rows)
        diff = same_logits(model, batch, token)  # also warms both paths up
        times: dict[str, list[float]] = {"round": [], "hf": [], "cat": []}
        for _ in range(reps):
            times["round"].append(time_round(model, batch, forwards))
            times["hf"].append(time_hf(model, batch, token, forwards))
            times["cat"].append(time_cat(batch, forwards))
        round_ms = summary([t * 1e3 for t in times["round"]])
        hf_ms = summary([t * 1e3 for t in times["hf"]])
        cat_ms = summary([t * 1e3 for t in times["cat"]])
        overhead = round_ms["median"] / hf_ms["median"] - 1
        entry: dict[str, Any] = {
                 "model": name, "rows": rows, "kv": kv, "round_ms": round_ms, "hf_ms": hf_ms,
                 "kv_cat_ms": cat_ms, "overhead": overhead,
                 "round_raw_s": times["round"], "hf_raw_s": times["hf"],
                 "kv_cat_raw_s": times["cat"],
                 "max_abs_logit_diff": diff}
        print(f"{name:8} rows {rows:2}: round {round_ms['median']:8.3f} ms  "
              f"hf {hf_ms['median']:8.3f} ms  overhead {overhead:+.1%}  "
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
    print("| model | rows | round ms median (min-max) | HF ms median (min-max) | overhead "
          "| KV cat ms (share of HF) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        rm, hm = r["round_ms"], r["hf_ms"]
        print(f"| {r['model']} | {r['rows']} | {rm['median']:.3f} ({rm['min']:.3f}-"
              f"{rm['max']:.3f}) | {hm['median']:.3f} ({hm['min']:.3f}-{hm['max']:.3f}) | "
              f"{r['overhead']:+.1%} | {r['kv_cat_ms']['median']:.3f} "
              f"({r['kv_cat_ms']['median'] / hm['median']:.0%}) |")


if __name__ == "__main__":
    main()
