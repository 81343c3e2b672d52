"""Reasoning trees on every engine: the same specs (inputs, parameters, seeds) per engine.

    .venv/bin/python bench/trees.py --target smollm2 --draft smollm2-int8 --limit 2

Prints a table per engine and task, and writes every tree's numbers to
bench/results/trees.json: success, nodes, wall seconds per tree, the split between thought
generation and evaluation, speedup over ``ar`` (same trees, same run), acceptance and the
prefix-cache hit rate (prompt tokens whose KV the target reused / all prompt tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seedq.decoding.config import ENGINES, EngineConfig  # noqa: E402
from seedq.decoding.factory import load_generator  # noqa: E402
from seedq.decoding.types import GroupGenerator, GroupRequest, SamplingParams  # noqa: E402
from seedq.reasoning import JobSpec, TreeResult, parse_job, run_tree  # noqa: E402
from seedq.reasoning.tasks import get_task  # noqa: E402

TASKS = ("gsm8k", "creative_writing", "blocksworld")
SAMPLES = ROOT / "seedq" / "data" / "samples"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2")
    p.add_argument("--draft", default="smollm2-int8")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--data", type=Path, default=SAMPLES,
                   help="folder with <task>_demo.jsonl or <task>.jsonl files")
    p.add_argument("--limit", type=int, default=2, help="inputs per task")
    p.add_argument("--breadth", type=int, default=3)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--search", default="bfs")
    p.add_argument("--evaluator", default="value")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--eval-max-new-tokens", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--k-config", default="2,1,1", help="tree draft of mcsd (and seed if set)")
    p.add_argument("--seed-tree", action="store_true", help="seed drafts the k-config tree")
    p.add_argument("--verify-batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "trees.json")
    return p.parse_args(argv)


def task_file(folder: Path, task: str) -> Path:
    for name in (f"{task}_demo.jsonl", f"{task}.jsonl", f"{task}_test.jsonl"):
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(f"no data file for {task} in {folder}")


def load_specs(args: argparse.Namespace) -> list[JobSpec]:
    search = {"breadth": args.breadth, "depth": args.depth, "beam": args.beam,
              "search": args.search, "evaluator": args.evaluator,
              "max_new_tokens": args.max_new_tokens,
              "eval_max_new_tokens": args.eval_max_new_tokens, "temperature": args.temperature}
    specs = []
    for task in args.tasks.split(","):
        with task_file(args.data, task).open(encoding="utf-8") as handle:
            lines = [json.loads(raw) for raw in handle if raw.strip()][: args.limit]
        for line in lines:
            if task == "blocksworld":  # the plan length bounds the depth, as in RAP
                search_here = {**search, "depth": max(args.depth, line.get("num_steps", 0))}
            else:
                search_here = search
            specs.append(parse_job({**line, "search": search_here}, default_task=task))
    return specs


def engine_config(args: argparse.Namespace, engine: str) -> EngineConfig:
    k_config = tuple(int(k) for k in args.k_config.split(",")) if args.k_config else ()
    speculative = engine in ("sd", "mcsd", "seed")
    return EngineConfig(
        engine=engine, target=args.target, draft=args.draft if speculative else None,
        device=args.device, dtype=args.dtype, gamma=args.gamma,
        k_config=k_config if engine == "mcsd" or (engine == "seed" and args.seed_tree) else (),
        verify_batch=args.verify_batch,
    )


async def warm_up(generator: GroupGenerator, spec: JobSpec) -> None:
    """One short group on a real-sized prompt, so first-call costs stay out of the timings."""
    prompt = get_task(spec.task).bind(spec.input).thought_prompt(())
    request = GroupRequest(prompts=(prompt,) * 2, chat=True,
                           params=SamplingParams(max_new_tokens=4))
    await generator.generate(request)


def row(engine: str, result: TreeResult) -> dict[str, Any]:
    m = result.metrics
    phases = m["phases"]
    return {
        "engine": engine, "task": result.task, "custom_id": result.custom_id,
        "correct": result.correct, "answer": result.answer, "nodes": m["nodes"],
        "failed_nodes": m["failed_nodes"], "wall_seconds": m["wall_seconds"],
        "thought_seconds": phases["thought"]["seconds"],
        "evaluation_seconds": phases["evaluation"]["seconds"],
        "final_seconds": phases["solution"]["seconds"] + phases["judge"]["seconds"],
        "new_tokens": m["total"]["new_tokens"], "drafted_tokens": m["total"]["drafted_tokens"],
        "accepted_tokens": m["total"]["accepted_tokens"],
        "prompt_tokens": m["total"].get("prompt_tokens", 0),
        "reused_prompt_tokens": m["total"].get("reused_prompt_tokens", 0),
        "thoughts": [n.thought for n in result.tree.nodes if n.kind != "root"],
    }


async def run_engine(args: argparse.Namespace, engine: str, specs: list[JobSpec]
                     ) -> list[dict[str, Any]]:
    started = time.perf_counter()
    generator = load_generator(engine_config(args, engine))
    print(f"[{engine}] loaded in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    rows = []
    try:
        await warm_up(generator, specs[0])
        for spec in specs:
            result = await run_tree(spec, generator)
            rows.append(row(engine, result))
            print(f"[{engine}] {spec.custom_id}: correct={result.correct} "
                  f"{result.metrics['wall_seconds']:.1f}s", file=sys.stderr)
    finally:
        generator.close()
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per engine and task; speedup = ar's wall time / this engine's on the same trees."""
    baseline = {(r["task"], r["custom_id"]): r for r in rows if r["engine"] == "ar"}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["engine"], r["task"]), []).append(r)
    return [_summary(engine, task, items, baseline) for (engine, task), items in groups.items()]


