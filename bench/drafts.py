"""Which offline draft could make ``seed`` pay on this machine: for each candidate, its greedy
agreement with the target (the chance a greedy draft token is accepted) and the cost of its
decode forward against the target's, both measured here.

    .venv/bin/python bench/drafts.py --rows 12 --kv 500

Agreement: the target's own greedy continuations (``--new-tokens`` of ``--prompts`` GSM8K
chat prompts) teacher-forced through each candidate; the share of positions where its
argmax is the target's. Cost: one forward of ``--rows`` rows x 1 token over ``--kv`` cached
tokens (median of ``--reps``, interleaved across candidates). Candidates: ``smollm2-int8``
(the built-in draft) and copies of the target that keep only some of its layers
(self-speculative drafting without training: the first k, the first and last k/2, every
other one), in float32 and int8, and bfloat16 copies of the target (whole, first 15 layers;
this EPYC has AVX512-BF16). Forwards are timed as the round batcher runs them (slot KV
cache, packed attention, logits of the fed tokens). From the two numbers, the speedup a
greedy chain of ``gamma`` tokens could give over plain decoding at this row count, with the
verify forward of ``1 + gamma`` tokens costed as measured: expected tokens per step
``(1 - a^(g+1)) / (1 - a)`` over ``g * draft + verify``. Writes ``bench/results/drafts.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seedq.decoding import loading  # noqa: E402
from seedq.decoding.options import DecodingOptions  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"
SAMPLES = ROOT / "seedq" / "data" / "samples" / "gsm8k_demo.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--kv", type=int, default=500)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--data", type=Path, default=DATA if DATA.is_file() else SAMPLES)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drafts.json")
    return p.parse_args(argv)


def kept_layers(model: Any, keep: list[int]) -> Any:
    """A copy of ``model`` with only the decoder layers ``keep`` (renumbered for the KV)."""
    out = copy.deepcopy(model)
    out.model.layers = torch.nn.ModuleList([out.model.layers[i] for i in keep])
    for index, layer in enumerate(out.model.layers):
        layer.self_attn.layer_idx = index
    out.config.num_hidden_layers = len(keep)
    if getattr(out.config, "layer_types", None):
        out.config.layer_types = [out.config.layer_types[i] for i in keep]
    return out.eval()


def candidates(target: Any) -> dict[str, Any]:
    layers = int(target.config.num_hidden_layers)
    shapes = {"first6": list(range(6)), "first10": list(range(10)),
              "first15": list(range(15)), "ends10": [*range(5), *range(layers - 5, layers)],
              "ends15": [*range(7), *range(layers - 8, layers)],
              "every-other": list(range(0, layers, 2))}
    out = {"smollm2-int8": loading.quantize_int8(copy.deepcopy(target))}
    for name, keep in shapes.items():
        out[name] = kept_layers(target, keep)
    for name in ("ends10", "ends15"):
        out[f"{name}-int8"] = loading.quantize_int8(copy.deepcopy(out[name]))
    out["smollm2-bf16"] = copy.deepcopy(target).to(torch.bfloat16)  # the target, bfloat16
    out["first15-bf16"] = kept_layers(target, shapes["first15"]).to(torch.bfloat16)
    return out


@torch.inference_mode()
def continuations(args: argparse.Namespace, target: Any, tokenizer: Any
                  ) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(prompt length, prompt + greedy continuation ids [1, T], target argmax [new])."""
    lines = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    out = []
    for line in lines[: args.prompts]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": line["question"]}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt").input_ids
        full = target.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)
        n = ids.shape[1]
        out.append((n, full, target(full).logits[0, n - 1 : -1].argmax(-1)))
    return out


@torch.inference_mode()
def agreement(model: Any, texts: list[tuple[int, torch.Tensor, torch.Tensor]]) -> float:
    hits = total = 0
    for n, full, reference in texts:
        predicted = model(full).logits[0, n - 1 : -1].argmax(-1)
        hits += int((predicted == reference).sum())
        total += reference.numel()
    return hits / total


