"""``seedq report``: one self-contained HTML file (styles, script and SVG plots inline, a
Content-Security-Policy that forbids every request) rendered with jinja2 (autoescaped)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from seedq.report import plots
from seedq.report.terminal import marker
from seedq.store import analytics, trees
from seedq.store.analytics import BatchOverview, ComparisonRow, TreeRate
from seedq.store.db import Database
from seedq.store.trees import NodeView, TreeView

TEMPLATE = "report.html.j2"


class ReportError(ValueError):
    """A batch to report on does not exist."""


@dataclass(frozen=True)
class NodeItem:
    """A node with its marker and children, for the template's recursive loop."""

    node: NodeView
    marker: str
    on_path: bool
    children: list[NodeItem] = field(default_factory=list)


@dataclass(frozen=True)
class BusySummary:
    """A batch's target busy fraction over its trees (group-wall weighted, see
    :class:`~seedq.store.analytics.TreeRate`) and how many trees were measured by the engine
    rather than estimated from ``generations`` rows."""

    fraction: float | None
    measured: int
    trees: int

    @property
    def source(self) -> str:
        if self.measured == self.trees:
            return "measured" if self.trees else "-"
        if not self.measured:
            return "estimated"
        return f"measured for {self.measured} of {self.trees} trees, estimated for the rest"


def busy_summary(rates: Sequence[TreeRate], batch_id: str) -> BusySummary:
    mine = [r for r in rates if r.batch_id == batch_id]
    busy = sum(r.busy_parts[0] for r in mine)
    group = sum(r.busy_parts[1] for r in mine)
    return BusySummary(busy / group if group else None, sum(r.measured for r in mine),
                       len(mine))


def busy_source(rates: Sequence[TreeRate]) -> str:
    """How the busy plot's bars were obtained: ``measured``, ``estimated`` or both."""
    measured = {r.measured for r in rates}
    if measured == {True}:
        return "measured"
    return "estimated" if measured <= {False} else "measured where stored, else estimated"


@dataclass(frozen=True)
class ReportData:
    batch_ids: list[str]
    overviews: list[BatchOverview]
    trees: list[TreeView]
    comparison: list[ComparisonRow]
    plots: dict[str, str]
    busy: list[BusySummary] = field(default_factory=list)  # one per overview
    busy_source: str = "estimated"  # of the busy plot


def nest(tree: TreeView) -> list[NodeItem]:
    """The tree's nodes as nested items (roots: nodes whose parent is not stored)."""
    best = tree.best_path
    items = {n.node_id: NodeItem(n, marker(n, best), n.node_id in best) for n in tree.nodes}
    roots: list[NodeItem] = []
    for node in tree.nodes:
        parent = items.get(node.parent_id or "")
        (parent.children if parent else roots).append(items[node.node_id])
    return roots


def collect(
    db: Database, batch_id: str, vs: Sequence[str] = (), *, max_trees: int | None = None
) -> ReportData:
    """Everything the page shows; the trees are BATCH's (at most ``max_trees``)."""
    ids = list(dict.fromkeys([batch_id, *vs]))
    overviews = []
    for bid in ids:
        found = analytics.overview(db, bid)
        if found is None:
            raise ReportError(f"no batch {bid!r}")
        overviews.append(found)
    rates = analytics.tree_rates(db, ids)
    return ReportData(
        batch_ids=ids,
        overviews=overviews,
        trees=trees.batch_trees(db, batch_id, max_trees=max_trees),
        comparison=analytics.comparison(db, ids) if len(ids) > 1 else [],
        plots={
            "latency": plots.latency_plot(analytics.latency(db, ids)),
            "acceptance": plots.acceptance_plot(analytics.acceptance(db, ids)),
            "tokens": plots.tokens_plot(rates),
            "busy": plots.busy_plot(rates, busy_source(rates)),
        },
        busy=[busy_summary(rates, bid) for bid in ids],
        busy_source=busy_source(rates),
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("seedq.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(seconds=_seconds, percent=_percent, number=_number)
    return env


def render(data: ReportData, generated_at: datetime | None = None) -> str:
    when = generated_at or datetime.now(timezone.utc)
    template = environment().get_template(TEMPLATE)
    context: dict[str, Any] = {
        "data": data,
        "main": data.overviews[0],
        "trees": [(t, nest(t)) for t in data.trees],
        "generated_at": when.strftime("%Y-%m-%d %H:%M UTC"),
        "legend": {"★": "best path", "✓": "kept", "·": "not kept"},
    }
    return template.render(context)


def write_report(
    db: Database,
    batch_id: str,
    output: Path,
    vs: Sequence[str] = (),
    *,
    max_trees: int | None = trees.DEFAULT_MAX_TREES,
) -> ReportData:
    """Render the report of ``batch_id`` (compared with ``vs``) into ``output``."""
    data = collect(db, batch_id, vs, max_trees=max_trees)
    output.write_text(render(data), encoding="utf-8")
    return data
