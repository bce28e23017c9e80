"""The allocator's shell (streams.worker.allocator): what reaches the store,
the producer and the consumer, and in which order, with fakes for each."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP

from app.bucketing import master_partition
from schemas.codec import encode
from schemas.records import RefillRequested
from streams.allocation import (
    AllocatorRecord,
    allocator_key,
    allocator_redo_key,
    decode_allocator,
    encode_allocator,
    master_key,
)
from streams.config import Settings
from streams.kafka.producer import Delivered, DeliveryFailed
from streams.monitor.metrics import WorkerMetrics
from streams.partition_state import Output, Redo, decode_redo, encode_redo
from streams.worker import allocator as allocator_shell
from streams.worker.allocator import Allocator

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from engine_builders import catalog, template

SETTINGS = Settings.from_env({})
PARTITIONS = SETTINGS.partitions
CATALOG = catalog(
    template(reward={"mode": "cumulative", "amount_cents": 500, "pool_id": "cash"}),
    pools=[{"pool_id": "cash", "total": 100_000, "unit": "cents"}],
)
OWNER = master_partition("cash", PARTITIONS)
TOPIC = SETTINGS.topic("budget-requests")
GRANTS = SETTINGS.topic("budget-grants")
CHANGELOG = "ts-allocator-changelog"


_LOOPS: list[asyncio.Task[None]] = []  # each test's allocator loop, cancelled after it


@pytest.fixture(autouse=True)
def _no_masters_left_behind() -> Iterator[None]:
    yield
    for loop in _LOOPS:
        loop.cancel()
    _LOOPS.clear()


class FakeStore:
    """A PartitionStateStore in dicts; `log` is every call in order."""

    def __init__(self) -> None:
        self.dbs: dict[int, dict[bytes, bytes]] = {}
        self.log: list[tuple[str, Any]] = []
        self.producer: FakeProducer | None = None  # gets each write's changelog record
        self.broken = False  # set: every write raises

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.dbs.get(partition, {}).get(key)

    def write(self, partition: int, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        if self.broken:
            raise OSError("IO error: No space left on device")
        self.log.append(("write", [key for key, _ in writes]))
        db = self.dbs.setdefault(partition, {})
        for key, value in writes:
            assert self.producer is not None
            self.producer.sent.append((CHANGELOG, key, value, partition))
            if value is None:
                db.pop(key, None)
            else:
                db[key] = value

    def acknowledge(self, delivered: Iterable[Delivered]) -> None:
        self.log.append(("acknowledge", list(delivered)))


class FakeProducer:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.fail = False
        self.gate: asyncio.Event | None = None  # set: `wait` returns only once it is set

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None
    ) -> None:
        self.sent.append((topic, key, value, partition))
        self.log.append(("send", topic))

    def send_all(self, records: Iterable[tuple[str, Any, Any, Any]], headers: Any = None) -> None:
        for topic, key, value, partition in records:
            self.send(topic, key, value, partition)

    def send_outputs(self, outputs: Iterable[Any], topic_of: Mapping[str, str]) -> None:
        for output in outputs:
            self.send(topic_of[output.role], output.key, output.value, output.partition)

    async def wait(self) -> list[Delivered]:
        self.log.append(("wait", None))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise DeliveryFailed("1 record(s) not delivered: leader not available")
        return [Delivered(CHANGELOG, OWNER, 7)]


class FakeConsumer:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.positions: dict[TP, int] = {}
        self.skipped: list[tuple[TP, int]] = []
        self.rewinds: list[tuple[TP, int]] = []
        self.commit_positions = SimpleNamespace(record=self._record)
        self.assigned = {TP(TOPIC, p) for p in range(PARTITIONS)}

    def assignment(self) -> set[TP]:
        return self.assigned

    def _record(self, tp: TP, offset: int) -> None:
        self.positions[tp] = offset
        self.log.append(("position", offset))

    def note_skipped(self, tp: TP, offset: int) -> None:
        self.skipped.append((tp, offset))

    async def rewind(self, tp: TP, offset: int) -> None:
        self.rewinds.append((tp, offset))
        self.log.append(("rewind", offset))


class FakeApp:
    rebalancing = False
    in_recovery = False
    should_stop = False
    consumer_generation_id = 3

    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer


def _allocator() -> tuple[Allocator, FakeStore, FakeProducer, FakeConsumer]:
    store = FakeStore()
    producer = store.producer = FakeProducer(store.log)
    consumer = FakeConsumer(store.log)
    app = FakeApp(consumer)
    allocator = Allocator(
        app,
        SETTINGS,
        store,  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        catalog=lambda: CATALOG,
        metrics=WorkerMetrics(app, SETTINGS, (), catalog_ready=lambda: True),
    )
    _LOOPS.append(asyncio.get_running_loop().create_task(allocator.run()))  # as the app task
    return allocator, store, producer, consumer


def _fetched(offset: int, record: object, key: bytes = b"cash") -> Any:
    """What the allocator reads of an aiokafka ConsumerRecord."""
    return SimpleNamespace(offset=offset, key=key, value=encode(record))  # type: ignore[arg-type]


async def _fetch(allocator: Allocator, offset: int, record: object, generation: int = 3) -> None:
    """One fetch of the owner's budget-requests partition with one record
    (batch delivery), then until the allocator's loop is done with it."""
    await allocator.on_records({TP(TOPIC, OWNER): [_fetched(offset, record)]}, generation)
    await allocator.drain()


