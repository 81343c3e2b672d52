"""Trees per minute of `seedq run` (the same in-process path: submit a file, one burst
worker) per engine and round size (trees in flight per worker).

    .venv/bin/python bench/service.py --target smollm2 --draft smollm2-int8 --lines 6 \
        --engines ar,batch,batch-group,seed --round-sizes 1,6,12 --reps 3

``batch`` runs through the round batcher (every tree of the round shares each target
forward); ``batch-group`` is the old per-group batch engine (``SEEDQ_ROUND_BATCHER=0``),
``seed-scheduler`` seed on its threaded SeeD scheduler (the same), ``seed-ngram`` seed in the
round drafting by prompt lookup, ``seed-int8`` / ``seed-bf16`` seed with that draft whatever
``--draft`` says (``seed-bf16-g2``, ``-g3``, ``-g5``, ``-g6``, ``-g8``: chains of that length
instead of 4), ``auto-bf16`` auto with the bf16 draft model (its cost model picks each
step's draft length, 0 included) instead of prompt lookup; ``batch-nomix``,
``auto-nomix``, ``seed-nomix`` the engine with ``SEEDQ_PREFILL_MIX=0`` (a joining group's
prefill chunks run alone, between the rows' forwards, instead of inside them).
Models are loaded once per engine, outside the timing; every run starts with an empty
prefix cache and is timed from submit to the last tree stored. Repetitions are interleaved
(every configuration once per repetition, the order reversed on odd repetitions); the table
gives medians with min-max, and the prefix-cache hit rate (prompt tokens whose target KV
came from the prefix cache / all prompt tokens, from the trees' metrics; ``batch-group``
does not record it). Writes bench/results/service.json. Uses the configured Redis when it
answers (else a private one) and a temporary SQLite database.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seedq.decoding.factory import LocalGenerator, load_generator  # noqa: E402
from seedq.decoding.prefix_cache import PrefixCaches  # noqa: E402
from seedq.decoding.registry import SPECULATIVE  # noqa: E402
from seedq.reasoning.params import SearchParams  # noqa: E402
from seedq.service import oneshot  # noqa: E402
from seedq.settings import Settings  # noqa: E402

log = logging.getLogger("bench.service")
DATA = ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"
SAMPLES = ROOT / "seedq" / "data" / "samples" / "gsm8k_demo.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2")
    p.add_argument("--draft", default="smollm2-int8")
    p.add_argument("--engines", default="ar,batch,batch-group,seed",
                   help="ar, batch, batch-group (per-group batch), auto, sd, mcsd, seed "
                        "(in the round, --draft), seed-ngram (in the round, prompt lookup), "
                        "seed-scheduler (the threaded SeeD scheduler)")
    p.add_argument("--round-sizes", default="1,6,12")
    p.add_argument("--configs", default="",
                   help="engine:round_size pairs instead of engines x round sizes, "
                        "e.g. ar:1,batch:6,auto:6")
    p.add_argument("--lines", type=int, default=6, help="GSM8K lines per run")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--data", type=Path, default=DATA if DATA.is_file() else SAMPLES)
    p.add_argument("--breadth", type=int, default=3)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--eval-max-new-tokens", type=int, default=12)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "service.json")
    return p.parse_args(argv)


@dataclass(frozen=True)
class Variant:
    """A benchmark name that is not an engine name: its engine, draft (None: ``--draft`` for
    the speculative engines) and the decoding options it changes."""

    engine: str
    draft: str | None = None
    round_batcher: bool = True  # False: outside the round (SEEDQ_ROUND_BATCHER=0)
    prefill_mix: bool = True  # False: prefill chunks between the rows' forwards
    gamma: int | None = None  # the draft chain's length (None: the engine's default, 4)


VARIANTS = {"batch-group": Variant("batch", round_batcher=False),
            "seed-scheduler": Variant("seed", round_batcher=False),
            "seed-ngram": Variant("seed", "ngram"),
            "seed-int8": Variant("seed", "smollm2-int8"),
            "seed-bf16": Variant("seed", "smollm2-bf16"),
            "auto-bf16": Variant("auto", "smollm2-bf16"),
            **{f"seed-bf16-g{g}": Variant("seed", "smollm2-bf16", gamma=g)
               for g in (2, 3, 5, 6, 8)},
            **{f"{engine}-nomix": Variant(engine, prefill_mix=False)
               for engine in ("batch", "auto", "seed")}}


def load_engine(args: argparse.Namespace, name: str) -> LocalGenerator:
    """The generator for one benchmark engine, loaded once (its settings as a worker's)."""
    variant = VARIANTS.get(name, Variant(name))
    draft = args.draft if variant.engine in SPECULATIVE else None  # auto: prompt lookup
    settings = Settings.from_env().with_overrides(
        engine=variant.engine, target_model=args.target, draft_model=variant.draft or draft,
    )
    options = replace(settings.decoding, round_batcher=variant.round_batcher,
                      prefill_mix=variant.prefill_mix)
    config = settings.engine_config()
    if variant.gamma is not None:
        config = replace(config, gamma=variant.gamma)
    return load_generator(config, options)


def run_once(args: argparse.Namespace, generator: LocalGenerator, round_size: int,
             database: str) -> dict[str, Any]:
    """One `seedq run` of the file; trees/min and the prefix hit rate of its trees."""
    settings = Settings.from_env().with_overrides(
        engine=generator.config.engine, target_model=args.target,
        draft_model=generator.config.draft, database_url=database,
    )
    defaults = SearchParams().updated({
        "breadth": args.breadth, "depth": args.depth, "beam": 1,
        "max_new_tokens": args.max_new_tokens,
        "eval_max_new_tokens": args.eval_max_new_tokens, "temperature": args.temperature,
    })
    plan = oneshot.RunPlan(settings, args.data, "gsm8k", defaults, args.lines,
                           round_size=round_size)
    limit = generator.runtime.options.prefix_cache_bytes
    generator.runtime.prefix = PrefixCaches.with_limit(limit)  # every run starts cold
    before = round_counters(generator)
    began = time.perf_counter()
    outcome = oneshot.run_file(plan, lambda: generator)
    seconds = time.perf_counter() - began
    counters = {k: v - before[k] for k, v in round_counters(generator).items()}
    prompt = reused = 0
    for record in outcome.results:
        total = (record.get("metrics") or {}).get("total") or {}
        prompt += int(total.get("prompt_tokens", 0))
        reused += int(total.get("reused_prompt_tokens", 0))
    trees = len(outcome.results)
    return {"trees": trees, "errors": len(outcome.errors), "seconds": seconds,
            "trees_per_min": 60.0 * trees / seconds if seconds else 0.0,
            "prefix_hit_rate": reused / prompt if prompt else None, "round": counters}


def round_counters(generator: LocalGenerator) -> dict[str, int]:
    """The round batcher's running counters (forwards, rows, tokens, drafted, accepted)."""
    stats = generator.rounds.stats if generator.rounds is not None else None
    names = ("forwards", "rows", "tokens", "drafted", "accepted", "mixed_prefills",
             "mixed_prefill_tokens", "mixed_draft_prefills",
             "draftless_groups")
    return {name: int(getattr(stats, name)) if stats is not None else 0 for name in names}


def schedule(configs: list[tuple[str, int]], reps: int) -> list[tuple[int, str, int]]:
    """Every configuration once per repetition, reversed on odd repetitions (A B, B A)."""
    order = []
    for rep in range(reps):
        for engine, size in configs if rep % 2 == 0 else reversed(configs):
            order.append((rep, engine, size))
    return order


def summarize(runs: list[dict[str, Any]], configs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    rows = []
    for engine, size in configs:
        mine = [r for r in runs if r["engine"] == engine and r["round_size"] == size]
        rates = [r["trees_per_min"] for r in mine]
        hits = [r["prefix_hit_rate"] for r in mine if r["prefix_hit_rate"] is not None]
        base = [r["trees_per_min"] for r in runs if r["engine"] == engine and r["round_size"] == 1]
        rows.append({
            "engine": engine, "round_size": size, "runs": len(mine),
            "trees_per_min_median": statistics.median(rates), "min": min(rates),
            "max": max(rates),
            "over_round_1": statistics.median(rates) / statistics.median(base) if base else None,
            "prefix_hit_rate": statistics.median(hits) if hits else None,
            "errors": sum(r["errors"] for r in mine),
        })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| engine | round size | trees/min median (min-max) | vs round size 1 | "
             "prefix hit rate | errors |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['over_round_1']:.2f}x" if r["over_round_1"] else "-"
        hit = f"{r['prefix_hit_rate']:.0%}" if r["prefix_hit_rate"] is not None else "-"
        lines.append(f"| {r['engine']} | {r['round_size']} | {r['trees_per_min_median']:.2f} "
                     f"({r['min']:.2f}-{r['max']:.2f}) | {ratio} | {hit} | {r['errors']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    if args.configs:
        configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    else:
        configs = [(e, int(s)) for e in args.engines.split(",")
                   for s in args.round_sizes.split(",")]
    engines = list(dict.fromkeys(engine for engine, _ in configs))
    generators = {name: load_engine(args, name) for name in engines}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        database = f"sqlite:///{Path(tmp) / 'bench.db'}"
        for rep, engine, size in schedule(configs, args.reps):
            run = run_once(args, generators[engine], size, database)
            runs.append({"rep": rep, "engine": engine, "round_size": size, **run})
            log.warning("rep %d %s round %d: %.2f trees/min", rep, engine, size,
                        run["trees_per_min"])
    for generator in generators.values():
        generator.close()
    rows = summarize(runs, configs)
    report = {"args": {k: str(v) for k, v in vars(args).items()},
              "command": "bench/service.py " + " ".join(argv or sys.argv[1:]),
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "rows": rows, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
