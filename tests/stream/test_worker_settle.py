"""The worker takes the next fetch before the brokers acknowledged the last
one (`Worker.settle`): positions are recorded only after the delivery wait,
each unacknowledged batch keeps its own redo slot, and a reload writes and
sends them all again. A fake consumer, store and producer; the real
processor and catalog."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from faust.types import TP
from unit.engine_builders import claim, t, template

from app.catalog import parse_catalog
from schemas.codec import encode
from streams.config import Settings
from streams.kafka.positions import CommitPositions
from streams.kafka.producer import DeliveryFailed
from streams.monitor.metrics import WorkerMetrics
from streams.partition_state import (
    REDO_SLOTS,
    PartitionRecord,
    decode_partition,
    decode_redo,
    encode_partition,
    partition_key,
    redo_key,
)
from streams.worker import worker as worker_module
from streams.worker.worker import LOOK_AT_LEAST_SECONDS, SETTLE_SECONDS, Worker

SETTINGS = Settings.from_env({})
CATALOG = parse_catalog([template()], None)
TOPICS = {SETTINGS.topic(role): role for role in ("claims", "orders", "refunds", "ticks")}
CLAIMS = SETTINGS.topic("claims")
TASK_EVENTS = SETTINGS.topic("task-events")


@dataclass
class Fetched:
    """What the worker reads of an aiokafka ConsumerRecord."""

    offset: int
    key: bytes
    value: bytes
    timestamp_type: int = 0
    timestamp: int | None = None


class FakeApp:
    rebalancing = False
    in_recovery = False
    should_stop = False
    consumer_generation_id = 1

    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer


class FakeConsumer:
    """Every input of partition 0 read to its end at `ends`."""

    def __init__(self) -> None:
        self.ends: dict[TP, int] = {TP(topic, 0): 0 for topic in TOPICS}
        self.commit_positions = CommitPositions()
        self.seen = 1e12  # marks read after anything the test sends
        self.held_back: set[TP] = set()  # never held back here

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]

    def read_mark(self, tp: TP) -> tuple[int, float]:
        return self.ends[tp], self.seen

    async def rewind(self, tp: TP, offset: int) -> None:
        raise AssertionError("no rewind expected")

    def hold_back(self, tps: Any) -> None: ...

    def let_go(self, tps: Any) -> None: ...


class FakeStore:
    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get(partition, {}).get(key)

    def items_from(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in sorted(self.data.get(partition, {}).items()):
            if key.startswith(prefix):
                yield key, value

    def write(self, partition: int, writes: Iterable[tuple[bytes, bytes | None]]) -> None:
        db = self.data.setdefault(partition, {})
        for key, value in writes:
            if value is None:
                db.pop(key, None)
            else:
                db[key] = value

    def acknowledge(self, delivered: Any) -> None: ...


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.waits = 0
        self.fail = False

    def send_all(self, items: Iterable[tuple[str, Any, bytes, Any]], headers: Any = None) -> None:
        self.sent.extend((topic, value) for topic, _key, value, _partition in items)

    def send_outputs(self, outputs: Iterable[Any], topic_of: Mapping[str, str]) -> None:
        self.sent.extend((topic_of[output.role], output.value) for output in outputs)

    async def wait(self) -> list[Any]:
        self.waits += 1
        if self.fail:
            raise DeliveryFailed("1 record(s) not delivered: broker down")
        return []


def _worker(store: FakeStore, producer: FakeProducer) -> Worker:
    app = FakeApp(FakeConsumer())
    return Worker(
        app,
        SETTINGS,
        store,  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        catalog=lambda: CATALOG,
        role_of_topic=TOPICS,
        metrics=WorkerMetrics(app, SETTINGS, (), catalog_ready=lambda: True),
    )


def _claims(worker: Worker, first: int, count: int) -> None:
    """A fetch of `count` claims of distinct users from offset `first`."""
    records = [
        Fetched(o, f"u{o}".encode(), encode(claim(at=t(2, 10), user=f"u{o}", event_id=f"c{o}")))
        for o in range(first, first + count)
    ]
    worker.consumer.ends[TP(CLAIMS, 0)] = first + count  # type: ignore[attr-defined]
    asyncio.run(worker.on_records({TP(CLAIMS, 0): records}, 1))


def _position(worker: Worker) -> int | None:
    return worker.consumer.commit_positions.positions.get(TP(CLAIMS, 0))


def _claimed(producer: FakeProducer) -> list[str]:
    return [
        orjson.loads(value)["caused_by"]
        for topic, value in producer.sent
        if topic == TASK_EVENTS and orjson.loads(value)["type"] == "task_claimed"
    ]


@pytest.fixture
def clock(monkeypatch: Any) -> list[float]:
    now = [1_000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: now[0])
    return now


def test_positions_wait_for_delivery_and_redo_slots_bound_the_batches_in_flight(
    clock: list[float],
) -> None:
    store, producer = FakeStore(), FakeProducer()
    worker = _worker(store, producer)
    for batch in range(REDO_SLOTS - 1):
        _claims(worker, batch, 1)
        assert producer.waits == 0
        assert _position(worker) is None
    assert _claimed(producer) == ["c0", "c1", "c2"]  # the outputs went out at once
    # Three batches hold three slots: the fourth waits for their delivery
    # before its step (one slot always stays free), then goes in flight.
    _claims(worker, 3, 1)
    assert producer.waits == 1
    assert _position(worker) == 3
    assert [result.record.seq for _, result in worker.unsettled] == [4]
    # Each batch kept its redo record in a slot of its own.
    seqs = [decode_redo(store.get(0, redo_key(0, slot)) or b"").seq for slot in range(4)]
    assert seqs == [4, 1, 2, 3]


def test_a_fetch_settles_the_batches_before_it_not_its_own(clock: list[float]) -> None:
    store, producer = FakeStore(), FakeProducer()
    worker = _worker(store, producer)
    _claims(worker, 0, 1)
    clock[0] += 2 * SETTLE_SECONDS
    _claims(worker, 1, 1)  # due: the first batch is settled, then this one steps
    assert producer.waits == 1
    assert _position(worker) == 1
    assert [result.record.seq for _, result in worker.unsettled] == [2]


def test_the_timer_leaves_batches_to_the_next_fetch_while_fetches_come(
    clock: list[float],
) -> None:
    store, producer = FakeStore(), FakeProducer()
    worker = _worker(store, producer)
    _claims(worker, 0, 1)
    clock[0] += 0.6 * SETTLE_SECONDS
    _claims(worker, 1, 1)
    clock[0] += 0.6 * SETTLE_SECONDS
    asyncio.run(worker.settle_if_due())  # the oldest is due, but a fetch came since
    assert producer.waits == 0
    clock[0] += SETTLE_SECONDS
    asyncio.run(worker.settle_if_due())  # no fetch for SETTLE_SECONDS: the timer settles
    assert producer.waits == 1
    assert _position(worker) == 2


def test_an_idle_partition_is_settled_by_the_timer(clock: list[float]) -> None:
    store, producer = FakeStore(), FakeProducer()
    worker = _worker(store, producer)
    _claims(worker, 0, 2)
    asyncio.run(worker.settle_if_due())
    assert producer.waits == 0  # not yet due
    clock[0] += 2 * SETTLE_SECONDS
    asyncio.run(worker.settle_if_due())
    assert producer.waits == 1
    assert _position(worker) == 2


def test_a_revoke_drains_what_is_in_flight(clock: list[float]) -> None:
    store, producer = FakeStore(), FakeProducer()
    worker = _worker(store, producer)
    _claims(worker, 0, 1)
    asyncio.run(worker.drain())
    assert producer.waits == 1
    assert _position(worker) == 1


def test_a_failed_delivery_records_nothing_and_a_reload_sends_every_slot_again(
    clock: list[float],
) -> None:
    store, producer = FakeStore(), FakeProducer()
    worker = _worker(store, producer)
    for batch in range(REDO_SLOTS + 1):  # settles after batch 3; 4 and 5 in flight
        _claims(worker, batch, 1)
    assert producer.waits == 1
    assert _position(worker) == 3
    producer.fail = True
    with pytest.raises(DeliveryFailed):
        asyncio.run(worker.drain())
    assert _position(worker) == 3  # batches 4 and 5 not acknowledged: not committed
    assert worker.caches == {}  # forgotten: reloaded from the table
    # Batches are numbered from 1: batch 4 went to slot 0, batch 5 to slot 1.
    assert decode_redo(store.get(0, redo_key(0, 1)) or b"").seq == 5
    producer.fail = False
    producer.sent.clear()
    _claims(worker, 5, 1)  # the reload re-sends every slot, oldest first
    assert _claimed(producer) == ["c1", "c2", "c3", "c4", "c5"]
    record = decode_partition(store.get(0, partition_key(0)) or b"")
    assert record.seq == 6
    assert record.next_offset["claims"] == 6


def test_a_batch_cut_short_is_applied_again_from_its_slot(clock: list[float]) -> None:
    store, producer = FakeStore(), FakeProducer()
    worker = _worker(store, producer)
    _claims(worker, 0, 1)
    _claims(worker, 1, 1)
    # As a changelog that holds batch 2's redo record but lost the rest of
    # the batch (its user and partition record) would leave the table.
    db = store.data[0]
    del db[b"u:u1"]
    db[partition_key(0)] = encode_partition(PartitionRecord(0, 1, {"claims": 1}))
    fresh = _worker(store, FakeProducer())
    _claims(fresh, 2, 1)
    assert b"u:u1" in db
    record = decode_partition(db[partition_key(0)])
    assert record.seq == 3
    assert record.next_offset["claims"] == 3


# ------------------------------------------------- the timer loop's sleep


def test_the_timer_loop_sleeps_until_the_settle_is_due(clock: list[float]) -> None:
    worker = _worker(FakeStore(), FakeProducer())
    assert worker.seconds_to_next_look() is None  # nothing to look at: the longest sleep
    _claims(worker, 0, 1)
    assert worker.seconds_to_next_look() == pytest.approx(SETTLE_SECONDS)
    clock[0] += 0.4 * SETTLE_SECONDS
    assert worker.seconds_to_next_look() == pytest.approx(0.6 * SETTLE_SECONDS)
    asyncio.run(worker.drain())
    assert worker.seconds_to_next_look() is None


def test_an_idle_wait_ending_sooner_comes_first(clock: list[float], monkeypatch: Any) -> None:
    worker = _worker(FakeStore(), FakeProducer())
    monkeypatch.setattr(worker_module.time, "time", lambda: 5_000.0)
    _claims(worker, 0, 1)
    worker.idle_due[0] = 5_000.01
    assert worker.seconds_to_next_look() == pytest.approx(0.01)
    worker.idle_due[0] = 4_999.0  # already over (held by a rebalance, say)
    assert worker.seconds_to_next_look() == pytest.approx(-1.0)


def test_a_batch_wakes_the_timer_loop() -> None:
    worker = _worker(FakeStore(), FakeProducer())

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        look = asyncio.ensure_future(worker.next_look())  # nothing due: up to a second
        await asyncio.sleep(0.01)
        await worker.on_records({}, 1)  # an empty fetch steps nothing...
        await asyncio.sleep(0.05)
        assert not look.done()
        records = [Fetched(0, b"u0", encode(claim(at=t(2, 10), user="u0", event_id="c0")))]
        worker.consumer.ends[TP(CLAIMS, 0)] = 1  # type: ignore[attr-defined]
        await worker.on_records({TP(CLAIMS, 0): records}, 1)  # ...a batch does
        await look
        return loop.time() - began

    assert asyncio.run(scenario()) < 0.5


def test_a_partition_waiting_for_the_next_fetch_does_not_spin_the_timer_loop() -> None:
    """A head waiting for a quiet input's mark from a fetch sent after it
    (`idle_until` = now: look again after the next fetch) once made every
    timer round wake the next at once: the event loop never ran anything
    else, so the fetch it waited for never came (the fault suite under a
    CPU hog: both workers at full CPU, no log line for minutes)."""
    worker = _worker(FakeStore(), FakeProducer())
    worker.consumer.seen = 0.0  # type: ignore[attr-defined]  # every mark from before
    _claims(worker, 0, 1)
    assert 0 in worker.idle_due  # held: the other inputs' marks are older than it

    async def scenario() -> tuple[int, float]:
        others = 0
        loop = asyncio.get_running_loop()

        async def fetch_path() -> None:  # what else runs in the loop
            nonlocal others
            while True:
                others += 1
                await asyncio.sleep(0)

        side = asyncio.ensure_future(fetch_path())
        last_batch_at = worker.last_unsettled_at
        began = loop.time()
        for _ in range(5):
            await worker.timer_round()
        took = loop.time() - began
        side.cancel()
        assert worker.last_unsettled_at == last_batch_at  # looks did not put the settle off
        return others, took

    others, took = asyncio.run(scenario())
    assert others >= 5  # the loop gave way to the rest
    assert took >= 4 * LOOK_AT_LEAST_SECONDS  # and slept between looks, not spun
    assert 0 in worker.idle_due  # still waiting: no fetch came


def test_a_step_that_changed_nothing_still_records_its_positions(clock: list[float]) -> None:
    """A new owner whose first fetches are all redeliveries (the previous
    owner processed them; the group had not committed yet) changes nothing,
    yet the group's commits must reach the end of the input."""
    store, producer = FakeStore(), FakeProducer()
    first = _worker(store, producer)
    _claims(first, 0, 3)
    asyncio.run(first.drain())
    second = _worker(store, producer)  # took over: the commits are still to come
    _claims(second, 0, 3)  # the same three again: redeliveries
    assert _position(second) is None
    clock[0] += SETTLE_SECONDS
    asyncio.run(second.settle_if_due())
    assert _position(second) == 3
