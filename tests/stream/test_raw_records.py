"""Repair 11 (streams/kafka/raw_records.py): the batch sink's topics get
aiokafka's parsed records, not a ConsumerRecord each; other topics keep
theirs. The records are real aiokafka record batches, read by aiokafka's
own PartitionRecords and FetchResult (the code the repair relies on is
pinned in test_kafka_transport.py)."""

from __future__ import annotations

from typing import Any

from aiokafka.consumer.fetcher import READ_UNCOMMITTED, FetchResult, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from streams.kafka import raw_records

ORDERS = TP("ts.orders", 2)
CHANGELOG = TP("app-state-changelog", 2)
SINK_TOPICS = frozenset({ORDERS.topic})


class _State:
    """aiokafka's partition state, as FetchResult reads and moves it."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.paused = False

    def consumed_to(self, offset: int) -> None:
        self.position = offset


class _Assignment:
    def __init__(self, *tps: TP, position: int = 0) -> None:
        self.active = True
        self.states = {tp: _State(position) for tp in tps}

    def state_value(self, tp: TP) -> _State:
        return self.states[tp]


def _batch(first_offset: int, count: int, timestamp_ms: int = 1_700_000_000_000) -> MemoryRecords:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for n in range(count):
        builder.append(
            first_offset + n,
            timestamp_ms + n,
            b"u%d" % n,
            b'{"n":%d}' % n,
            [("h", b"v")],
        )
    return MemoryRecords(bytes(builder.build()))


def _buffer(
    tp: TP, assignment: _Assignment, first_offset: int = 0, count: int = 3, **deserializers: Any
) -> FetchResult:
    records = PartitionRecords(
        tp,
        _batch(first_offset, count),
        [],
        first_offset,
        deserializers.get("key"),
        deserializers.get("value"),
        True,
        READ_UNCOMMITTED,
    )
    return FetchResult(tp, assignment=assignment, partition_records=records, backoff=0)


def test_a_sink_topics_buffer_hands_out_the_parsed_records_with_the_same_fields() -> None:
    assignment = _Assignment(ORDERS, CHANGELOG)
    sink, other = _buffer(ORDERS, assignment), _buffer(CHANGELOG, assignment)
    assert raw_records.unwrap({ORDERS: sink, CHANGELOG: other}, SINK_TOPICS) == 1
    parsed, consumer_records = sink.getall(), other.getall()
    assert consumer_records
    assert all(type(r) is ConsumerRecord for r in consumer_records)  # other topics keep theirs
    assert not any(isinstance(r, ConsumerRecord) for r in parsed)
    # Every field a sink reads, as the ConsumerRecord of the same record has it.
    fields = ("offset", "timestamp", "timestamp_type", "key", "value")
    assert [tuple(getattr(r, f) for f in fields) for r in parsed] == [
        tuple(getattr(r, f) for f in fields) for r in consumer_records
    ]
    assert [list(r.headers) for r in parsed] == [list(r.headers) for r in consumer_records]
    assert assignment.states[ORDERS].position == 3  # positions move as aiokafka's do


def test_a_buffer_drained_in_parts_keeps_offsets_and_positions() -> None:
    assignment = _Assignment(ORDERS, position=5)
    buffered = {ORDERS: _buffer(ORDERS, assignment, first_offset=5, count=4)}
    raw_records.unwrap(buffered, SINK_TOPICS)
    first = buffered[ORDERS].getall(3)
    assert [r.offset for r in first] == [5, 6, 7]
    assert assignment.states[ORDERS].position == 8
    assert [r.offset for r in buffered[ORDERS].getall()] == [8]
    assert not buffered[ORDERS].has_more()


def test_a_buffer_with_a_deserializer_is_left_as_it_is() -> None:
    assignment = _Assignment(ORDERS)
    buffered = {ORDERS: _buffer(ORDERS, assignment, value=bytes.upper)}
    assert raw_records.unwrap(buffered, SINK_TOPICS) == 0
    (first, *_) = buffered[ORDERS].getall()
    assert type(first) is ConsumerRecord
    assert first.value == b'{"N":0}'


def test_a_buffer_is_changed_once() -> None:
    assignment = _Assignment(ORDERS)
    buffered = {ORDERS: _buffer(ORDERS, assignment)}
    assert raw_records.unwrap(buffered, SINK_TOPICS) == 1
    assert raw_records.unwrap(buffered, SINK_TOPICS) == 0


class _Fetcher:
    """`_proc_fetch_request` as aiokafka's: it buffers the response's records."""

    def __init__(self, assignment: _Assignment) -> None:
        self._records: dict[TP, Any] = {}
        self.assignment = assignment
        self.calls = 0

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        self.calls += 1
        for tp in request:
            self._records[tp] = _buffer(tp, self.assignment)
        return True


async def test_install_changes_each_response_s_sink_buffers_before_anyone_drains_them() -> None:
    assignment = _Assignment(ORDERS, CHANGELOG)
    fetcher = _Fetcher(assignment)
    raw_records.install(fetcher, SINK_TOPICS)
    raw_records.install(fetcher, frozenset({"another"}))  # once per fetcher
    assert raw_records.topics_of(fetcher) == SINK_TOPICS
    assert await fetcher._proc_fetch_request(assignment, 1, [ORDERS, CHANGELOG]) is True
    assert fetcher.calls == 1
    assert not isinstance(fetcher._records[ORDERS].getall()[0], ConsumerRecord)
    assert isinstance(fetcher._records[CHANGELOG].getall()[0], ConsumerRecord)