def _request(seq: int, bucket_partition: int = 2) -> RefillRequested:
    return RefillRequested(f"r{seq}", "cash", bucket_partition, seq, 500, 0, 0, 0, 0, 0)


def _changelog(producer: FakeProducer) -> list[bytes | None]:
    return [key for topic, key, _, _ in producer.sent if topic == CHANGELOG]


def _grants(producer: FakeProducer) -> list[tuple[bytes | None, bytes | None, int | None]]:
    return [(key, value, p) for topic, key, value, p in producer.sent if topic == GRANTS]


BATCH_KEYS = [allocator_redo_key(OWNER), master_key("cash"), allocator_key(OWNER)]


async def test_a_request_is_written_sent_and_acknowledged_before_its_position() -> None:
    allocator, store, producer, consumer = _allocator()
    await _fetch(allocator, 0, _request(1))
    kinds = [kind for kind, _ in store.log]
    # The redo record and the writes, the grant, ONE wait, then the position.
    assert kinds == ["write", "send", "wait", "acknowledge", "position"]
    assert store.log[0][1] == BATCH_KEYS
    assert _changelog(producer) == BATCH_KEYS  # the redo record's changelog record first
    [(key, value, partition)] = _grants(producer)
    assert (key, partition) == (b"cash", 2)
    assert orjson.loads(value or b"")["type"] == "bucket_granted"
    assert consumer.positions == {TP(TOPIC, OWNER): 1}
    assert decode_allocator(store.dbs[OWNER][allocator_key(OWNER)]) == AllocatorRecord(OWNER, 1, 1)
    assert store.log[3][1] == [Delivered(CHANGELOG, OWNER, 7)]


async def test_an_undelivered_batch_records_no_position_and_is_written_again() -> None:
    allocator, _store, producer, consumer = _allocator()
    producer.fail = True
    await _fetch(allocator, 0, _request(1))  # logged; the fetch loop goes on
    assert consumer.positions == {}
    assert OWNER not in allocator.caches  # rebuilt from the table next time
    # The local copy holds batch 1 (its record counts it) but the changelog
    # may not: the next batch first sends batch 1's changelog records and
    # its grant again, then its own.
    producer.fail = False
    producer.sent.clear()
    await _fetch(allocator, 1, _request(2))
    assert _changelog(producer) == BATCH_KEYS + BATCH_KEYS
    assert [orjson.loads(v or b"")["request_seq"] for _, v, _ in _grants(producer)] == [1, 2]
    assert consumer.positions == {TP(TOPIC, OWNER): 2}


