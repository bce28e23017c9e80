"""`taskstream replay`: byte-identical output, dead letters, explain, exit codes."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner

from taskstream.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def run_replay(
    tmp_path: Path, *extra: str, events: Path | None = None, templates: Path | None = None
) -> tuple[int, str, str, bytes]:
    out = tmp_path / "out.jsonl"
    args = [
        "replay",
        "--templates", str(templates or SAMPLES / "templates.json"),
        "--pools", str(SAMPLES / "pools.json"),
        "--events", str(events or SAMPLES / "events.jsonl"),
        "--out", str(out),
        "--no-progress",
        *extra,
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    produced = out.read_bytes() if out.exists() else b""
    return result.exit_code, result.stdout, result.stderr, produced


def test_replaying_the_same_log_twice_gives_byte_identical_output(tmp_path: Path) -> None:
    code1, _, _, first = run_replay(tmp_path)
    code2, _, _, second = run_replay(tmp_path)
    assert code1 == code2 == 0
    assert first == second
    assert first.count(b"\n") > 20


def test_malformed_lines_become_dead_letters_and_replay_goes_on(tmp_path: Path) -> None:
    events = tmp_path / "in.jsonl"
    good = orjson.dumps(
        {
            "type": "task_claim",
            "v": 1,
            "event_id": "c",
            "user_id": "u",
            "template_id": "clear_box_per_order",
            "at": "2024-03-04T00:00:00Z",
            "user_tags": ["lapsed"],
        }
    )
    events.write_bytes(b"{oops\n\n" + b'{"type":"tick","v":1}\n' + b"\xff\xfe\n" + good + b"\n")
    code, _, err, out = run_replay(tmp_path, events=events)
    assert code == 0
    docs = [orjson.loads(line) for line in out.splitlines()]
    assert [d["type"] for d in docs] == [
        "dead_letter",
        "dead_letter",
        "dead_letter",
        "task_claimed",
    ]
    assert [d["source"] for d in docs[:3]] == ["line 1", "line 3", "line 4"]
    assert "malformed JSON" in docs[0]["reason"]
    assert docs[1]["reason"] == "tick.event_id: missing field"
    assert docs[0]["payload"] == "{oops"
    assert (docs[2]["payload"], docs[2]["payload_b64"]) == (None, "//4=")
    assert "3 dead letter(s)" in err


def test_invalid_templates_file_fails_with_every_problem(tmp_path: Path) -> None:
    templates = tmp_path / "t.json"
    templates.write_bytes(b'[{"template_id": "a"}, {"template_id": "b", "target": -1}]')
    code, _, err, _ = run_replay(tmp_path, templates=templates)
    assert code == 1
    assert "template 'a' field title: missing" in err
    assert "template 'b' field target: must be >= 1" in err


def test_missing_required_option_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["replay", "--templates", str(SAMPLES / "templates.json")])
    assert result.exit_code == 2


def test_explain_prints_the_users_timeline_with_reasons(tmp_path: Path) -> None:
    code, stdout, _, _ = run_replay(tmp_path, "--explain", "u_alice")
    assert code == 0
    assert "amount 800 < min 1000" in stdout
    assert "channel 'hour_delivery' not in ['next_day_pickup']" in stdout
    assert "duplicate refund r_alice_1" in stdout
    assert "=> reward_revoked dark_box_3_days 1000c" in stdout
    assert "u_bob" not in stdout


def test_explain_tells_why_refund_before_order_and_duplicates_did_not_count(tmp_path: Path) -> None:
    _, stdout, _, _ = run_replay(tmp_path, "--explain", "u_bob")
    assert "refund held until it arrives" in stdout
    assert "applying 1 refund(s) held for this order" in stdout
    assert "duplicate order o_bob_3" in stdout


def test_replay_reads_stdin_and_writes_stdout_with_explanations_on_stderr() -> None:
    events = (SAMPLES / "events.jsonl").read_bytes()
    args = [
        "replay",
        "--templates", str(SAMPLES / "templates.json"),
        "--pools", str(SAMPLES / "pools.json"),
        "--events", "-",
        "--out", "-",
        "--explain", "u_gina",
        "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, input=events)
    assert result.exit_code == 0
    lines = result.stdout_bytes.splitlines()
    assert all(orjson.loads(line)["type"] for line in lines)
    assert b"budget_exhausted" in result.stdout_bytes
    assert "reward_rejected milestones_exclusive 700c (budget_exhausted)" in result.stderr
