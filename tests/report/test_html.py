"""``seedq report``: one self-contained file, checked statically and in a real headless
Chromium (no console error, no request but the page itself, the batch's node ids in the
rendered DOM, a screenshot under the test's temporary folder)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from seedq.cli import main
from seedq.report.html import collect, render
from seedq.store import analytics
from seedq.store.db import Database
from seedq.store.trees import batch_trees
from tests.report.browser import chromium_path, load_page
from tests.report.conftest import Batches

# anything that would make the page fetch: a src/href/action/poster/data/srcset attribute
# with a scheme or a protocol-relative URL, CSS url()/@import, or a fetch API in the script
EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|action|poster|data|srcset|formaction)\s*=\s*["']?\s*"""
    r"""(?:[a-z][a-z0-9+.-]*:(?!,)|//))|url\(\s*["']?\s*(?!#|data:)|@import|"""
    r"""\bfetch\(|XMLHttpRequest|WebSocket|EventSource""",
    re.I,
)


def write(batches: Batches, out: Path, *vs: str) -> str:
    args = ["--database-url", batches.url, "report", batches.seed, "-o", str(out)]
    for other in vs:
        args += ["--vs", other]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out}" in result.stderr
    return out.read_text(encoding="utf-8")


def test_report_is_one_self_contained_file(batches: Batches, db: Database,
                                           tmp_path: Path) -> None:
    html = write(batches, tmp_path / "report.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert EXTERNAL.findall(html) == []
    assert "http://" not in html and "https://" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert html.count("<svg") == 4 and "<script>" in html and "<style>" in html
    for tree in batch_trees(db, batches.seed):
        assert f'data-job="{tree.job_id}"' in html
        for node in tree.nodes:
            assert f'data-node="{node.node_id}"' in html
    assert 'id="comparison"' not in html  # no --vs


def test_report_shows_models_and_measured_busy(batches: Batches, db: Database,
                                               tmp_path: Path) -> None:
    html = write(batches, tmp_path / "vs.html", batches.ar)
    summary = html[html.index('<table id="summary">'):]
    summary = summary[: summary.index("</table>")]
    assert "not stored (worker setting)" not in summary
    models = re.findall(r'<td class="models">(.*?)</td>', summary)
    assert models == ["target tiny, draft tiny-draft (seed, cpu float32)",
                      "target tiny, no draft (ar, cpu float32)"]
    # seed measures the target's busy time, ar does not: its fraction is estimated
    rates = analytics.tree_rates(db, [batches.seed])
    busy = sum(r.busy_seconds or 0.0 for r in rates)
    group = sum(r.busy_group_seconds or 0.0 for r in rates)
    cells = re.findall(r'<td class="num busy" data-source="([^"]+)">([\d.]+)% \(', summary)
    assert [c[0] for c in cells] == ["measured", "estimated"]
    assert float(cells[0][1]) == pytest.approx(100 * busy / group, abs=0.051)
    assert "Target busy fraction per tree (measured where stored, else estimated)" in html
    alone = write(batches, tmp_path / "seed.html")
    assert "Target busy fraction per tree (measured)" in alone


def test_report_vs_has_the_speedup_table(batches: Batches, tmp_path: Path) -> None:
    html = write(batches, tmp_path / "vs.html", batches.ar)
    table = html[html.index('<table id="comparison">'):]
    table = table[: table.index("</table>")]
    assert "<th>time per tree</th><th>speedup</th><th>acceptance</th>" in table
    rows = re.findall(r"<tr><td>(\w+)</td><td><code>([\w-]+)</code>.*?</tr>", table)
    assert rows == [(t, b) for t in ("custom", "gsm8k", "all") for b in (batches.seed,
                                                                          batches.ar)]
    assert table.count("1.00&times;") >= 3  # the first batch is the baseline of each task


def test_report_user_text_is_escaped(batches: Batches, db: Database) -> None:
    evil = '<script>fetch("https://x.example")</script><img src="https://x.example/a.png">'
    tree = batch_trees(db, batches.seed)[0]
    nodes = tuple(replace(n, thought=evil, evaluation=evil, failure=evil) for n in tree.nodes)
    data = collect(db, batches.seed)
    data = replace(data, trees=[replace(tree, nodes=nodes, answer=evil, custom_id=evil)])
    html = render(data)
    assert evil not in html and "<script>fetch" not in html and "<img" not in html
    assert "&lt;script&gt;fetch(&#34;https://x.example&#34;)&lt;/script&gt;" in html


def test_report_in_headless_chromium(batches: Batches, db: Database, tmp_path: Path) -> None:
    exe = chromium_path()
    if exe is None:
        pytest.fail("chromium is missing and scripts/browser.sh could not install it")
    page = tmp_path / "report.html"
    write(batches, page, batches.ar)
    shot = tmp_path / "report.png"
    loaded = load_page(exe, page, tmp_path / "profile", shot)
    assert loaded.exceptions == [] and loaded.console_errors == []
    assert loaded.requests == [page.resolve().as_uri()]
    expected = [n.node_id for t in batch_trees(db, batches.seed) for n in t.nodes]
    assert sorted(loaded.node_ids) == sorted(expected)  # the DOM holds them depth first
    assert 'id="comparison"' in loaded.dom and "speedup" in loaded.dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