class Timer:
    """One model's forwards as the round batcher runs them: ``rows`` rows of ``kv`` cached
    tokens in a slot KV cache (written in place), packed grouped-query attention, logits of
    the fed tokens only. Nothing is committed, so every forward starts from the same lengths
    (its new entries are scratch that the next one overwrites)."""

    def __init__(self, model: Any, tokenizer: Any, rows: int, kv: int) -> None:
        from transformers import DynamicCache

        from seedq.decoding.slot_cache import SlotCache

        self.model = loading.wrap(model, tokenizer, "timed", "packed").model  # packed_sdpa
        self.rows, self.kv = rows, kv
        self.generator = torch.Generator().manual_seed(0)
        cache = DynamicCache()
        with torch.inference_mode():
            self.model.forward(self.ids(kv)[:1], cache)
        dtype = next(model.parameters()).dtype  # the embedding's: its KV's (int8: float32)
        self.slots = SlotCache(model.config, rows, kv + 8, dtype, self.model.device)
        for _ in range(rows):
            self.slots.load(self.slots.allocate(), cache)

    def ids(self, width: int) -> torch.Tensor:
        return torch.randint(0, 1000, (self.rows, width), generator=self.generator)

    @torch.inference_mode()
    def seconds(self, width: int = 1) -> float:
        ids = self.ids(width)
        began = time.perf_counter()
        step = self.slots.prepare([width] * self.rows)
        self.model.forward(ids, self.slots, step.attention_mask, step.position_ids,  # type: ignore[arg-type]
                           keep=width)
        return time.perf_counter() - began


def best_speedup(accept: float, draft: float, verify: dict[int, float]) -> tuple[int, float]:
    """The best chain length g and its speedup: expected tokens per step over the step's
    cost (g draft forwards + one verify of 1 + g tokens), in target decode forwards."""
    best = (0, 1.0)
    for gamma, cost in verify.items():
        if gamma == 0:
            continue
        tokens = sum(accept ** i for i in range(gamma + 1))
        speedup = tokens / (gamma * draft + cost)
        if speedup > best[1]:
            best = (gamma, speedup)
    return best


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    path = loading.resolve("smollm2", DecodingOptions.from_env().model_cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    target = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = continuations(args, target, tokenizer)
    models = {"target": target, **candidates(target)}
    timers = {name: Timer(model, tokenizer, args.rows, args.kv) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    verify: dict[int, list[float]] = {g: [] for g in range(5)}
    for rep in range(args.reps):  # interleaved, the order reversed on odd repetitions
        for name in models if rep % 2 == 0 else reversed(list(models)):
            times[name].append(timers[name].seconds())
        for gamma in verify:
            verify[gamma].append(timers["target"].seconds(1 + gamma))
    base = statistics.median(times["target"])
    verify_cost = {g: statistics.median(v) / base for g, v in verify.items()}
    rows = []
    for name, model in models.items():
        if name == "target":
            continue
        accept, cost = agreement(model, texts), statistics.median(times[name]) / base
        gamma, speedup = best_speedup(accept, cost, verify_cost)
        rows.append({"draft": name, "agreement": accept, "cost": cost,
                     "ms": 1000 * statistics.median(times[name]), "best_gamma": gamma,
                     "best_speedup": speedup})
        print(f"| {name} | {accept:.2f} | {cost:.2f} | {gamma or '-'} | {speedup:.2f}x |",
              flush=True)
    report = {"command": "bench/drafts.py " + " ".join(argv or sys.argv[1:]),
              "args": {k: str(v) for k, v in vars(args).items()},
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()},
              "target_ms": 1000 * base, "verify_cost": verify_cost, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"target {1000 * base:.1f} ms; verify 1+g tokens / decode: "
          + ", ".join(f"g={g}: {c:.2f}" for g, c in verify_cost.items()))


if __name__ == "__main__":
    main()
