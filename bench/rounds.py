"""The round engine on one round of groups: ``batch`` (plain batched decoding in the round
batcher) against ``auto`` (the same, drafting where its cost model says it pays), greedy,
so both must produce the very same tokens (checked), plus ``ar`` as the serial baseline,
and ``seed`` (its rows draft ``--gamma`` tokens with ``--draft`` at every step inside the
round batcher) against ``seed-scheduler`` (the threaded SeeD scheduler, all rows in one
verify batch).

    .venv/bin/python bench/rounds.py --target smollm2 --groups 4 --n 3 --max-new-tokens 64
    python3 bench/rounds.py --device cuda --dtype bfloat16 ...   # on a GPU

GSM8K questions (chat prompts), ``--groups`` groups of ``--n`` sequences submitted together
(the trees of one round); every engine's generator is loaded once, outside the timing, and
``auto`` measures its cost curve at load as a worker does. Repetitions are interleaved (the
order reversed on odd ones); medians with min-max of committed tokens per second. Also
reports the cost model (``a + b * tokens`` seconds per target forward), target forwards,
and drafted/accepted tokens. Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seedq.decoding.config import EngineConfig  # noqa: E402
from seedq.decoding.factory import (  # noqa: E402
    LocalGenerator,
    generator_from_models,
    load_generator,
)
from seedq.decoding.loading import DTYPES, LoadedModel, wrap  # noqa: E402
from seedq.decoding.tiny import tiny_tokenizer  # noqa: E402
from seedq.decoding.types import GroupRequest, SamplingParams  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"
SAMPLES = ROOT / "seedq" / "data" / "samples" / "gsm8k_demo.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2")
    p.add_argument("--draft", default=None,
                   help="auto's and seed's draft model (auto's default: prompt lookup)")
    p.add_argument("--engines", default="ar,batch,auto",
                   help=f"ar, batch, auto, seed (in the round batcher), {SCHEDULER}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--n", type=int, default=3, help="sequences per group")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--gamma", type=int, default=4,
                   help="auto's longest draft, seed's draft length")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--data", type=Path, default=DATA if DATA.is_file() else SAMPLES)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rounds.json")
    return p.parse_args(argv)


def requests(args: argparse.Namespace) -> list[GroupRequest]:
    lines = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    return [GroupRequest((f"Solve step by step.\nQuestion: {line['question']}\nAnswer:",)
                         * args.n, params, chat=True, label="gsm8k/bench")
            for line in lines[: args.groups]]


RANDOM = "random-smollm2"  # SmolLM2-135M's shape, random weights, the in-process tokenizer
_RANDOM: dict[str, LoadedModel] = {}


SCHEDULER = "seed-scheduler"  # seed on its threaded scheduler (every row verified at once)


def load(args: argparse.Namespace, engine: str) -> LocalGenerator:
    options: dict[str, Any] = {}
    if engine == SCHEDULER:
        engine, options = "seed", {"verify_batch": args.groups * args.n, "draft_batch": args.n}
    draft = args.draft if engine in ("auto", "seed") else None
    if engine == "seed" and draft is None:
        raise SystemExit("seed needs --draft (a draft model or ngram)")
    config = EngineConfig(engine=engine, target=args.target, device=args.device,
                          dtype=args.dtype, gamma=args.gamma, draft=draft, **options)
    if args.target != RANDOM:
        return load_generator(config)
    if RANDOM not in _RANDOM:  # speed only: a random model's tokens mean nothing
        _RANDOM[RANDOM] = wrap(random_smollm2().to(device=args.device,
                                                   dtype=DTYPES[args.dtype]),
                               tiny_tokenizer(), RANDOM)
    generator = generator_from_models(config, _RANDOM[RANDOM])
    if generator.rounds is not None and generator.speculates:
        generator.rounds.calibrate(generator.runtime)
    return generator


def random_smollm2() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def run_round(generator: LocalGenerator, round_requests: list[GroupRequest]
              ) -> tuple[float, list[list[int]]]:
    """All groups at once (ar: one after another, as its lock serialises them)."""
    began = time.perf_counter()
    with ThreadPoolExecutor(len(round_requests)) as pool:
        results = list(pool.map(generator.run, round_requests))
    seconds = time.perf_counter() - began
    return seconds, [s.token_ids for r in results for s in r.sequences]


def counters(generator: LocalGenerator) -> dict[str, int]:
    stats = generator.rounds.stats if generator.rounds is not None else None
    names = ("forwards", "rows", "tokens", "drafted", "accepted", "compactions")
    return {n: int(getattr(stats, n)) if stats is not None else 0 for n in names}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    engines = args.engines.split(",")
    generators = {name: load(args, name) for name in engines}
    round_requests = requests(args)
    for generator in generators.values():  # warm-up: first forwards, allocator, kernels
        run_round(generator, round_requests[:1])
    runs: list[dict[str, Any]] = []
    outputs: dict[str, list[list[int]]] = {}
    for rep in range(args.reps):
        for name in engines if rep % 2 == 0 else list(reversed(engines)):
            before = counters(generators[name])
            seconds, tokens = run_round(generators[name], round_requests)
            after = counters(generators[name])
            outputs[name] = tokens
            committed = sum(len(t) for t in tokens)
            runs.append({"rep": rep, "engine": name, "seconds": seconds, "tokens": committed,
                         "tokens_per_s": committed / seconds,
                         **{k: after[k] - before[k] for k in after}})
            print(f"rep {rep} {name}: {committed / seconds:.1f} tok/s", flush=True)
    reference = outputs[engines[0]]
    rows = []
    for name in engines:
        mine = [r["tokens_per_s"] for r in runs if r["engine"] == name]
        last = [r for r in runs if r["engine"] == name][-1]
        rows.append({"engine": name, "median": statistics.median(mine), "min": min(mine),
                     "max": max(mine), "identical": outputs[name] == reference,
                     "forwards": last["forwards"], "drafted": last["drafted"],
                     "accepted": last["accepted"]})
    auto = generators.get("auto")
    cost = auto.rounds.speculation.cost if auto is not None and auto.rounds else None
    report = {"command": "bench/rounds.py " + " ".join(argv or sys.argv[1:]),
              "args": {k: str(v) for k, v in vars(args).items()},
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "device": device_name(args.device),
                          "threads": torch.get_num_threads()},
              "cost_model": {"a_ms": cost.a * 1e3, "b_ms_per_token": cost.b * 1e3,
                             "c_ms_per_row": cost.c * 1e3}
              if cost else None, "rows": rows, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows, rows[0]["median"]))
    if cost:
        print(f"auto cost model: {cost.a * 1e3:.2f} ms + {cost.b * 1e3:.3f} ms/token"
              f" + {cost.c * 1e3:.3f} ms/row")
    for generator in generators.values():
        generator.close()


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return platform.processor() or "cpu"


def table(rows: list[dict[str, Any]], base: float) -> str:
    lines = ["| engine | tok/s median (min-max) | vs first | identical | target fwd | "
             "drafted | accepted |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['median']:.1f} ({r['min']:.1f}-{r['max']:.1f}) | "
                     f"{r['median'] / base:.2f}x | {r['identical']} | {r['forwards']} | "
                     f"{r['drafted']} | {r['accepted']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
