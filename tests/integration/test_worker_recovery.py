"""The walking skeleton on a real broker: a worker process counts each user's
orders in a RocksDB table backed by a changelog, and survives SIGKILL and the
loss of its local disk without losing or double-counting anything."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from support.workers import Deployment, produce_raw

pytestmark = pytest.mark.integration

USERS = [f"user-{n:03d}" for n in range(40)]


def paid_orders(first: int, count: int, rng: random.Random) -> list[dict[str, object]]:
    return [
        {
            "type": "order_paid",
            "v": 1,
            "event_id": f"evt-{n:06d}",
            "order_id": f"ord-{n:06d}",
            "user_id": rng.choice(USERS),
            "amount_cents": rng.randint(100, 50_000),
            "channel": "app",
            "at": f"2026-11-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
        }
        for n in range(first, first + count)
    ]


def lines(orders: list[dict[str, object]]) -> list[bytes]:
    return [orjson.dumps(order) for order in orders]


def caused(messages: list[dict[str, object]]) -> set[object]:
    return {m["caused_by"] for m in messages}


def assert_each_order_counted_exactly_once(
    outputs: list[dict[str, object]], orders: list[dict[str, object]]
) -> None:
    by_id: dict[object, dict[str, object]] = {}
    for output in outputs:
        earlier = by_id.setdefault(output["event_id"], output)
        assert earlier == output, f"two contents for {output['event_id']}: {earlier} / {output}"
    unique = list(by_id.values())
    assert caused(unique) == {o["event_id"] for o in orders}, "an order was lost"
    assert len(unique) == len(orders), "an order was counted twice under two ids"

    expected_sequence: dict[object, list[object]] = defaultdict(list)
    for order in orders:
        expected_sequence[order["user_id"]].append(order["order_id"])
    seen_sequence: dict[object, list[tuple[int, object]]] = defaultdict(list)
    for output in unique:
        seen_sequence[output["user_id"]].append((int(output["count"]), output["order_id"]))
    for user, expected in expected_sequence.items():
        counted = sorted(seen_sequence[user])
        # Counts continue across crashes: 1..n with no gap and no repeat,
        # in the order the user's orders were produced.
        assert [c for c, _ in counted] == list(range(1, len(expected) + 1)), user
        assert [o for _, o in counted] == expected, user


def test_worker_survives_sigkill_and_lost_rocksdb_folder(kafka: str, tmp_path: Path) -> None:
    rng = random.Random(20261122)
    deployment = Deployment(kafka, tmp_path, partitions=8)
    deployment.create_topics()
    outputs = deployment.reader("order-counts")
    dead = deployment.reader("dead-letters")
    # The first worker never commits an offset before it is killed: the
    # restart then starts from partitions with no committed offset, the case
    # streams/faust_fixes.py repairs (without it, events were skipped).
    worker = deployment.worker("a", TASKSTREAM_COMMIT_INTERVAL="3600").start()
    sent: list[dict[str, object]] = []
    try:
        # Phase 1: a first batch, plus messages no worker can process.
        phase1 = paid_orders(0, 300, rng)
        deployment.produce(lines(phase1))
        bad = [
            (b"user-001", b"{not json"),
            (b"user-002", b'{"type":"order_paid","v":1,"event_id":"x","user_id":"user-002"}'),
            (
                b"user-003",
                b'{"type":"order_paid","v":1,"event_id":"y","order_id":"o",'
                b'"user_id":"user-003","amount_cents":-5,"channel":"app","at":"2026-11-01T00:00:00Z"}',
            ),
        ]
        produce_raw(deployment, "orders", bad)
        sent += phase1
        outputs.wait_until(
            lambda ms: caused(ms) >= {o["event_id"] for o in sent},
            120,
            why="phase 1 outputs",
            workers=[worker],
        )

        # Phase 2: SIGKILL, lose the RocksDB folder, produce while it is down,
        # restart: the table must come back from the changelog.
        worker.kill()
        rocksdb_files = list(worker.data_dir.rglob("CURRENT"))
        assert rocksdb_files, f"no RocksDB database under {worker.data_dir}"
        worker.wipe_state()
        phase2 = paid_orders(300, 300, rng)
        deployment.produce(lines(phase2))
        sent += phase2
        worker = deployment.worker("a").start()
        outputs.wait_until(
            lambda ms: caused(ms) >= {o["event_id"] for o in sent},
            120,
            why="phase 2 outputs after restart on an empty disk",
            workers=[worker],
        )
        assert "without a committed offset" in worker.log_since_start(), (
            "the restart did not exercise partitions without a committed offset"
        )

        # Phase 3: SIGKILL in the middle of a burst (uncommitted offsets, so
        # inputs are delivered again), restart with the disk kept.
        phase3 = paid_orders(600, 3000, rng)
        deployment.produce(lines(phase3))
        sent += phase3
        outputs.wait_until(
            lambda ms: len(caused(ms) & {o["event_id"] for o in phase3}) >= 200,
            120,
            why="part of phase 3",
            workers=[worker],
        )
        worker.kill()
        worker = deployment.worker("a").start()
        outputs.wait_until(
            lambda ms: caused(ms) >= {o["event_id"] for o in sent},
            180,
            why="phase 3 outputs after a mid-burst SIGKILL",
            workers=[worker],
        )
        outputs.poll(2.0)  # late duplicates, if any, must agree too
        print(
            f"outputs: {len(outputs.messages)} messages for {len(sent)} orders "
            f"({len(outputs.messages) - len(sent)} re-emitted after the crashes)"
        )
        assert_each_order_counted_exactly_once(outputs.messages, sent)

        dead.wait_until(
            lambda ms: len({m["event_id"] for m in ms}) >= len(bad),
            60,
            why="dead letters",
            workers=[worker],
        )
        letters = {m["event_id"]: m for m in dead.messages}
        assert len(letters) == len(bad)
        reasons = sorted(str(m["reason"]) for m in letters.values())
        assert reasons[0].startswith("amount_cents"), reasons
        assert reasons[1].startswith("not JSON"), reasons
        assert reasons[2].startswith("order_id"), reasons
    finally:
        worker.stop()
        outputs.close()
        dead.close()
