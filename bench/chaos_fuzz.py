"""Fuzzed ``seedq submit`` for the chaos run: Hypothesis writes JSONL files (valid GSM8K lines,
lines with wrong or odd fields, JSON that is no job, text that is no JSON) and every
submission must account for each line: accepted as a queued job or stored as rejected, or,
when no line is valid, nothing stored at all."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from seedq.service.context import Services
from seedq.service.submit import SubmitError, read_lines, submit_file
from seedq.store import reports

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=60
)


def valid_line() -> st.SearchStrategy[dict[str, Any]]:
    search = st.fixed_dictionaries(
        {}, optional={"breadth": st.integers(1, 2), "depth": st.integers(1, 2), "beam": st.just(1)}
    )
    return st.fixed_dictionaries(
        {"task": st.just("gsm8k"), "question": TEXT, "answer": st.integers(0, 999).map(str)},
        optional={"custom_id": TEXT, "search": search},
    )


def odd_line() -> st.SearchStrategy[dict[str, Any]]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), TEXT)
    return st.fixed_dictionaries(
        {"task": st.sampled_from(["gsm8k", "chess", "", "GSM8K"])},
        optional={
            "question": scalars,
            "answer": scalars,
            "custom_id": scalars,
            "search": st.one_of(scalars, st.dictionaries(TEXT, scalars, max_size=3)),
            "extra": scalars,
        },
    )


def any_line() -> st.SearchStrategy[str]:
    objects = st.one_of(valid_line(), valid_line(), valid_line(), odd_line())
    junk_json = st.recursive(
        st.one_of(st.none(), st.integers(), TEXT), lambda kids: st.lists(kids, max_size=3)
    )
    return st.one_of(objects.map(json.dumps), junk_json.map(json.dumps), TEXT)


@dataclass
class FuzzReport:
    files: int = 0
    lines: int = 0
    accepted: int = 0
    rejected: int = 0
    refused_files: int = 0  # no valid line: nothing stored
    batch_ids: list[str] = field(default_factory=list)


def fuzz_submit(services: Services, folder: Path, files: int) -> FuzzReport:
    """Submit ``files`` Hypothesis-made JSONL files (reproducible: derandomized)."""
    out = FuzzReport()

    @settings(
        max_examples=files,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(any_line(), min_size=1, max_size=14))
    def submit_one(lines: list[str]) -> None:
        path = folder / f"fuzz{out.files:04d}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        out.files += 1
        try:
            expected = len(read_lines(path))
        except SubmitError:
            return  # blank file: refused before anything else
        out.lines += expected
        before = len(reports.recent_batch_ids(services.db, 10**6))
        try:
            report = submit_file(services, path, skip_invalid=True)
        except SubmitError:
            after = len(reports.recent_batch_ids(services.db, 10**6))
            assert after == before, "a refused file stored a batch"
            out.refused_files += 1
            out.rejected += expected
            return
        assert report.accepted + len(report.rejected) == expected, (report, expected)
        (summary,) = reports.summarize(services.db, [report.batch_id])
        assert summary.counts.get("rejected", 0) == len(report.rejected)
        assert summary.total == expected
        out.accepted += report.accepted
        out.rejected += len(report.rejected)
        out.batch_ids.append(report.batch_id)

    submit_one()
    return out
