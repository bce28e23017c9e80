"""`taskstream simulate` on files: report, JSON, chart, windows, exit codes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from schemas.timestamps import parse_utc
from taskstream.catalog_files import load_catalog
from taskstream.charts import PoolSeries, by_event_time, pool_burn_down
from taskstream.cli import main
from taskstream.replay import replay_lines
from taskstream.simulate import SourceStats, Window, kafka_events

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["simulate", "--no-progress", *args])


def sample_args(*extra: str) -> list[str]:
    return [
        "--templates", str(SAMPLES / "templates.json"),
        "--pools", str(SAMPLES / "pools.json"),
        "--events", str(SAMPLES / "events.jsonl"),
        *extra,
    ]  # fmt: skip


def test_report_json_and_chart_on_the_sample_log(tmp_path: Path) -> None:
    report_path, chart = tmp_path / "report.json", tmp_path / "burn.png"
    result = run(*sample_args("--json", str(report_path), "--chart", str(chart)))
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = orjson.loads(report_path.read_bytes())
    # The table and the JSON tell the same story.
    for template in report["templates"]:
        assert template["template_id"] in result.stdout
    small = next(p for p in report["pools"] if p["pool_id"] == "small_budget")
    assert small["runs_dry"]["event_id"] in result.stdout
    assert small["runs_dry"]["where"] in result.stdout
    assert "2 not valid input events, skipped" in result.stderr
    assert "spring_festival" in result.stdout  # a log claim for a template not proposed
    data = chart.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert min(image.size) > 500


def test_payouts_agree_with_replay_of_the_same_log(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    assert run(*sample_args("--json", str(report_path))).exit_code == 0
    report = orjson.loads(report_path.read_bytes())
    catalog = load_catalog(SAMPLES / "templates.json", SAMPLES / "pools.json")
    outputs: list[bytes] = []
    replay_lines((SAMPLES / "events.jsonl").open("rb"), catalog, outputs.append)
    docs = [orjson.loads(line) for line in outputs]
    for template in report["templates"]:
        net = sum(
            d["amount_cents"] * (1 if d["type"] == "reward_granted" else -1)
            for d in docs
            if d.get("template_id") == template["template_id"]
            and d["type"] in ("reward_granted", "reward_revoked")
        )
        completions = sum(
            1
            for d in docs
            if d["type"] == "task_completed" and d["template_id"] == template["template_id"]
        )
        assert (template["payout_cents"], template["completions"]) == (net, completions)


def test_claim_synthesis_and_window_options(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = run(
        *sample_args(
            "--claim", "lottery_exclusive",
            "--user-tag", "lapsed",
            "--since", "2024-03-04T00:00:00Z",
            "--until", "2024-03-06T00:00:00Z",
            "--json", str(report_path),
        )
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = orjson.loads(report_path.read_bytes())
    assert report["synthetic_claims"] > 0
    assert "2024-03-04T00:00:00Z" <= report["first_at"] <= report["last_at"] < "2024-03-06"
    assert "outside --since/--until" in result.stderr
    lottery = next(t for t in report["templates"] if t["template_id"] == "lottery_exclusive")
    assert lottery["lottery"]["draws"] > 0
    assert lottery["lottery"]["expected_cost_per_draw_cents"] == pytest.approx(
        (5 * 10000 + 25 * 500) / 100
    )


def test_json_to_stdout_replaces_the_table() -> None:
    result = run(*sample_args("--json", "-"))
    assert result.exit_code == 0
    assert orjson.loads(result.stdout)["events"] == 36


def test_an_invalid_templates_file_fails_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "templates.json"
    bad.write_text('[{"template_id": "x"}]')
    result = run("--templates", str(bad), "--events", str(SAMPLES / "events.jsonl"))
    assert result.exit_code == 1
    assert "problem(s) in the catalog" in result.stderr
    assert "Traceback" not in result.output


def test_a_missing_events_file_fails_with_a_message(tmp_path: Path) -> None:
    result = run(*sample_args()[:4], "--events", str(tmp_path / "none.jsonl"))
    assert result.exit_code == 1
    assert "none.jsonl" in result.stderr


@pytest.mark.parametrize(
    "extra",
    [
        [],  # no source
        ["--events", "x.jsonl", "--from-kafka"],  # two sources
        ["--events", "x.jsonl", "--claims-at", "2024-03-01T00:00:00Z"],  # nothing to claim
        ["--events", "x.jsonl", "--claim", "no_such_template"],
        ["--events", "x.jsonl", "--claim-all", "--claim", "dark_box_3_days"],
        ["--events", "x.jsonl", "--since", "last tuesday"],
    ],
)
def test_bad_usage_exits_2(extra: list[str]) -> None:
    result = run(
        "--templates", str(SAMPLES / "templates.json"),
        "--pools", str(SAMPLES / "pools.json"),
        *extra,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(main, ["simulate", "--help"])
    assert result.exit_code == 0
    assert "Exit codes" in result.stdout
    assert "--claims-at" in result.stdout


# ------------------------------------------------------ merging Kafka topics


def _line(doc: dict[str, Any]) -> bytes:
    return orjson.dumps({"v": 1, **doc})


def test_topics_merge_in_event_time_order_with_one_copy_of_each_tick() -> None:
    at = "2024-03-05T00:00:0{}Z".format
    order = {"type": "order_paid", "order_id": "o", "user_id": "u", "amount_cents": 100,
             "channel": "app"}  # fmt: skip
    claim = {"type": "task_claim", "user_id": "u", "template_id": "t", "user_tags": []}
    messages: list[tuple[str, int, int, bytes | None]] = [
        ("orders", 1, 0, _line({**order, "event_id": "o2", "at": at(2)})),
        ("orders", 0, 0, _line({**order, "event_id": "o1", "at": at(1)})),
        ("claims", 1, 0, _line({**claim, "event_id": "c1", "at": at(1)})),
        ("ticks", 0, 0, _line({"type": "tick", "event_id": "k", "at": at(1)})),
        ("ticks", 1, 0, _line({"type": "tick", "event_id": "k", "at": at(1)})),
        ("orders", 0, 1, b"{not json"),
        ("orders", 0, 2, _line({**order, "event_id": "late", "at": at(9)})),
    ]
    stats = SourceStats()
    until = parse_utc(at(5))
    merged = kafka_events(lambda: messages, Window(None, until), stats)
    assert [(e.event_id, where) for e, where in merged] == [
        ("c1", "claims/1@0"),
        ("o1", "orders/0@0"),
        ("k", "ticks/0@0"),
        ("o2", "orders/1@0"),
    ]
    assert (stats.read, stats.invalid, stats.outside, stats.duplicate_ticks) == (7, 1, 1, 1)
    assert stats.first_invalid.startswith("orders/0@1")


# ------------------------------------------------------------------ charts


def test_by_event_time_reaccumulates_changes_recorded_in_log_order() -> None:
    # Running totals in log order: +5 at t=30, +3 at t=10, -5 at t=40.
    assert by_event_time([(30, 5), (10, 8), (40, 3)]) == [(10, 3), (30, 8), (40, 3)]
    assert by_event_time([]) == []


def test_pool_burn_down_writes_a_png_for_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "edge.png"
    pool_burn_down(
        path,
        [
            PoolSeries("unused", "cents", 1000, (), None),
            PoolSeries("stock", "items", 1, ((1_709_600_000_000_000, 1),), 1_709_700_000_000_000),
        ],
        "edge cases",
    )
    assert path.read_bytes().startswith(PNG_MAGIC)
    pool_burn_down(path, [], "nothing at all")
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_a_pool_panel_draws_issued_and_remaining_over_time() -> None:
    from matplotlib.figure import Figure

    from taskstream.charts import _pool_panel

    axes = Figure().subplots()
    start = 1_709_600_000_000_000
    pool = PoolSeries("p", "cents", 1000, ((start, 300), (start + 10, 1000)), start + 10)
    _pool_panel(axes, pool, end=start + 20)
    lines = {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
    assert lines["issued"] == [0, 300, 1000, 1000]
    assert lines["remaining"] == [1000, 700, 0, 0]
