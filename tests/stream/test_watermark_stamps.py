"""Repair 8 (streams.kafka.watermark_stamps): a fetch's high watermarks are
stamped with when the fetch was sent, however late its response is handled,
and published with that time as one pair the worker reads."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.subscription_state import TopicPartitionState
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.kafka import follow_up, raw_records, transport, watermark_stamps
from streams.kafka.watermark_stamps import read_mark

ORDERS = TopicPartition("ts.orders", 4)
TICKS = TopicPartition("ts.ticks", 4)
CLAIMS = TopicPartition("ts.claims", 4)
LATE_MS = 10_000  # how much later than its send the fake handles a response


class _Assignment:
    """aiokafka's assignment as the response handling reads it."""

    def __init__(self, *tps: TopicPartition) -> None:
        self.states = {tp: TopicPartitionState(self) for tp in tps}

    def state_value(self, tp: TopicPartition) -> TopicPartitionState | None:
        return self.states.get(tp)


class _Fetcher:
    """`_proc_fetch_request` as aiokafka's: once the response is back
    (`reply`, if set, is awaited first) it sets, for each partition of the
    response it keeps, the broker's mark and the time it handles it (here
    LATE_MS after now); partitions in `discard` are skipped, as aiokafka
    skips those whose position moved meanwhile. `seen_while_handling` is
    what a reader in another thread would have read right after aiokafka's
    stamp."""

    def __init__(self, highwater: int = 120, discard: tuple[TopicPartition, ...] = ()) -> None:
        self.highwater = highwater
        self.discard = set(discard)
        self.calls = 0
        self.fail_after_stamping = False
        self.reply: asyncio.Event | None = None
        self.seen_while_handling: list[tuple[int | None, float | None]] = []

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        self.calls += 1
        if self.reply is not None:
            await self.reply.wait()
        await asyncio.sleep(0)
        handled_ms = int(1000 * time.time()) + LATE_MS
        for topic, partitions in request.topics:
            for partition, _offset, _max_bytes in partitions:
                tp = TopicPartition(topic, partition)
                if tp in self.discard:
                    continue
                state = assignment.state_value(tp)
                state.highwater = self.highwater
                state.timestamp = handled_ms
                self.seen_while_handling.append(read_mark(state))
        if self.fail_after_stamping:
            raise asyncio.CancelledError()
        return True


def _request(*tps: TopicPartition) -> FetchRequest:
    by_topic: dict[str, list[tuple[int, int, int]]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append((tp.partition, 100, 1 << 20))
    return FetchRequest(100, 1, 50 << 20, 0, list(by_topic.items()))


def _now_ms() -> int:
    return int(1000 * time.time())


async def test_a_late_handled_response_stamps_its_marks_with_the_send_time() -> None:
    fetcher = _Fetcher(highwater=120)
    assignment = _Assignment(ORDERS, TICKS)
    watermark_stamps.stamp_at_send(fetcher)
    before_ms = _now_ms()
    assert await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS, TICKS)) is True
    after_ms = _now_ms()
    for tp in (ORDERS, TICKS):
        state = assignment.states[tp]
        assert state.highwater == 120  # the mark itself is aiokafka's
        assert before_ms <= state.timestamp <= after_ms  # sent then, not handled LATE_MS later
        mark, sent = read_mark(state)
        assert mark == 120
        assert sent == state.timestamp / 1000.0


async def test_the_pair_never_shows_the_handling_time() -> None:
    """A reader between aiokafka's stamp and ours (the worker reads from
    another thread) still gets the last published pair."""
    fetcher = _Fetcher(highwater=120)
    assignment = _Assignment(ORDERS)
    watermark_stamps.stamp_at_send(fetcher)
    await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS))
    fetcher.highwater = 130
    await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS))
    first, second = fetcher.seen_while_handling
    assert first == (None, None)  # nothing published before the first fetch
    assert second[0] == 120  # the first fetch's pair, not 130 with the late time
    assert second[1] is not None
    assert second[1] <= time.time()
    assert read_mark(assignment.states[ORDERS])[0] == 130


async def test_marks_the_response_did_not_move_keep_their_stamp() -> None:
    fetcher = _Fetcher(discard=(TICKS,))
    assignment = _Assignment(ORDERS, TICKS, CLAIMS)
    for state in assignment.states.values():
        state.highwater, state.timestamp = 7, 1_000
    watermark_stamps.stamp_at_send(fetcher)
    await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS, TICKS))
    assert assignment.states[TICKS].timestamp == 1_000  # discarded by aiokafka
    assert read_mark(assignment.states[TICKS]) == (None, None)
    assert assignment.states[CLAIMS].timestamp == 1_000  # not in this fetch
    assert 1_000 < assignment.states[ORDERS].timestamp <= _now_ms()