def _summary(engine: str, task: str, items: list[dict[str, Any]],
             baseline: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    n = len(items)
    wall = sum(r["wall_seconds"] for r in items)
    base = [baseline[(task, r["custom_id"])] for r in items if (task, r["custom_id"]) in baseline]
    base_wall = sum(b["wall_seconds"] for b in base) if len(base) == n else None
    drafted = sum(r["drafted_tokens"] for r in items)
    scored = [r["correct"] for r in items if r["correct"] is not None]
    same = sum(b["thoughts"] == r["thoughts"] for r, b in zip(items, base, strict=False))
    prompt = sum(r["prompt_tokens"] for r in items)
    return {
        "engine": engine, "task": task, "trees": n,
        "success": sum(scored) / len(scored) if scored else None,
        "nodes": sum(r["nodes"] for r in items) / n,
        "wall_per_tree": wall / n,
        "thought_per_tree": sum(r["thought_seconds"] for r in items) / n,
        "evaluation_per_tree": sum(r["evaluation_seconds"] for r in items) / n,
        "speedup_vs_ar": base_wall / wall if base_wall and wall else None,
        "acceptance": sum(r["accepted_tokens"] for r in items) / drafted if drafted else None,
        "same_trees_as_ar": same / n if base_wall is not None else None,
        # prompt tokens whose KV came from the target's prefix cache / all prompt tokens
        "prefix_hit_rate": sum(r["reused_prompt_tokens"] for r in items) / prompt
        if prompt else None,
    }


def table(summary: list[dict[str, Any]]) -> str:
    head = ("engine", "task", "trees", "success", "nodes", "s/tree", "thought s", "eval s",
            "speedup", "accept", "same", "prefix hit")
    keys = ("engine", "task", "trees", "success", "nodes", "wall_per_tree", "thought_per_tree",
            "evaluation_per_tree", "speedup_vs_ar", "acceptance", "same_trees_as_ar",
            "prefix_hit_rate")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for s in summary:
        cells = [s[k] if not isinstance(s[k], float) else f"{s[k]:.2f}" for k in keys]
        lines.append(" | ".join("-" if c is None else str(c) for c in cells))
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    specs = load_specs(args)
    rows: list[dict[str, Any]] = []
    for engine in args.engines.split(","):
        rows += await run_engine(args, engine, specs)
    summary = summarize(rows)
    print(table(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "summary": summary, "trees": rows,
    }
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
