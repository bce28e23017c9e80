"""The worker fetches again input messages that never reached its processor
(streams/worker/lost_fetches.py), with a fake consumer and store."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP

from streams.config import Settings
from streams.kafka.transport import Consumer
from streams.monitor.metrics import WorkerMetrics
from streams.partition_state import PartitionRecord, encode_partition, partition_key
from streams.worker import worker as worker_module
from streams.worker.worker import Worker

SETTINGS = Settings.from_env({})


CLAIMS, ORDERS = SETTINGS.topic("claims"), SETTINGS.topic("orders")


class FakeApp:
    rebalancing = False
    in_recovery = False

    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer


class FakeConsumer:
    def __init__(self, highwaters: dict[TP, int]) -> None:
        self.highwaters = highwaters
        self.rewinds: list[tuple[TP, int]] = []
        self.held_back: set[TP] = set()

    def assignment(self) -> set[TP]:
        return set(self.highwaters)

    def highwater(self, tp: TP) -> int:
        return self.highwaters[tp]

    def read_mark(self, tp: TP) -> tuple[int, None]:
        return self.highwaters[tp], None  # when: not known (as before a fetch's)

    async def rewind(self, tp: TP, offset: int) -> None:
        self.rewinds.append((tp, offset))

    async def refetch_skipped(self, awaited: Any = None) -> int:
        return 0


class FakeStore:
    def __init__(self, records: dict[int, PartitionRecord]) -> None:
        self.records = records

    def get(self, partition: int, key: bytes) -> bytes | None:
        record = self.records.get(partition)
        assert key == partition_key(partition)
        return None if record is None else encode_partition(record)


def _worker(consumer: FakeConsumer, records: dict[int, PartitionRecord]) -> Worker:
    store: Any = FakeStore(records)
    return Worker(
        FakeApp(consumer),
        SETTINGS,
        store,
        producer=None,  # type: ignore[arg-type]  # not reached
        catalog=lambda: None,  # type: ignore[arg-type, return-value]
        role_of_topic={CLAIMS: "claims", ORDERS: "orders"},
        metrics=WorkerMetrics(FakeApp(consumer), SETTINGS, (), catalog_ready=lambda: True),
    )


def test_messages_waiting_past_a_still_next_offset_are_fetched_again(monkeypatch: Any) -> None:
    clock = [1_000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    claims6, orders6 = TP(CLAIMS, 6), TP(ORDERS, 6)
    consumer = FakeConsumer({claims6: 252, orders6: 209})
    record = PartitionRecord(6, seq=40, next_offset={"claims": 209, "orders": 209})
    worker = _worker(consumer, {6: record})

    async def looks() -> None:
        for _ in range(6):  # every 2 s, as the agent's timer
            await worker.refetch_lost_inputs()
            clock[0] += 2

    asyncio.run(looks())
    # claims/6 has 43 messages beyond offset 209, which never moved: fetched
    # again once, after 10 s; orders/6 has nothing waiting.
    assert consumer.rewinds == [(claims6, 209)]
    # Not processed here yet: the lag gauges read the table's record, not
    # the group's committed offsets.
    assert worker.metrics.records[6] == record


def test_held_back_or_moving_inputs_and_rebalances_are_left_alone(monkeypatch: Any) -> None:
    clock = [1_000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    claims1, orders1 = TP(CLAIMS, 1), TP(ORDERS, 1)
    consumer = FakeConsumer({claims1: 5_000, orders1: 5_000})
    records = {1: PartitionRecord(1, seq=1, next_offset={"claims": 10, "orders": 10})}
    worker = _worker(consumer, records)
    worker.held_back.add(claims1)  # waiting in the buffer on purpose

    async def looks() -> None:
        for step in range(12):
            worker.app.rebalancing = 4 <= step < 6
            await worker.refetch_lost_inputs()
            clock[0] += 2
            # orders/1 is being processed: its next offset moves.
            records[1] = PartitionRecord(
                1, seq=1 + step, next_offset={"claims": 10, "orders": 11 + step}
            )

    asyncio.run(looks())
    assert consumer.rewinds == []


class SkippingConsumer(FakeConsumer):
    """The real note_skipped/refetch_skipped over the fake's assignment and rewind."""

    note_skipped = Consumer.note_skipped
    refetch_skipped = Consumer.refetch_skipped  # type: ignore[assignment]

    def __init__(self, highwaters: dict[TP, int]) -> None:
        super().__init__(highwaters)
        self._skipped: dict[TP, int] = {}
        self.app = FakeApp(self)


