"""Submit reads its file line by line with limits: a poisoned line is one clear rejection
(skipped with --skip-invalid, blocking otherwise), identically on SQLite and PostgreSQL,
never a traceback; absurd trees and endless input are refused fast with bounded memory."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seedq.cli import main
from seedq.service import intake
from seedq.service.context import Services
from seedq.service.submit import SubmitError, _parse_line, submit_file
from seedq.store.rows import Rejection
from tests.conftest import PYTHON, REPO
from tests.service.helpers import gsm8k_lines, rows, scalar, write_jsonl

GOOD = {"task": "gsm8k", "question": "What is 2+2?", "answer": "4"}
POISON = [
    ('{"task": "gsm8k", "question": "a\\u0000b", "custom_id": "nul"}', "NUL"),
    ('{"task": "gsm8k", "question": "x", "custom_id": "id\\u0000"}', "NUL"),
    ('{"task": "gsm8k", "question": "a\\ud800b", "custom_id": "sur"}', "surrogate"),
    ('{"task": "gsm8k", "question": "x", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "nested"),
    ('{"task": "gsm8k", "question": "x", "custom_id": ' + "7" * 5000 + "}", "out of range"),
    ('{"task": "gsm8k", "question": "x", "search": {"temperature": NaN}}', "NaN"),
    ('{"task": "gsm8k", "question": "x", "answer": 1e400}', "out of range"),
    ('{"task": "gsm8k", "question": "' + "y" * 400_000 + '"}', "longer than"),
]


def cli_env(services: Services, **extra: str) -> dict[str, str]:
    s = services.settings
    return {
        "SEEDQ_DATABASE_URL": s.database_url,
        "SEEDQ_REDIS_URL": s.redis_url,
        "SEEDQ_QUEUE": s.queue,
        "SEEDQ_MAX_LINE_BYTES": "300000",
        **extra,
    }


def poisoned_file(tmp_path: Path) -> Path:
    good = [dict(GOOD, custom_id=f"g{i}") for i in range(2)]
    return write_jsonl(tmp_path / "poison.jsonl", [good[0], *(p for p, _ in POISON), good[1]])


def test_poisoned_lines_are_skipped_by_number(services: Services, tmp_path: Path) -> None:
    path = poisoned_file(tmp_path)
    small = services.settings.with_overrides(max_line_bytes=300_000)
    report = submit_file(Services(small, services.db, services.redis), path, skip_invalid=True)
    assert report.accepted == 2
    assert [r.line_no for r in report.rejected] == list(range(2, 2 + len(POISON)))
    for rej, (_, words) in zip(report.rejected, POISON, strict=True):
        assert words in rej.message(), rej.message()
    stored = rows(services, "SELECT custom_id, status FROM jobs ORDER BY line_no")
    assert [r[1] for r in stored] == ["queued"] + ["rejected"] * len(POISON) + ["queued"]
    assert [r[0] for r in stored][:5] == ["g0", "nul", None, "sur", None]


def test_poisoned_line_blocks_the_file_and_names_it(services: Services, tmp_path: Path) -> None:
    path = poisoned_file(tmp_path)
    res = CliRunner().invoke(main, ["submit", str(path)], env=cli_env(services))
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    for n in range(2, 2 + len(POISON)):
        assert f"{path}:line {n}: " in res.output
    assert "nothing was submitted" in res.output
    assert scalar(services, "SELECT COUNT(*) FROM jobs") == 0
    ok = CliRunner().invoke(main, ["submit", str(path), "--skip-invalid"], env=cli_env(services))
    assert ok.exit_code == 0, ok.output
    assert "2 jobs queued" in ok.output and f"{len(POISON)} rejected" in ok.output


def test_absurd_draft_tree_and_tree_shape_are_refused(
    services: Services, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(1))
    with pytest.raises(SubmitError, match="SEEDQ_MAX_DRAFT_TREE"):
        submit_file(services, path, engine={"engine": "mcsd", "k_config": "1000,1000,1000"})
    res = CliRunner().invoke(
        main,
        ["submit", str(path), "--engine", "mcsd", "--k-config", "1000,1000,1000"],
        env=cli_env(services),
    )
    assert res.exit_code == 1 and "SEEDQ_MAX_DRAFT_TREE" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    big = dict(GOOD, search={"breadth": 32, "depth": 32, "beam": 32})
    path = write_jsonl(tmp_path / "big.jsonl", [GOOD, big])
    report = submit_file(
        services, path, engine={"engine": "mcsd", "k_config": "2,1,1"}, skip_invalid=True
    )
    assert report.accepted == 1
    (rej,) = report.rejected
    assert rej.line_no == 2 and rej.field == "search" and "SEEDQ_MAX_TREE_NODES" in rej.reason
    assert scalar(services, "SELECT COUNT(*) FROM jobs WHERE status = 'rejected'") == 1


def _limit_memory() -> None:
    cap = 3 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def test_endless_input_is_refused_in_seconds_with_bounded_memory(services: Services) -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **cli_env(services)}
    t0 = time.monotonic()
    proc = subprocess.run(
        [PYTHON, "-c", "from seedq.cli import main; main()", "submit", "/dev/zero"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        preexec_fn=_limit_memory, check=False,
    )
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 1, proc.stderr
    assert "binary file" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_reader_is_line_by_line_with_a_cap(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"z" * 10_000 + b"\n" + b'{"b": 2}\n')
    got = list(intake.iter_lines(path, intake.Limits(max_line_bytes=1000)))
    assert got[0] == (1, '{"a": 1}') and got[2] == (3, '{"b": 2}')
    assert isinstance(got[1][1], intake.LineProblem) and got[1][0] == 2
    endless = tmp_path / "endless.jsonl"
    endless.write_bytes(b"z" * 200_000)
    with pytest.raises(intake.FileProblem, match="without a newline"):
        list(intake.iter_lines(endless, intake.Limits(max_line_bytes=1000)))


JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text()
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                               max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(
        st.sampled_from(["question", "answer", "custom_id", "id", "search", "meta", "task"]),
        JSON_VALUE,
    ),
    raw=st.text(max_size=60),
)
def test_any_line_is_a_job_or_one_rejection(extra: dict[str, Any], raw: str) -> None:
    limits = intake.Limits(max_line_bytes=4096, max_json_depth=8)
    for text in (json.dumps({**GOOD, **extra}), raw, json.dumps(extra)[:-1]):
        parsed = _parse_line(1, text, "gsm8k", None, limits)
        if isinstance(parsed, Rejection):
            assert parsed.message().startswith("line 1: ")
        else:
            assert intake.unstorable(parsed.to_json()) is None
