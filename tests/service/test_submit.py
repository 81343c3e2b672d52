"""Submit: every line validated first; bad input named by line and field; bulk, JSON, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rq.job import Job as RQJob

from seedq import queue as q
from seedq.cli import main
from seedq.service.context import Services
from seedq.service.submit import SubmitError, submit_file
from seedq.settings import Settings
from tests.service.helpers import gsm8k_lines, rows, scalar, write_jsonl


def queued_ids(services: Services) -> list[str]:
    return [x.decode() for x in services.redis.lrange(services.queue().key, 0, -1)]


def nothing_stored(services: Services) -> bool:
    return scalar(services, "SELECT COUNT(*) FROM jobs") == 0 and not queued_ids(services)


def test_good_file_is_stored_and_enqueued_with_json(services: Services, tmp_path: Path) -> None:
    lines = gsm8k_lines(3)
    del lines[1]["custom_id"]  # gets a generated one
    report = submit_file(services, write_jsonl(tmp_path / "in.jsonl", lines))
    assert report.accepted == 3 and not report.rejected
    ids = [q.job_id_for(report.batch_id, n) for n in (1, 2, 3)]
    assert queued_ids(services) == ids  # FCFS, deterministic ids
    stored = rows(services, "SELECT id, custom_id, status, line_no FROM jobs ORDER BY line_no")
    assert [tuple(r) for r in stored] == [
        (ids[0], "q0", "queued", 1),
        (ids[1], "line-2", "queued", 2),
        (ids[2], "q2", "queued", 3),
    ]
    raw = services.redis.hget(RQJob.key_for(ids[0]), "data")
    assert raw is not None
    func, _instance, args, _kwargs = json.loads(__import__("zlib").decompress(raw))
    payload = q.make_payload(ids[0], report.batch_id, services.store_id)
    assert func == q.JOB_FUNC and args == [payload] and payload["store"]


BAD_LINES = [
    ("{not json", 2, None, "invalid JSON"),
    (json.dumps({"task": "chess", "question": "x"}), 2, "task", ""),
    (
        json.dumps({"task": "gsm8k", "question": "x", "search": {"breadth": 0}}),
        2,
        "search.breadth",
        "1..32",
    ),
    (
        json.dumps({"task": "gsm8k", "question": "x", "search": {"top_p": 1.5}}),
        2,
        "search.top_p",
        "",
    ),
    (json.dumps({"task": "gsm8k"}), 2, "question", ""),
    (json.dumps({"task": "gsm8k", "question": "x", "colour": "red"}), 2, "colour", "unknown"),
    (json.dumps([1, 2]), 2, "line", "JSON object"),
    (
        json.dumps({"custom_id": "q0", "task": "gsm8k", "question": "again"}),
        2,
        "custom_id",
        "duplicate",
    ),
]


@pytest.mark.parametrize(("bad", "line_no", "field", "words"), BAD_LINES)
def test_bad_line_blocks_the_whole_file(
    services: Services, tmp_path: Path, bad: str, line_no: int, field: str | None, words: str
) -> None:
    good = gsm8k_lines(2)
    path = write_jsonl(tmp_path / "in.jsonl", [good[0], bad, good[1]])
    with pytest.raises(SubmitError, match="1 bad line") as err:
        submit_file(services, path)
    (rej,) = err.value.rejections
    assert rej.line_no == line_no and rej.field == field and words in rej.reason
    assert nothing_stored(services)


def test_skip_invalid_keeps_the_good_lines(services: Services, tmp_path: Path) -> None:
    lines = [
        *gsm8k_lines(2),
        "{oops",
        json.dumps({"task": "gsm8k", "question": "q", "search": {"depth": 99}}),
    ]
    report = submit_file(services, write_jsonl(tmp_path / "in.jsonl", lines), skip_invalid=True)
    assert report.accepted == 2 and [r.line_no for r in report.rejected] == [3, 4]
    assert len(queued_ids(services)) == 2
    rejected = rows(
        services,
        "SELECT line_no, error, error_kind FROM jobs WHERE status = 'rejected' ORDER BY line_no",
    )
    assert [r[0] for r in rejected] == [3, 4]
    assert "invalid JSON" in rejected[0][1] and "search.depth" in rejected[1][1]


def test_defaults_task_and_limit(services: Services, tmp_path: Path) -> None:
    lines = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(5)]
    from seedq.reasoning.params import SearchParams

    defaults = SearchParams().updated({"breadth": 2, "depth": 1})
    report = submit_file(
        services,
        write_jsonl(tmp_path / "in.jsonl", lines),
        task="gsm8k",
        defaults=defaults,
        limit=3,
    )
    assert report.accepted == 3
    payload = rows(services, "SELECT payload FROM jobs ORDER BY line_no")[0][0]
    payload = json.loads(payload) if isinstance(payload, str) else payload
    assert payload["task"] == "gsm8k" and payload["search"]["breadth"] == 2
    with pytest.raises(SubmitError, match="task: missing"):
        submit_file(services, write_jsonl(tmp_path / "no_task.jsonl", lines))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", "empty file"),
        (b"\n  \n", "empty file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
        (b'{"task": "gsm8k", "question": "caf\xe9"}\n', "not UTF-8"),
    ],
)
def test_file_level_problems(
    services: Services, tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "in.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SubmitError, match=message):
        submit_file(services, path)
    assert nothing_stored(services)


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "SEEDQ_DATABASE_URL": settings.database_url,
        "SEEDQ_REDIS_URL": settings.redis_url,
        "SEEDQ_QUEUE": settings.queue,
    }


def test_cli_submit_reports_lines_and_exit_codes(services: Services, tmp_path: Path) -> None:
    runner = CliRunner()
    env = cli_env(services.settings)
    bad = write_jsonl(tmp_path / "bad.jsonl", [gsm8k_lines(1)[0], "{x", '{"task": "nope"}'])
    res = runner.invoke(main, ["submit", str(bad)], env=env)
    assert res.exit_code == 1
    assert f"{bad}:line 2: invalid JSON" in res.output
    assert f"{bad}:line 3: task:" in res.output and "nothing was submitted" in res.output
    res = runner.invoke(main, ["submit", str(bad), "--breadth", "0"], env=env)
    assert res.exit_code == 2 and "--breadth" in res.output
    res = runner.invoke(main, ["submit", str(tmp_path / "missing.jsonl")], env=env)
    assert res.exit_code == 1 and "no such file" in res.output
    assert nothing_stored(services)
    good = write_jsonl(tmp_path / "good.jsonl", gsm8k_lines(2))
    res = runner.invoke(main, ["submit", str(good), "--depth", "1"], env=env)
    assert res.exit_code == 0, res.output
    batch_id = res.stdout.strip().splitlines()[-1]
    assert batch_id.startswith("b") and len(queued_ids(services)) == 2


def test_out_of_date_schema_is_refused(tmp_path: Path, settings: Settings) -> None:
    env = {**cli_env(settings), "SEEDQ_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite'}"}
    good = write_jsonl(tmp_path / "good.jsonl", gsm8k_lines(1))
    runner = CliRunner()
    for args in (["submit", str(good)], ["worker", "--burst"], ["status"]):
        res = runner.invoke(main, args, env=env)
        assert res.exit_code == 2 and "seedq db upgrade" in res.output, res.output


def test_unreachable_redis_submits_nothing(services: Services, tmp_path: Path) -> None:
    from seedq.service.context import open_services

    settings = services.settings.with_overrides(redis_url="redis://127.0.0.1:1/0")
    offline = open_services(settings)
    try:
        with pytest.raises(SubmitError, match="could not enqueue on Redis"):
            submit_file(offline, write_jsonl(tmp_path / "in.jsonl", gsm8k_lines(2)))
    finally:
        offline.close()
    assert scalar(services, "SELECT COUNT(*) FROM batches") == 0
    res = CliRunner().invoke(main, ["worker", "--burst"], env=cli_env(settings))
    assert res.exit_code == 2 and "cannot reach Redis" in res.output