async def test_a_batch_cut_short_by_a_crash_is_applied_again_first() -> None:
    allocator, store, producer, _ = _allocator()
    cut = Output("budget-grants", b"cash", b'{"cut": true}', 2)
    stored = AllocatorRecord(OWNER, 4, 9)
    newer = AllocatorRecord(OWNER, 5, 10)
    store.dbs[OWNER] = {
        allocator_key(OWNER): encode_allocator(stored),
        allocator_redo_key(OWNER): encode_redo(
            Redo(5, ((allocator_key(OWNER), encode_allocator(newer)),), (cut,))
        ),
    }
    await _fetch(allocator, 10, _request(3))
    # The cut batch again: its redo record and its write, then its grant.
    assert store.log[0] == ("write", [allocator_redo_key(OWNER), allocator_key(OWNER)])
    assert _grants(producer)[0] == (b"cash", b'{"cut": true}', 2)
    assert decode_allocator(store.dbs[OWNER][allocator_key(OWNER)]) == AllocatorRecord(OWNER, 6, 11)
    assert decode_redo(store.dbs[OWNER][allocator_redo_key(OWNER)]).seq == 6


async def test_events_of_an_earlier_generation_are_skipped_for_a_refetch() -> None:
    allocator, store, producer, consumer = _allocator()
    await _fetch(allocator, 0, _request(1), generation=2)
    assert consumer.skipped == [(TP(TOPIC, OWNER), 0)]
    assert producer.sent == []
    assert consumer.positions == {}
    assert store.log == []  # no step, no wait


async def test_while_rebalancing_nothing_is_processed() -> None:
    allocator, _store, producer, consumer = _allocator()
    allocator.app.rebalancing = True
    await _fetch(allocator, 0, _request(1))
    assert consumer.skipped == [(TP(TOPIC, OWNER), 0)]
    assert producer.sent == []


async def test_a_gap_rewinds_after_the_wait() -> None:
    allocator, store, _, consumer = _allocator()
    await _fetch(allocator, 0, _request(1))
    store.log.clear()
    await _fetch(allocator, 3, _request(2))  # offsets 1 and 2 missing
    assert consumer.rewinds == [(TP(TOPIC, OWNER), 1)]
    assert consumer.positions == {TP(TOPIC, OWNER): 1}
    assert [kind for kind, _ in store.log][-4:] == ["wait", "acknowledge", "position", "rewind"]


async def test_a_revoked_partition_is_loaded_again() -> None:
    allocator, _store, producer, _ = _allocator()
    await _fetch(allocator, 0, _request(1))
    allocator.on_revoked([TP(TOPIC, OWNER), TP("other", OWNER)])
    assert OWNER not in allocator.caches
    producer.sent.clear()
    await _fetch(allocator, 1, _request(2))
    assert _changelog(producer) == BATCH_KEYS + BATCH_KEYS  # the last batch, again first


async def test_the_fetch_loop_never_waits_for_the_allocators_brokers() -> None:
    """The fetch loop is the worker's too: a fetch of budget requests is only
    queued; the allocator's loop waits for the delivery, and a revoke
    (`drain`) waits for everything queued."""
    allocator, store, producer, consumer = _allocator()
    producer.gate = asyncio.Event()
    await allocator.on_records({TP(TOPIC, OWNER): [_fetched(0, _request(1))]}, 3)
    await allocator.on_records({TP(TOPIC, OWNER): [_fetched(1, _request(2))]}, 3)  # at once
    drained = asyncio.create_task(allocator.drain())
    await asyncio.sleep(0.01)
    assert [kind for kind, _ in store.log] == ["write", "send", "wait"]  # batch 1 waits
    assert consumer.positions == {}
    assert not drained.done()
    producer.gate.set()
    await drained
    assert consumer.positions == {TP(TOPIC, OWNER): 2}
    assert [kind for kind, _ in store.log] == [
        *("write", "send", "wait", "acknowledge", "position"),
        *("write", "send", "wait", "acknowledge", "position"),
    ]


async def test_the_fetch_loop_waits_only_once_the_queue_is_full() -> None:
    allocator, _store, producer, _consumer = _allocator()
    producer.gate = asyncio.Event()
    for offset in range(allocator_shell.QUEUED_FETCHES + 1):  # the loop holds the first
        await allocator.on_records({TP(TOPIC, OWNER): [_fetched(offset, _request(offset + 1))]}, 3)
    one_more = _fetched(allocator_shell.QUEUED_FETCHES + 1, _request(99))
    blocked = asyncio.create_task(allocator.on_records({TP(TOPIC, OWNER): [one_more]}, 3))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # back pressure
    producer.gate.set()
    await blocked
    await allocator.drain()