def test_records_skipped_in_a_rebalance_are_fetched_again_once_it_is_over() -> None:
    claims4, claims5, gone = TP(CLAIMS, 4), TP(CLAIMS, 5), TP(CLAIMS, 0)
    consumer = SkippingConsumer({claims4: 300, claims5: 300})
    consumer.app.rebalancing = True
    consumer.note_skipped(claims4, 250)
    consumer.note_skipped(claims4, 200)  # an earlier fetch of it, skipped later
    consumer.note_skipped(claims5, 120)
    consumer.note_skipped(gone, 7)  # revoked meanwhile: its new owner seeks it

    async def run() -> list[int]:
        during = await consumer.refetch_skipped()  # still rebalancing: later
        consumer.app.rebalancing = False
        after = await consumer.refetch_skipped()
        again = await consumer.refetch_skipped()  # each skip is fetched again once
        return [during, after, again]

    assert asyncio.run(run()) == [0, 2, 0]
    assert consumer.rewinds == [(claims4, 200), (claims5, 120)]


def test_a_skipped_partition_is_fetched_again_from_what_the_processor_awaits() -> None:
    """Loaded after the rebalance, the partition is fetched again from its
    oldest held event (230); the records skipped in the rebalance start later
    (715). Fetched again from 715, the processor would drop everything while
    it waits for 230: the earlier of the two wins."""
    orders1, orders2 = TP(ORDERS, 1), TP(ORDERS, 2)
    consumer = SkippingConsumer({orders1: 2000, orders2: 2000})
    consumer.note_skipped(orders1, 715)
    consumer.note_skipped(orders2, 90)

    asyncio.run(consumer.refetch_skipped({orders1: 230, orders2: 400}))
    assert consumer.rewinds == [(orders1, 230), (orders2, 90)]


def test_the_worker_hands_over_what_its_loaded_partitions_await() -> None:
    worker = _worker(FakeConsumer({}), {})
    cache = worker_module.PartitionCache()
    cache.rewinding = {"orders": 230, "claims": 12}
    # The claims' awaited record came back; these held ones have not yet.
    cache.refetch = {"claims": {40, 17}, "orders": set()}
    worker.caches[1] = cache
    assert worker._awaited_offsets() == {TP(ORDERS, 1): 230, TP(CLAIMS, 1): 12}
    cache.rewinding = {}  # both awaited records arrived
    assert worker._awaited_offsets() == {TP(CLAIMS, 1): 17}


def test_a_lost_fetch_is_fetched_again_from_a_held_event_still_to_come_back(
    monkeypatch: Any,
) -> None:
    """Loaded after a rebalance, partition 6 still waits for held orders 150
    and 180 to come back: fetched again from the processor's next offset
    (209), they would be skipped for good."""
    clock = [1_000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    orders6 = TP(ORDERS, 6)
    consumer = FakeConsumer({orders6: 252})
    record = PartitionRecord(6, seq=40, next_offset={"orders": 209})
    worker = _worker(consumer, {6: record})
    cache = worker_module.PartitionCache()
    cache.record = record
    cache.refetch = {"orders": {180, 150}}
    worker.caches[6] = cache

    async def looks() -> None:
        for _ in range(6):
            await worker.refetch_lost_inputs()
            clock[0] += 2

    asyncio.run(looks())
    assert consumer.rewinds == [(orders6, 150)]
