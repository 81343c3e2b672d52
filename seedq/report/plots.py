"""The report's plots: matplotlib (Agg) figures turned into inline SVG text (text kept as
text, no metadata, ids salted per plot so several SVGs can share one page)."""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from seedq.store.analytics import AcceptanceRow, LatencyRow, TreeRate

SIZE = (6.4, 3.2)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
# namespace names are not requests, but an HTML page needs none of them: the HTML parser
# puts inline <svg> (and xlink:href) in their namespaces itself
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')


def svg(fig: Figure, name: str) -> str:
    """``fig`` as an ``<svg>`` element for inlining (no XML prolog, no DOCTYPE, no RDF)."""
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"seedq-{name}"}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = _XMLNS.sub("", _METADATA.sub("", text[text.index("<svg") :]))
    return text.replace("<svg ", f'<svg role="img" aria-label="{name}" ', 1)


def _figure(title: str) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=SIZE)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return fig, ax


def _empty(ax: plt.Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _short(batch_id: str, many: bool) -> str:
    return batch_id[-6:] if many else ""


def latency_plot(rows: Sequence[LatencyRow]) -> str:
    """Mean seconds per generated sequence by depth, one line per (batch, role)."""
    fig, ax = _figure("Latency per depth and role (mean s per sequence)")
    many = len({r.batch_id for r in rows}) > 1
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        series[f"{r.role} {_short(r.batch_id, many)}".strip()].append((r.depth, r.avg_seconds))
    for label, points in sorted(series.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=label)
    if series:
        ax.set_xlabel("depth")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7)
    else:
        _empty(ax, "generations")
    return svg(fig, "latency")


def acceptance_plot(rows: Sequence[AcceptanceRow]) -> str:
    """Acceptance by draft position (sequence index in its group), one bar group per role."""
    fig, ax = _figure("Acceptance per role and draft position")
    drafted = [r for r in rows if r.drafted]
    many = len({r.batch_id for r in drafted}) > 1
    labels = sorted({f"{r.role} {_short(r.batch_id, many)}".strip() for r in drafted})
    positions = sorted({r.position for r in drafted})
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        values = {r.position: r.acceptance or 0.0 for r in drafted
                  if f"{r.role} {_short(r.batch_id, many)}".strip() == label}
        xs = [p + i * width for p in positions]
        ax.bar(xs, [values.get(p, 0.0) for p in positions], width=width, label=label)
    if drafted:
        ax.set_xticks([p + 0.4 - width / 2 for p in positions], [str(p) for p in positions])
        ax.set_xlabel("draft position (sequence index in its group)")
        ax.set_ylabel("accepted / drafted")
        ax.set_ylim(0, 1.25)
        ax.legend(fontsize=7, ncols=2, loc="upper right")
    else:
        _empty(ax, "drafted tokens (no speculative engine)")
    return svg(fig, "acceptance")


def _per_tree(rates: Sequence[TreeRate], title: str, name: str, busy: bool) -> str:
    fig, ax = _figure(title)
    batches = sorted({r.batch_id for r in rates}, key=[r.batch_id for r in rates].index)
    width = 0.8 / max(len(batches), 1)
    trees = list(dict.fromkeys(r.custom_id or "?" for r in rates))
    for i, batch in enumerate(batches):
        mine = {r.custom_id or "?": r for r in rates if r.batch_id == batch}
        values = [_value(mine.get(t), busy) for t in trees]
        xs = [k + i * width for k in range(len(trees))]
        ax.bar(xs, values, width=width, label=batch)
    if rates:
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(trees))], trees,
                      rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("fraction" if busy else "tokens / s")
        if busy:
            ax.set_ylim(0, 1.25)
        ax.legend(fontsize=7, loc="upper right")
    else:
        _empty(ax, "completed trees")
    return svg(fig, name)


def _value(rate: TreeRate | None, busy: bool) -> float:
    if rate is None:
        return 0.0
    value = rate.busy_fraction if busy else rate.tokens_per_second
    return value or 0.0


def tokens_plot(rates: Sequence[TreeRate]) -> str:
    return _per_tree(rates, "Tokens/s per tree", "tokens", busy=False)


def busy_plot(rates: Sequence[TreeRate], source: str = "estimated") -> str:
    """``source``: how the fractions were obtained (measured by the engine, estimated)."""
    return _per_tree(rates, f"Target busy fraction per tree ({source})", "busy", busy=True)
