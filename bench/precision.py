"""How often does greedy speculative output differ from ``ar`` in reduced precision?

In float32 every engine is token-identical to ``ar`` (tested). In half precision a batched or
tree-masked forward rounds differently from a one-token forward, so near-ties between the top
two logits can flip and the sequences diverge from there on. This measures, per engine and
dtype, the share of sequences identical to ``ar`` and where the first divergence falls.

    python bench/precision.py --target tiny --draft tiny-draft --dtypes float32,bfloat16
    python bench/precision.py --target smollm2 --draft smollm2 --n 8 --device cuda \
        --dtypes float32,bfloat16,float16
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engines import load_prompts  # noqa: E402
from seedq.decoding.config import EngineConfig  # noqa: E402
from seedq.decoding.factory import generator_from_models, load_model  # noqa: E402
from seedq.decoding.options import DecodingOptions  # noqa: E402
from seedq.decoding.types import GroupRequest, SamplingParams  # noqa: E402

VARIANTS: list[dict[str, Any]] = [
    {"engine": "batch"},
    {"engine": "sd"},
    {"engine": "mcsd", "k_config": (2, 1, 1)},
    {"engine": "seed", "verify_batch": 4, "draft_batch": 4, "draft_threads": 1},
]


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def measure(args: argparse.Namespace, dtype: str) -> list[dict[str, Any]]:
    base = EngineConfig(target=args.target, device=args.device, dtype=dtype, draft=args.draft)
    decoding = DecodingOptions.from_env()
    target = load_model(args.target, base, decoding)
    draft = target if args.draft == args.target else load_model(args.draft, base, decoding)
    request = GroupRequest(tuple(load_prompts(args.n)),
                           SamplingParams(max_new_tokens=args.max_new_tokens), chat=True)
    reference = generator_from_models(replace(base, engine="ar"), target).run(request)
    rows = []
    for options in VARIANTS:
        generator = generator_from_models(replace(base, **options), target, draft,
                                          options=decoding)
        result = generator.run(request)
        generator.close()
        splits = [first_divergence(a.token_ids, b.token_ids)
                  for a, b in zip(reference.sequences, result.sequences, strict=True)]
        diverged = [s for s in splits if s is not None]
        rows.append({
            "dtype": dtype, "engine": options["engine"], "options": str(options),
            "sequences": len(splits), "identical": len(splits) - len(diverged),
            "identical_share": (len(splits) - len(diverged)) / len(splits),
            "first_divergence": diverged,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="tiny")
    parser.add_argument("--draft", default="tiny-draft")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision.json"))
    args = parser.parse_args()
    rows = [row for dtype in args.dtypes.split(",") for row in measure(args, dtype)]
    print(f"{'dtype':<10}{'engine':<8}{'identical':>10}  first divergence (token index)")
    for r in rows:
        print(f"{r['dtype']:<10}{r['engine']:<8}{r['identical']:>5}/{r['sequences']:<4}"
              f"  {r['first_divergence']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"target": args.target, "draft": args.draft, "device": args.device,
                               "cuda": torch.cuda.get_device_name(0)
                               if torch.cuda.is_available() else None, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