async def test_a_pool_missing_from_the_catalog_is_fetched_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(allocator_shell, "RETRY_SECONDS", 0.05)
    allocator, _store, producer, consumer = _allocator()
    unknown = RefillRequested("r1", "gems", 2, 1, 500, 0, 0, 0, 0, 0)
    gems = master_partition("gems", PARTITIONS)
    await allocator.on_records({TP(TOPIC, gems): [_fetched(0, unknown, b"gems")]}, 3)
    await allocator.drain()
    assert consumer.rewinds == []  # later: the catalog may have it by then
    assert producer.sent == []  # nothing granted for a pool it does not know
    await asyncio.sleep(0.1)
    assert consumer.rewinds == [(TP(TOPIC, gems), 0)]


async def _missing_pool_then(
    monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[Allocator, FakeConsumer, TP], None]
) -> list[tuple[TP, int]]:
    """The rewinds after a request for a missing pool, with `meanwhile` done
    before the retry is due."""
    monkeypatch.setattr(allocator_shell, "RETRY_SECONDS", 0.05)
    allocator, _store, _producer, consumer = _allocator()
    unknown = RefillRequested("r1", "gems", 2, 1, 500, 0, 0, 0, 0, 0)
    tp = TP(TOPIC, master_partition("gems", PARTITIONS))
    await allocator.on_records({tp: [_fetched(0, unknown, b"gems")]}, 3)
    await allocator.drain()
    meanwhile(allocator, consumer, tp)
    await asyncio.sleep(0.1)
    return consumer.rewinds


async def test_no_rewind_after_a_rebalance_came_between(monkeypatch: pytest.MonkeyPatch) -> None:
    def rebalance(allocator: Allocator, consumer: FakeConsumer, tp: TP) -> None:
        allocator.app.consumer_generation_id = 4

    assert await _missing_pool_then(monkeypatch, rebalance) == []


async def test_no_rewind_of_a_partition_no_longer_assigned(monkeypatch: pytest.MonkeyPatch) -> None:
    def revoke(allocator: Allocator, consumer: FakeConsumer, tp: TP) -> None:
        consumer.assigned.discard(tp)
        allocator.on_revoked([tp])

    assert await _missing_pool_then(monkeypatch, revoke) == []


async def test_the_rewind_comes_even_when_the_partition_was_reloaded_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A later failed batch drops the partition's cache; the request the
    allocator dropped while it waited must still be fetched again."""

    def fail(allocator: Allocator, consumer: FakeConsumer, tp: TP) -> None:
        allocator.forget(tp.partition)

    rewinds = await _missing_pool_then(monkeypatch, fail)
    assert rewinds == [(TP(TOPIC, master_partition("gems", PARTITIONS)), 0)]


async def test_a_failed_step_is_retried_from_the_stored_offset_without_a_later_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fetch loop is the worker's too: a step that raises is logged, its
    partition loaded again, and its messages fetched again a while later,
    even if no later message shows the gap (a stalled bucket waits for it)."""
    monkeypatch.setattr(allocator_shell, "RETRY_SECONDS", 0.05)
    allocator, store, producer, consumer = _allocator()
    await _fetch(allocator, 0, _request(1))
    store.broken = True
    await _fetch(allocator, 1, _request(2))  # no exception reaches the fetch loop
    assert consumer.positions == {TP(TOPIC, OWNER): 1}
    assert OWNER not in allocator.caches
    store.broken = False
    await asyncio.sleep(0.1)
    assert consumer.rewinds == [(TP(TOPIC, OWNER), 1)]
    await _fetch(allocator, 1, _request(2))  # fetched again
    assert consumer.positions == {TP(TOPIC, OWNER): 2}
    assert [orjson.loads(v or b"")["request_seq"] for _, v, _ in _grants(producer)] == [1, 1, 2]


