"""`taskstream simulate --from-kafka` on a real broker (no workers needed).

A small log goes to the input topics as `taskstream produce` sends it (users
spread over 3 partitions, ticks broadcast to each). Simulating from the
topics must give the report the same log gives from a file, name the
dry-out event by its topic, partition and offset, and keep one copy of
each tick; --since/--until cut the period.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from support.workers import Deployment

from taskstream.cli import main

pytestmark = pytest.mark.integration

TEMPLATE = {
    "template_id": "hot",
    "title": "one order, one coupon",
    "scenes": ["home"],
    "active_from": "2024-03-01T00:00:00Z",
    "active_until": "2024-04-01T00:00:00Z",
    "timezone": "UTC",
    "duration_days": 2,
    "target": 1,
    "count_by": "order",
    "order_rule": {"min_amount_cents": 1000, "channels": None},
    "reward": {"mode": "cumulative", "amount_cents": 100, "pool_id": "coupons"},
    "display": "visible",
}
POOL_TOTAL = 450  # four and a half coupons: the fifth buyer is refused
USERS = [f"user{n:02d}" for n in range(12)]


def _at(minutes: int) -> str:
    return f"2024-03-05T{minutes // 60:02d}:{minutes % 60:02d}:00Z"


def _log() -> list[bytes]:
    """Orders of 12 users one minute apart (no claims: they are synthesised),
    ticks every 5 minutes, one order the day before the period."""
    docs: list[dict[str, Any]] = [
        {"type": "order_paid", "event_id": "early", "order_id": "o-early", "user_id": "user00",
         "amount_cents": 5000, "channel": "app", "at": "2024-03-04T12:00:00Z"},
    ]  # fmt: skip
    for n, user in enumerate(USERS, start=1):
        docs.append(
            {"type": "order_paid", "event_id": f"o{n:02d}", "order_id": f"order-{n}",
             "user_id": user, "amount_cents": 1500, "channel": "app", "at": _at(n)}
        )  # fmt: skip
        if n % 5 == 0:
            docs.append({"type": "tick", "event_id": f"tick-{n}", "at": _at(n)})
    return [orjson.dumps({"v": 1, **doc}) for doc in docs]


def _simulate(env: dict[str, str], *source: str, out: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        main,
        [
            "simulate", "--no-progress",
            "--templates", str(out.parent / "templates.json"),
            "--pools", str(out.parent / "pools.json"),
            "--claim-all",
            "--since", "2024-03-05T00:00:00Z",
            "--until", "2024-03-06T00:00:00Z",
            "--json", str(out),
            *source,
        ],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    report["stderr"] = result.stderr
    return report


def test_simulating_the_topics_matches_the_file_and_names_the_dry_message(
    kafka: str, tmp_path: Path
) -> None:
    (tmp_path / "templates.json").write_bytes(orjson.dumps([TEMPLATE]))
    (tmp_path / "pools.json").write_bytes(
        orjson.dumps([{"pool_id": "coupons", "total": POOL_TOTAL, "unit": "cents"}])
    )
    lines = _log()
    (tmp_path / "events.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    deployment = Deployment(kafka, tmp_path / "deployment", partitions=3)
    deployment.create_topics()
    sent = deployment.produce(lines)
    assert sent == len(lines) + 2 * 2  # two ticks, each to 3 partitions

    from_topics = _simulate(deployment.env, "--from-kafka", out=tmp_path / "kafka.json")
    from_file = _simulate(
        {}, "--events", str(tmp_path / "events.jsonl"), out=tmp_path / "file.json"
    )
    assert "4 broadcast tick copies merged" in from_topics["stderr"]
    assert "1 outside --since/--until" in from_topics["stderr"]

    (hot,) = from_topics["templates"]
    assert hot == from_file["templates"][0]
    assert (hot["claimed_users"], hot["completions"], hot["payout_cents"]) == (12, 12, 400)
    assert hot["rewards_rejected"] == 8
    assert from_topics["events"] == from_file["events"] == 12 + 2

    (pool,) = from_topics["pools"]
    dry = pool["runs_dry"]
    assert dry["event_id"] == "o05"  # the fifth buyer's order
    partition, offset = deployment.positions["o05"]
    assert dry["where"] == f"orders/{partition}@{offset}"
    assert from_file["pools"][0]["runs_dry"]["where"] == "line 6"  # after "early" and o01..o04
    assert (pool["issued"], pool["remaining"], pool["refusals"]) == (400, 50, 8)
