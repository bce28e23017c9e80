"""`taskstream audit` and `taskstream explain` against a real broker and worker.

One worker processes 60 users who each complete a two-order task paid from
a pool that runs dry after 20 rewards (so decisions came from buckets,
refill requests and a refusal announced by the master), plus a scripted
user whose every event fails to count for a different reason. Then:

- audit agrees (exit 0), its HTML report and PNG burn-down are written, the
  pool reconciles (20 paid, the rest refused after the master said dry);
- explain gives the scripted user's reasons, event by event;
- the reward topic is tampered with: the first message of a partition is
  deleted (Kafka's DeleteRecords), a copy of another reward is produced
  with an altered amount, a forged reward is injected; audit exits 3 and
  lists exactly those three.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from PIL import Image
from support.workers import TASKSTREAM, Deployment, WorkerProcess

from taskstream.kafka_io import producer

pytestmark = pytest.mark.integration

T0 = 1_709_800_000  # 2024-03-07T08:26:40Z, inside the template's window
HOUR = 3600
USERS = 60
REWARD = 500
POOL_TOTAL = 20 * REWARD
SCRIPTED = "script-user"

TEMPLATE = {
    "template_id": "two",
    "title": "two orders, one coupon",
    "scenes": ["home"],
    "active_from": "2024-03-01T00:00:00Z",
    "active_until": "2024-04-01T00:00:00Z",
    "timezone": "UTC",
    "duration_days": 3,
    "target": 2,
    "count_by": "order",
    "order_rule": {"min_amount_cents": 1000, "channels": None},
    "claim_rule": {"user_tags_any": [], "user_tags_none": [], "max_claims": 1},
    "reward": {"mode": "cumulative", "amount_cents": REWARD, "pool_id": "coupons"},
    "display": "visible",
    "refund_policy": "rollback",
    "priority": 0,
    "exclusive": False,
}


def _at(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + seconds))


def _claim(event_id: str, user: str, t: int) -> dict[str, Any]:
    return {"type": "task_claim", "v": 1, "event_id": event_id, "user_id": user,
            "template_id": "two", "at": _at(t), "user_tags": []}  # fmt: skip


def _order(event_id: str, order_id: str, user: str, amount: int, t: int) -> dict[str, Any]:
    return {"type": "order_paid", "v": 1, "event_id": event_id, "order_id": order_id,
            "user_id": user, "amount_cents": amount, "channel": "app", "at": _at(t)}  # fmt: skip


def _log() -> list[bytes]:
    events: list[dict[str, Any]] = []
    users = [f"buyer{n:03d}" for n in range(USERS)]
    events += [_claim(f"c-{u}", u, n) for n, u in enumerate(users)]
    for step in (1, 2):
        events += [
            _order(f"o{step}-{u}", f"o{step}-{u}", u, 2_000, step * HOUR + n)
            for n, u in enumerate(users)
        ]
    u = SCRIPTED
    events += [
        _order("s-o0", "o0", u, 2_000, 0),  # before any claim
        _claim("s-c", u, HOUR),
        _order("s-o1", "o1", u, 500, 2 * HOUR),  # too small
        _order("s-o2", "o2", u, 2_000, 3 * HOUR),  # counts: 1/2
        _order("s-o2-again", "o2", u, 2_000, 4 * HOUR),  # the same order again
        {
            "type": "order_refunded",
            "v": 1,
            "event_id": "s-r2",
            "refund_id": "r2",
            "order_id": "o2",
            "user_id": u,
            "amount_cents": 2_000,
            "at": _at(5 * HOUR),
        },
        _order("s-o3", "o3", u, 2_000, 4 * 24 * HOUR),  # after the 3-day deadline
    ]
    return [orjson.dumps(e) for e in events]


class Audited:
    def __init__(self, kafka: str, root: Path) -> None:
        self.root = root
        self.deployment = Deployment(kafka, root, partitions=4)
        self.deployment.create_topics()
        templates, pools = root / "templates.json", root / "pools.json"
        templates.write_bytes(orjson.dumps([TEMPLATE]))
        pools.write_bytes(
            orjson.dumps([{"pool_id": "coupons", "total": POOL_TOTAL, "unit": "cents"}])
        )
        self.deployment.publish_templates(templates, pools)
        self.deployment.produce(_log())
        self.worker: WorkerProcess = self.deployment.worker("a").start()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TASKSTREAM, *args],
            env={**os.environ, **self.deployment.env},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def audit(self, name: str) -> tuple[int, dict[str, Any], str]:
        report, json_path = self.root / f"{name}.html", self.root / f"{name}.json"
        done = self.cli("audit", "--no-progress", "--report", str(report), "--json", str(json_path))
        assert done.returncode in (0, 3), done.stderr
        return done.returncode, orjson.loads(json_path.read_bytes()), done.stdout


@pytest.fixture(scope="module")
def audited(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    run = Audited(kafka, tmp_path_factory.mktemp("audit"))
    rewards = run.deployment.reader("rewards")
    try:
        rewards.wait_until(
            lambda ms: len({m["reward_id"] for m in ms}) >= USERS,
            120,
            why="a decision for every buyer",
            workers=[run.worker],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the scripted user's last order is in
            if all(c >= e for c, e in run.deployment.group_lag("orders").values()):
                break
            time.sleep(0.3)
        # The tables (pools status) catch up with the last batch's changelog.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            code, sheets = run.deployment.pools_status()
            sheet = sheets.get("coupons")
            if code == 0 and sheet is not None and sheet["issued"] == POOL_TOTAL:
                break
            time.sleep(0.5)
        yield run
    finally:
        rewards.close()
        run.worker.stop()


def test_audit_of_a_run_that_agrees(audited: Audited) -> None:
    code, report, stdout = audited.audit("clean")
    assert code == 0, stdout
    assert report["agrees"] is True
    assert report["findings"] == []
    assert report["found"] == report["expected"] > USERS
    (pool,) = report["pools"]
    assert pool["issued"] == POOL_TOTAL
    assert pool["granted"] == POOL_TOTAL // REWARD
    assert pool["rejected"] == USERS - POOL_TOTAL // REWARD
    assert pool["denials"] >= 1  # the master announced the pool dry
    assert pool["problems"] == []
    assert pool["at_master"] + pool["in_buckets"] == 0
    chart = audited.root / "clean.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(chart) as image:
        image.verify()
    assert 'src="clean.png"' in (audited.root / "clean.html").read_text()


def test_explain_gives_the_reason_for_each_event(audited: Audited) -> None:
    done = audited.cli("explain", SCRIPTED, "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    expected_in_order = [
        "order_paid o0 2000c",
        "no task claimed: the order counts for nothing",  # before the claim
        "claimed two",
        "two: does not count (amount 500 < min 1000)",  # too small
        "two: counted, progress 1/2",
        "duplicate order o2: already applied",  # the same order twice
        "order o2: 0 cents left after refunds",  # refunded
        "task_rolled_back two 0/2",
        "task two expired at 0/2",
        "two: order at/after the deadline",  # after the deadline
        "two (task-",  # the task now
        "expired, progress 0/2",
        "agree with the replay",
    ]
    position = 0
    for needle in expected_in_order:
        found = text.find(needle, position)
        assert found >= 0, f"{needle!r} not found after position {position}:\n{text}"
        position = found
    paid = audited.cli("explain", "buyer000", "--no-progress")
    assert paid.returncode == 0, paid.stdout
    assert "reward_granted 500c two from pool coupons (completion), caused by" in paid.stdout
    nobody = audited.cli("explain", "nobody-at-all", "--no-progress")
    assert nobody.returncode == 0
    assert "no events for this user" in nobody.stdout


def test_audit_lists_exactly_the_tampered_rewards(audited: Audited) -> None:
    deployment = audited.deployment
    topic = deployment.settings.topic("rewards")
    rewards = deployment.reader("rewards")
    rewards.poll(2.0)
    granted = [m for m in rewards.messages if m["type"] == "reward_granted"]
    rewards.close()
    # Removed: the first message of a partition whose first message is a grant.
    admin = AdminClient({"bootstrap.servers": deployment.bootstrap})
    removed = _first_grant_of_a_partition(deployment, topic)
    assert removed is not None, "no partition starts with a grant"
    partition, removed_doc = removed
    futures = admin.delete_records([TopicPartition(topic, partition, 1)])
    for future in futures.values():
        future.result(timeout=30)
    # Altered: another grant again, with another amount. Injected: a forged grant.
    altered = next(g for g in granted if g["event_id"] != removed_doc["event_id"])
    forged = {**altered, "event_id": "evt-forged", "reward_id": "rwd-forged",
              "user_id": "buyer001"}  # fmt: skip
    client = producer(deployment.settings)
    for doc in ({**altered, "amount_cents": 5_000}, forged):
        client.produce(topic, orjson.dumps(doc), str(doc["user_id"]).encode())
    assert client.flush(30) == 0

    code, report, stdout = audited.audit("tampered")
    assert code == 3, stdout
    assert report["agrees"] is False
    findings = {(f["kind"], f["event_id"]) for f in report["findings"]}
    missing = [f for f in report["findings"] if f["kind"] == "missing"]
    assert len(report["findings"]) == 3, stdout
    assert ("different", altered["event_id"]) in findings
    assert ("extra", "evt-forged") in findings
    # The removed grant is missing (the replay pays it again, or refuses it
    # if the pool had run dry by then in event time: same reward either way).
    assert [f["expected"]["reward_id"] for f in missing] == [removed_doc["reward_id"]]
    assert "DIFFERENT" in stdout
    assert "MISSING" in stdout
    assert "EXTRA" in stdout


def _first_grant_of_a_partition(
    deployment: Deployment, topic: str
) -> tuple[int, dict[str, Any]] | None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": deployment.bootstrap,
            "group.id": "probe",
            "enable.auto.commit": False,
        }
    )
    try:
        for partition in range(deployment.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            message = consumer.poll(10)
            if message is None or message.error() is not None:
                continue
            doc = orjson.loads(message.value())
            if doc["type"] == "reward_granted" and message.offset() == 0:
                return partition, doc
    finally:
        consumer.close()
    return None