async def test_a_failed_step_spares_the_other_partitions_of_the_fetch() -> None:
    allocator, store, _producer, consumer = _allocator()
    other_partition = (OWNER + 1) % PARTITIONS
    broken_write = store.write

    def write(partition: int, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        if partition == other_partition:
            raise OSError("IO error: No space left on device")
        broken_write(partition, writes)

    store.write = write  # type: ignore[method-assign]
    other = RefillRequested("r9", "cash", 2, 1, 500, 0, 0, 0, 0, 0)
    await allocator.on_records(
        {
            TP(TOPIC, other_partition): [_fetched(0, other)],  # not cash's master: refused,
            TP(TOPIC, OWNER): [_fetched(0, _request(1))],  # which writes, and fails
        },
        3,
    )
    await allocator.drain()
    assert consumer.positions == {TP(TOPIC, OWNER): 1}
    assert other_partition not in allocator.caches


async def test_an_undelivered_batch_is_fetched_again_without_a_later_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delivery that fails is retried from the stored offset even if no
    later request comes to show the gap (a bucket waiting for its refill
    would otherwise wait for good)."""
    monkeypatch.setattr(allocator_shell, "RETRY_SECONDS", 0.05)
    allocator, _store, producer, consumer = _allocator()
    producer.fail = True
    await _fetch(allocator, 0, _request(1))
    assert consumer.positions == {}
    producer.fail = False
    await asyncio.sleep(0.1)
    assert consumer.rewinds == [(TP(TOPIC, OWNER), 0)]


async def test_two_failed_deliveries_in_a_row_lose_no_batch() -> None:
    """One redo record per partition: the first failed batch is delivered
    again before the next step replaces its redo record, so a commit never
    passes a grant that was never delivered."""
    allocator, _store, producer, consumer = _allocator()
    producer.fail = True
    await _fetch(allocator, 0, _request(1))  # fails: partition forgotten
    await _fetch(allocator, 1, _request(2))  # its reload (batch 1 again) fails too
    assert consumer.positions == {}
    producer.fail = False
    producer.sent.clear()
    await _fetch(allocator, 1, _request(2))  # fetched again (the retry's rewind)
    seqs = [orjson.loads(v or b"")["request_seq"] for _, v, _ in _grants(producer)]
    assert seqs == [1, 2]  # batch 1 again, delivered, then batch 2
    assert consumer.positions == {TP(TOPIC, OWNER): 2}


async def test_a_reload_is_delivered_before_the_next_step() -> None:
    allocator, store, producer, _ = _allocator()
    producer.fail = True
    await _fetch(allocator, 0, _request(1))
    producer.fail = False
    store.log.clear()
    await _fetch(allocator, 1, _request(2))
    kinds = [kind for kind, _ in store.log]
    # batch 1 written and sent again, delivered; then batch 2, delivered.
    assert kinds[: kinds.index("wait") + 1] == ["write", "send", "wait"]
    assert kinds.count("wait") == 2


async def test_nothing_is_processed_once_the_app_stops() -> None:
    allocator, store, producer, consumer = _allocator()
    allocator.app.should_stop = True  # faust has stopped the consumer and tables
    await _fetch(allocator, 0, _request(1))
    assert store.log == []
    assert producer.sent == []
    assert consumer.skipped == []


async def test_no_rewind_after_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator_shell, "RETRY_SECONDS", 0.05)
    allocator, store, _producer, consumer = _allocator()
    store.broken = True
    await _fetch(allocator, 0, _request(1))  # a retry is due later
    allocator.close()
    allocator._rewind_later(TP(TOPIC, OWNER), 0, 3)  # one asked for after close
    await asyncio.sleep(0.1)
    assert consumer.rewinds == []


async def test_a_rewind_that_fails_loads_the_partition_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gap's rewind that raises must not leave the cache awaiting an offset
    that is never fetched (every later message dropped)."""
    allocator, _store, _producer, consumer = _allocator()
    await _fetch(allocator, 0, _request(1))

    async def broken(tp: TP, offset: int) -> None:
        raise RuntimeError("IllegalStateError: not assigned")

    monkeypatch.setattr(consumer, "rewind", broken)
    await _fetch(allocator, 5, _request(2))  # a gap: offsets 1-4 missing
    assert OWNER not in allocator.caches
