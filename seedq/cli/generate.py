"""``seedq generate``: one group of sequences through any engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from seedq.cli.engine_flags import local_decoding_options, local_engine_config, local_engine_flags
from seedq.decoding.types import DecodingError, GroupRequest, GroupResult, SamplingParams


def read_prompts(prompts: tuple[str, ...], prompts_file: Path | None) -> list[str]:
    """Prompts from --prompt, or from a file: one per line, or JSONL with a "prompt" field."""
    if prompts and prompts_file:
        raise click.UsageError("give --prompt or --prompts-file, not both")
    if prompts:
        return list(prompts)
    if prompts_file is None:
        raise click.UsageError("give at least one --prompt or a --prompts-file")
    out = []
    for number, line in enumerate(prompts_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.BadParameter(f"line {number}: invalid JSON ({exc.msg})",
                                         param_hint="--prompts-file") from exc
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise click.BadParameter(f'line {number}: needs a string field "prompt"',
                                         param_hint="--prompts-file")
            out.append(item["prompt"])
        else:
            out.append(line)
    if not out:
        raise click.BadParameter("the file holds no prompt", param_hint="--prompts-file")
    return out


def result_json(result: GroupResult, prompt_count: int, n: int) -> dict[str, Any]:
    sequences = []
    for i, seq in enumerate(result.sequences):
        item = seq.to_dict()
        item["prompt_index"] = i // n
        sequences.append(item)
    metrics = {
        "wall_seconds": result.wall_seconds,
        "peak_memory_bytes": result.peak_memory_bytes,
        "new_tokens": sum(s.metrics.new_tokens for s in result.sequences),
        "tokens_per_second": sum(s.metrics.new_tokens for s in result.sequences)
        / result.wall_seconds if result.wall_seconds else 0.0,
        "drafted_tokens": sum(s.metrics.drafted_tokens for s in result.sequences),
        "accepted_tokens": sum(s.metrics.accepted_tokens for s in result.sequences),
        "target_forwards": sum(s.metrics.target_forwards for s in result.sequences),
        **result.stats,
    }
    return {"engine": result.engine, "prompts": prompt_count, "n": n, "sequences": sequences,
            "metrics": metrics}


def print_table(payload: dict[str, Any]) -> None:
    click.echo(f"engine {payload['engine']}: {len(payload['sequences'])} sequences")
    header = f"{'#':>3} {'p':>3} {'tokens':>6} {'drafted':>7} {'accepted':>8} {'fwd':>4}  text"
    click.echo(header)
    for i, seq in enumerate(payload["sequences"]):
        m = seq["metrics"]
        text = seq["text"].replace("\n", "\\n")
        click.echo(f"{i:>3} {seq['prompt_index']:>3} {m['new_tokens']:>6} {m['drafted_tokens']:>7}"
                   f" {m['accepted_tokens']:>8} {m['target_forwards']:>4}  {text[:70]}")
    m = payload["metrics"]
    click.echo(f"wall {m['wall_seconds']:.2f} s, {m['tokens_per_second']:.1f} tokens/s, "
               f"peak memory {m['peak_memory_bytes'] / 2**20:.0f} MiB")


@click.command()
@local_engine_flags
@click.option("--prompt", "prompts", multiple=True, help="A prompt (repeatable).")
@click.option("--prompts-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-n", "n", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Sequences per prompt.")
@click.option("--max-new-tokens", type=click.IntRange(1, 32768), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(0.0), default=0.0, show_default=True)
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True)
@click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0,
              show_default=True)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--seed", type=int, default=None, help="Seed sampling (sequence i uses seed+i).")
@click.option("--chat/--no-chat", default=False, help="Wrap prompts in the chat template.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def generate(**options: Any) -> None:
    """Generate N sequences per prompt with one engine and print texts and metrics."""
    prompts = read_prompts(options["prompts"], options["prompts_file"])
    config = local_engine_config(options)
    try:
        params = SamplingParams(
            temperature=options["temperature"], top_k=options["top_k"], top_p=options["top_p"],
            max_new_tokens=options["max_new_tokens"], stop=tuple(options["stop"]),
            seed=options["seed"],
        )
        request = GroupRequest(tuple(p for p in prompts for _ in range(options["n"])), params,
                               options["chat"])
        from seedq.decoding.factory import load_generator

        generator = load_generator(config, local_decoding_options())
        try:
            result = generator.run(request)
        finally:
            generator.close()
    except DecodingError as exc:
        raise click.ClickException(str(exc)) from exc
    payload = result_json(result, len(prompts), options["n"])
    if options["as_json"]:
        json.dump(payload, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_table(payload)


def register(group: click.Group) -> None:
    group.add_command(generate)
