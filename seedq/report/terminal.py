"""The tree in the terminal with rich: one line per node with its id, kept marker, score,
failure, thought snippet, seconds, tokens and acceptance."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console, Group
from rich.text import Text
from rich.tree import Tree as RichTree

from seedq.store.analytics import Models
from seedq.store.trees import NodeView, TreeView, node_view

SNIPPET = 60
BEST = "★"  # on the path from the root to the solution
KEPT = "✓"  # kept by the search (beam, visited, solution)
DROPPED = "·"
FAILED = "✗"
LEGEND = f"{BEST} best path  {KEPT} kept  {DROPPED} not kept  {FAILED} failed"


def snippet(text: str | None, limit: int = SNIPPET) -> str:
    """One line of at most ``limit`` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def marker(node: NodeView, best: Iterable[str]) -> str:
    if node.node_id in set(best):
        return BEST
    return KEPT if node.selected else DROPPED


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def node_label(node: NodeView, best: tuple[str, ...]) -> Text:
    """``0.1 ✓ score 0.50 | 1.93s 8 tok acc 62% | thought…`` (text, never markup)."""
    fig = node.figures
    mark = marker(node, best)
    label = Text()
    label.append(node.node_id, style="bold")
    label.append(f" {mark} ", style="green" if mark != DROPPED else "dim")
    label.append(f"[{node.kind}] " if node.kind != "thought" else "")
    score = "-" if node.score is None else f"{node.score:.2f}"
    label.append(f"score {score}", style="cyan")
    label.append(f" | {fig.seconds:.2f}s {fig.new_tokens} tok acc {_percent(fig.acceptance)}",
                 style="magenta")
    if node.failure:
        label.append(f" | {FAILED} {snippet(node.failure, 50)}", style="red")
    if node.thought:
        label.append(f" | {snippet(node.thought)}")
    return label


def header(tree: TreeView) -> Text:
    wall = "-" if tree.wall_seconds is None else f"{tree.wall_seconds:.2f}s"
    name = tree.custom_id or tree.job_id or "tree"
    text = Text()
    text.append(name, style="bold underline")
    text.append(f"  {tree.task or '?'}  {tree.status}  answer={tree.answer!r}"
                f"  correct={tree.correct}  wall {wall}  nodes {len(tree.nodes)}")
    if tree.error:
        text.append(f"\n  error: {snippet(tree.error, 120)}", style="red")
    return text


def models_line(batch_id: str, models: Iterable[Models]) -> Text:
    """``batch B  models: target tiny, draft tiny-draft (seed, cpu float32)``."""
    labels = [m.label for m in models]
    text = Text()
    text.append(f"batch {batch_id}", style="bold")
    text.append("  models: ")
    text.append("; ".join(labels) if labels else "not recorded", style="cyan" if labels
                else "dim")
    return text


def rich_tree(tree: TreeView) -> RichTree:
    """The nodes of ``tree`` under its header, children under their parent."""
    best = tree.best_path
    out = RichTree(header(tree), guide_style="dim")
    known = {n.node_id for n in tree.nodes}
    stack: list[tuple[RichTree, NodeView]] = []
    roots = [n for n in tree.nodes if n.parent_id is None or n.parent_id not in known]
    for node in reversed(roots):
        stack.append((out, node))
    while stack:
        parent, node = stack.pop()
        branch = parent.add(node_label(node, best))
        for child in reversed(tree.children(node.node_id)):
            stack.append((branch, child))
    return out


def print_trees(trees: Iterable[TreeView], console: Console | None = None,
                header: Text | None = None) -> int:
    """Print ``header`` (e.g. :func:`models_line`), each tree, then the legend; returns how
    many trees were printed."""
    console = console or Console(soft_wrap=False, highlight=False)
    if header is not None:
        console.print(header, soft_wrap=True)  # one line, however narrow the terminal
    n = 0
    for tree in trees:
        console.print(rich_tree(tree))
        n += 1
    if n:
        console.print(Group(Text(LEGEND, style="dim")))
    return n


def from_result(result: Mapping[str, Any], job_id: str | None = None) -> TreeView:
    """A TreeView of an in-process ``TreeResult.to_json()`` (``seedq solve --show``)."""
    tree = result.get("tree") or {}
    metrics = result.get("metrics") or {}
    return TreeView(
        job_id=job_id,
        custom_id=result.get("custom_id"),
        task=result.get("task"),
        status="completed",
        answer=result.get("answer"),
        correct=result.get("correct"),
        wall_seconds=metrics.get("wall_seconds"),
        error=None,
        nodes=tuple(node_view(n) for n in tree.get("nodes", ())),
    )


def show_result(result: Mapping[str, Any], *, err: bool = False) -> None:
    """Draw one in-process tree result (``seedq solve --show``), on stderr with ``err``."""
    print_trees([from_result(result)], Console(stderr=err, soft_wrap=False, highlight=False))


def next_steps(batch_id: str, program: str = "seedq") -> str:
    """What to run next on a finished batch (``seedq run`` and ``make demo`` end with it)."""
    return (
        f"look at the trees:  {program} show {batch_id}\n"
        f"HTML report:        {program} report {batch_id} -o report.html"
    )
