"""A frozen worker's late changelog write, fenced (streams.fencing).

Real broker, real workers, RocksDB. The late write is put in the state
changelog by hand, exactly as a zombie's queued send lands: after the
current owner's writes, with the epoch of an earlier owner. Here it is a
tombstone of a user with a task in progress; applied, it would erase the
user, and the user's next orders would count for nothing.

1. Worker a owns the partition; the late write lands after a's last write
   of the user; a's next write (another user's order) is acknowledged past
   it: a sees the gap, distrusts its copy, reads what was written in the gap
   (an earlier epoch: it is the newer owner) and writes the user again, so
   log compaction keeps a's value and not the late tombstone.
2. a stops; worker b (empty data dir) rebuilds the partition from the
   changelog and skips the late write: the user survives and the next
   order counts (without the epoch rule it would count for nothing).
3. b stops; a starts again and, its copy distrusted, rebuilds from the whole
   changelog instead of going on from its own offsets.
Every order is counted, and `taskstream audit` agrees with replay.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from support.workers import TASKSTREAM, Deployment, WorkerProcess

from streams.config import STATE_TABLE
from streams.fencing import EPOCH_HEADER, epoch_of
from streams.partition_state import user_key
from taskstream.kafka_io import changelog_topic, producer

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
USER = "u_fence"


def _claim() -> bytes:
    return orjson.dumps(
        {
            "type": "task_claim",
            "v": 1,
            "event_id": "fence-claim",
            "user_id": USER,
            "template_id": "clear_box_per_order",
            "at": "2024-03-04T01:00:00Z",
            "user_tags": ["lapsed"],
        }
    )


def _order(n: int) -> bytes:
    return orjson.dumps(
        {
            "type": "order_paid",
            "v": 1,
            "event_id": f"fence-order-{n}",
            "order_id": f"fo-{n}",
            "user_id": USER,
            "amount_cents": 2000,
            "channel": "app",
            "at": f"2024-03-04T0{1 + n}:00:00Z",
        }
    )


def _other_users_order() -> bytes:
    return orjson.dumps(
        {
            "type": "order_paid",
            "v": 1,
            "event_id": "fence-other-order",
            "order_id": "fo-other",
            "user_id": "u_other",
            "amount_cents": 2000,
            "channel": "app",
            "at": "2024-03-04T02:30:00Z",
        }
    )


Record = tuple[bytes | None, bytes | None, int | None]  # key, value, epoch


def _state_changelog(deployment: Deployment) -> list[Record]:
    """Every record of the state changelog (partition 0), read to its end."""
    topic = changelog_topic(deployment.settings, STATE_TABLE)
    consumer = Consumer({"bootstrap.servers": deployment.bootstrap, "group.id": "fence-test"})
    try:
        tp = TopicPartition(topic, 0, 0)
        end = consumer.get_watermark_offsets(tp, timeout=10)[1]
        consumer.assign([tp])
        records: list[Record] = []
        deadline = time.monotonic() + 30
        while len(records) < end and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                # The worker may write on meanwhile: up to the end seen at first.
                if message.error() is None and (message.offset() or 0) < end:
                    records.append((message.key(), message.value(), epoch_of(message.headers())))
        assert len(records) == end
        return records
    finally:
        consumer.close()


def _highest_epoch(deployment: Deployment) -> int:
    return max((epoch or 0) for _, _, epoch in _state_changelog(deployment))


def _last_record_of_the_user(deployment: Deployment) -> tuple[bytes | None, int | None] | None:
    """(value, epoch) of the last changelog record of the user."""
    mine = [(v, e) for k, v, e in _state_changelog(deployment) if k == user_key(USER)]
    return mine[-1] if mine else None


def _late_tombstone(deployment: Deployment, epoch: int) -> None:
    client = producer(deployment.settings)
    client.produce(
        changelog_topic(deployment.settings, STATE_TABLE),
        None,
        user_key(USER),
        partition=0,
        headers=[(EPOCH_HEADER, str(epoch).encode())],
    )
    assert client.flush(30) == 0


def _advanced(n: int):  # type: ignore[no-untyped-def]
    def seen(messages: list[dict[str, object]]) -> bool:
        return any(m.get("caused_by") == f"fence-order-{n}" for m in messages)

    return seen


def _wait_for_log(worker: WorkerProcess, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in worker.log_since_start():
            return
        assert worker.running(), worker.log_tail()
        time.sleep(0.3)
    raise AssertionError(f"no {text!r} in worker {worker.label}'s log\n{worker.log_tail()}")


def test_a_late_write_of_an_earlier_owner_changes_nothing(kafka: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka, tmp_path, partitions=1)
    deployment.create_topics()
    deployment.publish_templates(SAMPLES / "templates.json", SAMPLES / "pools.json")
    deployment.open_pools("cash")
    events = deployment.reader("task-events")
    a = deployment.worker("a").start()
    b = deployment.worker("b")
    try:
        deployment.produce([_claim(), _order(1)])
        events.wait_until(_advanced(1), 90, why="order 1", workers=[a])

        epoch = _highest_epoch(deployment)
        assert epoch >= 1
        # An earlier owner's tombstone of the user, after a's last write of it.
        _late_tombstone(deployment, epoch - 1)
        deployment.produce([_other_users_order()])  # a writes (its partition record)
        _wait_for_log(a, "another worker wrote to the changelog between")
        # a, the newer owner, writes the user again, so that compaction (which
        # keeps a key's last record) keeps a's value, not the late tombstone.
        _wait_for_log(a, "rewrote 1 key(s) an earlier owner wrote late")
        deadline = time.monotonic() + 20  # the rewrite is sent, not yet delivered
        last = _last_record_of_the_user(deployment)
        while (last is None or last[0] is None) and time.monotonic() < deadline:
            time.sleep(0.5)
            last = _last_record_of_the_user(deployment)
        assert last is not None
        value, written_with = last
        assert value is not None  # the user, not the tombstone
        assert written_with == epoch  # by a
        a.stop()

        b.start()  # rebuilds the partition from the changelog
        _wait_for_log(b, "skipped 1 changelog write(s) of an earlier owner")
        deployment.produce([_order(2)])
        events.wait_until(_advanced(2), 90, why="order 2 (on b)", workers=[b])
        b.stop()

        a.start()
        _wait_for_log(a, "local copy distrusted")
        deployment.produce([_order(3), _order(4)])
        events.wait_until(_advanced(4), 90, why="order 4 (on a again)", workers=[a])
        completed = [m for m in events.messages if m.get("type") == "task_completed"]
        assert [m["caused_by"] for m in completed] == ["fence-order-4"]  # all 4 counted
        audit = subprocess.run(
            [TASKSTREAM, "audit", "--no-progress"],
            env={**os.environ, **deployment.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr
    finally:
        events.close()
        a.stop()
        b.stop()
