"""The prefix-cache hit rate of GSM8K trees, measured on the real `seedq run` path.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/prefix_hits.py --lines 3

Runs ``--lines`` GSM8K lines (breadth 3, depth 2, the settings of bench/service.py) through
`seedq run` in process with engine ``batch`` (the round batcher) on SmolLM2, starting with an
empty prefix cache, and prints per phase the prompt tokens, the prompt tokens whose target
KV came from the prefix cache (``reused_prompt_tokens`` of the trees' metrics) and the hit
rate (reused / prompt tokens, as bench/service.py computes it).

It also records every group's prompts (as the engine tokenizes them) and outputs, and
replays them in the order the groups started under three insertion policies, to show what
can match at all: ``shared`` (only a group's common prompt prefix is stored: before issue 8),
``prompts`` (every whole prompt is stored too, and each prompt starts from its own longest
stored prefix when that is longer than its group's shared prefix: ``store_prompts`` and
``prefill_group``) and ``prompts+outputs`` (also prompt + generated tokens when a group
ends). A prompt's last token is always fed, so at most ``len - 1`` of its tokens can match.
``--save``/``--replay`` keep the recorded groups, to replay other policies without a model.

Measured (6 lines, SmolLM2): 79.3% under all three policies. GSM8K prompts are chat
prompts: a child's thought prompt shares its parent's only up to "Question 1: <question>"
(the parent's step follows there, while the parent generated it after the assistant header),
and value prompts differ from the first step on ("(none)" vs the steps so far), so no later
prompt extends an earlier whole prompt or prompt + output.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service import DATA, SAMPLES, load_engine  # noqa: E402
from seedq.decoding.engines.base import shared_prefix_length  # noqa: E402
from seedq.decoding.factory import LocalGenerator  # noqa: E402
from seedq.decoding.prefix_cache import PrefixCaches, common_length  # noqa: E402
from seedq.decoding.types import GroupRequest, GroupResult  # noqa: E402
from seedq.reasoning.metrics import PHASES  # noqa: E402
from seedq.reasoning.params import SearchParams  # noqa: E402
from seedq.service import oneshot  # noqa: E402
from seedq.settings import Settings  # noqa: E402

POLICIES = ("shared", "prompts", "prompts+outputs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="smollm2")
    p.add_argument("--engine", default="batch", help="ar, batch, batch-group, sd, mcsd, seed")
    p.add_argument("--draft", default="smollm2-int8")
    p.add_argument("--lines", type=int, default=3)
    p.add_argument("--round-size", type=int, default=1)
    p.add_argument("--data", type=Path, default=DATA if DATA.is_file() else SAMPLES)
    p.add_argument("--breadth", type=int, default=3)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--eval-max-new-tokens", type=int, default=12)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--save", type=Path, help="write the recorded groups (JSON) here")
    p.add_argument("--replay", type=Path,
                   help="only replay groups recorded by --save (no model is run)")
    return p.parse_args(argv)


class Recorder:
    """Wraps a generator's ``generate``: every group's prompt token ids (as the engines
    tokenize them) when it starts, and its output token ids when it ends."""

    def __init__(self, generator: LocalGenerator) -> None:
        self.generator = generator
        self.events: list[tuple[str, int, list[list[int]]]] = []
        self._inner = generator.generate
        self._count = 0
        generator.generate = self.generate  # type: ignore[method-assign]

    async def generate(self, request: GroupRequest) -> GroupResult:
        group, self._count = self._count, self._count + 1
        tokenizer = self.generator.runtime.tokenizer
        self.events.append(("start", group, [tokenizer.encode(p, request.chat)
                                             for p in request.prompts]))
        result = await self._inner(request)
        self.events.append(("end", group, [list(s.token_ids) for s in result.sequences]))
        return result


def _longest(stored: list[list[int]], tokens: Sequence[int]) -> int:
    return max((common_length(s, tokens) for s in stored), default=0)


def replay(events: list[tuple[str, int, list[list[int]]]], policy: str) -> tuple[int, int, int]:
    """(prompt tokens, reusable tokens, encoded tokens) of the recorded groups under one
    insertion policy, matched as the engines do (:func:`prefill_group`): a prompt stored
    further than its group's shared prefix starts from it, the others share the prefix,
    encoded once per group (so ``encoded`` counts what the model really runs)."""
    stored: list[list[int]] = []
    prompts: dict[int, list[list[int]]] = {}
    total = reused = encoded = 0
    for kind, group, ids in events:
        if kind == "start":
            prompts[group] = ids
            shared = shared_prefix_length(ids)
            base = _longest(stored, ids[0][:shared])
            own = [_longest(stored, p[:-1]) if policy != "shared" else 0 for p in ids]
            starts = [n if n > shared else shared for n in own]
            for p, n, start in zip(ids, own, starts, strict=True):
                total += len(p)
                reused += n if n > shared else base
                encoded += len(p) - start
            if any(n <= shared for n in own):
                encoded += shared - base  # the group's shared prefix, once
            stored.append(ids[0][:shared])
            if policy != "shared":
                stored.extend(ids)
        elif policy == "prompts+outputs":
            stored.extend(p + out for p, out in zip(prompts[group], ids, strict=True))
    return total, reused, encoded


def run(args: argparse.Namespace) -> dict[str, Any]:
    generator = load_engine(argparse.Namespace(target=args.target, draft=args.draft),
                            args.engine)
    recorder = Recorder(generator)
    generator.runtime.prefix = PrefixCaches.with_limit(
        generator.runtime.options.prefix_cache_bytes)  # cold
    defaults = SearchParams().updated({
        "breadth": args.breadth, "depth": args.depth, "beam": 1,
        "max_new_tokens": args.max_new_tokens,
        "eval_max_new_tokens": args.eval_max_new_tokens, "temperature": args.temperature,
    })
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env().with_overrides(
            engine=generator.config.engine, target_model=args.target,
            draft_model=generator.config.draft, database_url=f"sqlite:///{Path(tmp) / 'b.db'}",
        )
        plan = oneshot.RunPlan(settings, args.data, "gsm8k", defaults, args.lines,
                               round_size=args.round_size)
        began = time.perf_counter()
        outcome = oneshot.run_file(plan, lambda: generator)
        seconds = time.perf_counter() - began
    generator.close()
    phases = {phase: [0, 0] for phase in PHASES}
    for record in outcome.results:
        for phase, stats in ((record.get("metrics") or {}).get("phases") or {}).items():
            phases[phase][0] += int(stats.get("prompt_tokens", 0))
            phases[phase][1] += int(stats.get("reused_prompt_tokens", 0))
    stats = generator.runtime.prefix.target.stats()
    return {"trees": len(outcome.results), "errors": len(outcome.errors), "seconds": seconds,
            "phases": phases, "events": recorder.events,
            "cache": {"bytes": stats.bytes, "nodes": stats.nodes, "evictions": stats.evictions}}


def rate(reused: int, total: int) -> str:
    return f"{reused / total:.1%}" if total else "-"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    if args.replay:
        events = [tuple(e) for e in json.loads(args.replay.read_text())]
    else:
        out = run(args)
        events = out["events"]
        if args.save:
            args.save.write_text(json.dumps(events))
        cache = out["cache"]
        print(f"{out['trees']} trees ({out['errors']} errors) in {out['seconds']:.1f} s, "
              f"engine {args.engine}, round size {args.round_size}; target prefix cache: "
              f"{cache['bytes'] / 2**20:.1f} MiB in {cache['nodes']} nodes, "
              f"{cache['evictions']} evictions")
        print("\nmeasured (the trees' metrics)\n| phase | prompt tokens | reused | hit rate |")
        print("|---|---|---|---|")
        prompt = reused = 0
        for phase, (p, r) in out["phases"].items():
            if p:
                print(f"| {phase} | {p} | {r} | {rate(r, p)} |")
            prompt, reused = prompt + p, reused + r
        print(f"| total | {prompt} | {reused} | {rate(reused, prompt)} |")
    print("\nreplayed (what could match, the groups in start order; 'encoded': prompt tokens "
          "the model runs, a group's shared prefix once)\n| policy | prompt tokens | reusable "
          "| hit rate | encoded |\n|---|---|---|---|---|")
    for policy in POLICIES:
        total, hit, encoded = replay(events, policy)
        print(f"| {policy} | {total} | {hit} | {rate(hit, total)} | {encoded} |")

if __name__ == "__main__":
    main()