async def test_two_requests_for_one_partition_keep_the_earlier_send() -> None:
    """After a leader moved, a partition can be in two requests at once (one
    per node). The one sent first, handled while the other is out, keeps its
    own send time even if the other then drops the partition."""
    first, second = _Fetcher(highwater=50), _Fetcher(highwater=60, discard=(ORDERS,))
    first.reply, second.reply = asyncio.Event(), asyncio.Event()
    assignment = _Assignment(ORDERS)
    watermark_stamps.stamp_at_send(first)
    watermark_stamps.stamp_at_send(second)
    to_old_leader = asyncio.ensure_future(
        first._proc_fetch_request(assignment, 1, _request(ORDERS))
    )
    await asyncio.sleep(0)
    first_sent_by_ms = _now_ms()
    await asyncio.sleep(0.01)
    to_new_leader = asyncio.ensure_future(
        second._proc_fetch_request(assignment, 2, _request(ORDERS))
    )
    await asyncio.sleep(0)
    first.reply.set()
    await to_old_leader
    second.reply.set()
    await to_new_leader
    mark, sent = read_mark(assignment.states[ORDERS])
    assert mark == 50
    assert sent is not None
    assert sent * 1000 <= first_sent_by_ms


async def test_stamps_are_set_back_when_the_handling_ends_in_an_error() -> None:
    fetcher = _Fetcher()
    fetcher.fail_after_stamping = True
    assignment = _Assignment(ORDERS)
    watermark_stamps.stamp_at_send(fetcher)
    with pytest.raises(asyncio.CancelledError):
        await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS))
    assert assignment.states[ORDERS].timestamp <= _now_ms()
    assert read_mark(assignment.states[ORDERS])[0] == 120


async def test_a_partition_no_longer_assigned_is_skipped() -> None:
    fetcher = _Fetcher(discard=(TICKS,))
    assignment = _Assignment(ORDERS)  # TICKS revoked while the fetch was out
    watermark_stamps.stamp_at_send(fetcher)
    await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS, TICKS))
    assert assignment.states[ORDERS].timestamp <= _now_ms()


async def test_stamping_is_set_up_once_per_fetcher() -> None:
    fetcher = _Fetcher()
    watermark_stamps.stamp_at_send(fetcher)
    wrapped = fetcher._proc_fetch_request
    watermark_stamps.stamp_at_send(fetcher)
    assert fetcher._proc_fetch_request is wrapped
    await fetcher._proc_fetch_request(_Assignment(ORDERS), 1, _request(ORDERS))
    assert fetcher.calls == 1  # aiokafka's handling ran once, not once per wrapper


async def test_the_consumer_thread_sets_it_up_on_the_fetcher_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """faust's on_start makes and starts aiokafka's consumer (pinned in
    test_kafka_transport.py); ours then wraps that consumer's fetcher."""
    app = transport.BatchApp("stamps-test", broker=f"{transport.register()}://127.0.0.1:1")
    thread = app.consumer._new_consumer_thread()
    assert isinstance(thread, transport.ConsumerThread)
    fetcher = _Fetcher()

    async def faust_on_start(self: Any) -> None:
        self._consumer = SimpleNamespace(_fetcher=fetcher)

    def get_actions_per_node(assignment: Any) -> tuple[list[Any], dict[Any, Any], float]:
        return [], {}, 0.1

    fetcher._get_actions_per_node = get_actions_per_node  # type: ignore[attr-defined]
    fetcher._records = {}  # type: ignore[attr-defined]
    app.batch_sink = SimpleNamespace(topics=frozenset({ORDERS.topic}))  # type: ignore[assignment]
    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_start", faust_on_start)
    await thread.on_start()
    assignment = _Assignment(ORDERS)
    await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS))
    assert assignment.states[ORDERS].timestamp <= _now_ms()
    # ... and repairs 10 and 11 sit on the same fetcher (streams.kafka.follow_up,
    # streams.kafka.raw_records: for the sink's topics).
    assert follow_up.follow_ups_of(fetcher) is not None
    assert raw_records.topics_of(fetcher) == frozenset({ORDERS.topic})


async def test_the_consumer_reads_the_published_pair_of_an_assigned_partition() -> None:
    app = transport.BatchApp("marks-test", broker=f"{transport.register()}://127.0.0.1:1")
    consumer = app.consumer
    assert isinstance(consumer, transport.Consumer)
    assignment = _Assignment(ORDERS)
    state = assignment.states[ORDERS]
    subscription = SimpleNamespace(
        is_assigned=lambda tp: tp in assignment.states,
        subscription=SimpleNamespace(assignment=assignment),
    )
    aio = SimpleNamespace(_subscription=subscription)
    consumer._thread = SimpleNamespace(_ensure_consumer=lambda: aio)  # type: ignore[assignment]
    assert consumer.read_mark(ORDERS) == (None, None)
    state.highwater, state.timestamp = 99, 5_000_000  # aiokafka's own stamp: not read
    assert consumer.read_mark(ORDERS) == (None, None)
    setattr(state, watermark_stamps.MARK_ATTRIBUTE, (98, 4_000_000))
    assert consumer.read_mark(ORDERS) == (98, 4_000.0)
    with pytest.raises(KeyError):
        consumer.read_mark(TICKS)
