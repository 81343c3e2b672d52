"""A prefill chunk inside the rows' forward (packed) against the chunk and the rows' forward
run apart, on the target alone.

For each row count and chunk size: ``rows`` sequences with ``--kv`` positions in a slot
cache feed one token each, and a joining sequence feeds ``chunk`` prompt tokens on top of
``--kv - chunk`` cached ones:

- ``apart``: the rows' decode forward (``SlotCache``, as the round batcher runs it), then the
  chunk's own forward (``forward_chain`` on its ``DynamicCache``): ``SEEDQ_PREFILL_MIX=0``;
- ``mixed``: one packed forward of both (:func:`seedq.decoding.packed.forward_packed`), the
  default;
- ``rows``: the rows' decode forward alone (what the rows pay without a prefill).

Every forward starts from the same lengths (the chain is cropped back outside the timed
region; the slot rows commit nothing). Repetitions are interleaved (apart, mixed, rows, chunk,
then reversed); each times ``--forwards`` forwards and keeps the mean; medians (min-max).
``saved`` = 1 - mixed / apart; ``rows_extra`` = (mixed - chunk alone) / rows alone: what
the rows add to a chunk's forward when they ride in it.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/prefill_mix.py --model smollm2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.overhead import load_model, prefill  # noqa: E402
from seedq.decoding import kvcache  # noqa: E402
from seedq.decoding.models import LanguageModel  # noqa: E402
from seedq.decoding.packed import Chain, forward_packed  # noqa: E402
from seedq.decoding.slot_cache import SlotCache  # noqa: E402


def systems(model: LanguageModel, rows: int, chunk: int, kv: int
            ) -> dict[str, Callable[[], None]]:
    """The three timed callables over one prefilled sequence of ``kv`` positions."""
    cache, token = prefill(model, kv)
    slots = SlotCache(model.model.config, rows, kv + 64, model.dtype, model.device)
    for _ in range(rows):
        slots.load(slots.allocate(), cache)
    joining = kvcache.clone(cache)
    kvcache.crop(joining, kv - chunk)
    generator = torch.Generator().manual_seed(1)
    piece = torch.randint(0, model.vocab_size, (chunk,), generator=generator).tolist()
    ids = torch.full((rows, 1), token, dtype=torch.long)

    def decode() -> None:
        step = slots.prepare([1] * rows)
        model.forward(ids, slots, step.attention_mask, step.position_ids, keep=1)

    def apart() -> None:
        decode()
        model.forward_chain(piece, joining, keep=1)
        kvcache.crop(joining, kv - chunk)

    def mixed() -> None:
        forward_packed(model, [Chain(piece, joining)], slots, [[token]] * rows)
        kvcache.crop(joining, kv - chunk)

    def alone() -> None:
        model.forward_chain(piece, joining, keep=1)
        kvcache.crop(joining, kv - chunk)

    return {"apart": apart, "mixed": mixed, "rows": decode, "chunk": alone}


def timed(run: Callable[[], None], forwards: int) -> float:
    run()  # warm
    began = time.perf_counter()
    for _ in range(forwards):
        run()
    return (time.perf_counter() - began) / forwards * 1000


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench(model: LanguageModel, rows: int, chunk: int, kv: int, reps: int, forwards: int
          ) -> dict[str, Any]:
    runs = systems(model, rows, chunk, kv)
    ms: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for rep in range(reps):
            order = list(runs) if rep % 2 == 0 else list(reversed(runs))
            for name in order:
                ms[name].append(timed(runs[name], forwards))
    out = {name: summary(values) for name, values in ms.items()}
    apart, mixed = out["apart"]["median"], out["mixed"]["median"]
    return {"rows": rows, "chunk": chunk, "kv": kv, "ms": out, "saved": 1 - mixed / apart,
            "rows_extra": (mixed - out["chunk"]["median"]) / out["rows"]["median"]}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| rows | chunk | apart ms | mixed ms | rows alone ms | chunk alone ms | saved | "
             "rows' extra in a mixed forward |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ms = r["ms"]
        cells = [f"{ms[k]['median']:.1f} ({ms[k]['min']:.1f}-{ms[k]['max']:.1f})"
                 for k in ("apart", "mixed", "rows", "chunk")]
        lines.append(f"| {r['rows']} | {r['chunk']} | {' | '.join(cells)} | "
                     f"{r['saved']:.0%} | {r['rows_extra']:.0%} of their forward |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rows", default="4,12")
    parser.add_argument("--chunks", default="16,64,256")
    parser.add_argument("--kv", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--forwards", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prefill_mix.json")
    args = parser.parse_args()
    model = load_model(args.model).model
    results = [bench(model, rows, chunk, args.kv, args.reps, args.forwards)
               for rows in map(int, args.rows.split(","))
               for chunk in map(int, args.chunks.split(","))]
    report = {"command": "bench/prefill_mix.py " + " ".join(sys.argv[1:]),
              "model": args.model, "threads": torch.get_num_threads(),
              "machine": platform.platform(), "torch": torch.__version__, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
