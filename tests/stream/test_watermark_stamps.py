"""Repair 8 (streams.kafka.watermark_stamps): a fetch's high watermarks are
stamped with when the fetch was sent, however late its response is handled."""

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

from streams.kafka import transport, watermark_stamps

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
    """`_proc_fetch_request` as aiokafka's: it stamps each partition of the
    response it keeps with the time it handles it (here LATE_MS after the
    send), with the mark the broker gave; partitions in `discard` are
    skipped (their position moved meanwhile), as aiokafka skips them."""

    def __init__(self, highwater: int = 120, discard: tuple[TopicPartition, ...] = ()) -> None:
        self.highwater = highwater
        self.discard = set(discard)
        self.calls = 0
        self.fail_after_stamping = False

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        self.calls += 1
        await asyncio.sleep(0)  # the response comes back
        handled_ms = int(1000 * time.time()) + LATE_MS
        for topic, partitions in request.topics:
            for partition, _offset, _max_bytes in partitions:
                tp = TopicPartition(topic, partition)
                if tp in self.discard:
                    continue
                state = assignment.state_value(tp)
                state.highwater = self.highwater
                state.timestamp = handled_ms
        if self.fail_after_stamping:
            raise asyncio.CancelledError()
        return True


def _request(*tps: TopicPartition) -> FetchRequest:
    by_topic: dict[str, list[tuple[int, int, int]]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append((tp.partition, 100, 1 << 20))
    return FetchRequest(100, 1, 50 << 20, 0, list(by_topic.items()))


async def test_a_late_handled_response_stamps_its_marks_with_the_send_time() -> None:
    fetcher = _Fetcher(highwater=120)
    assignment = _Assignment(ORDERS, TICKS)
    watermark_stamps.stamp_at_send(fetcher)
    before_ms = int(1000 * time.time())
    assert await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS, TICKS)) is True
    after_ms = int(1000 * time.time())
    for tp in (ORDERS, TICKS):
        state = assignment.states[tp]
        assert state.highwater == 120  # the mark itself is aiokafka's
        assert before_ms <= state.timestamp <= after_ms  # sent then, not handled LATE_MS later


async def test_without_the_repair_the_stamp_is_the_handling_time() -> None:
    """What the repair is for: the fake stamps as aiokafka does."""
    fetcher = _Fetcher()
    assignment = _Assignment(ORDERS)
    sent_ms = int(1000 * time.time())
    await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS))
    assert assignment.states[ORDERS].timestamp >= sent_ms + LATE_MS


async def test_marks_the_response_did_not_move_keep_their_stamp() -> None:
    fetcher = _Fetcher(discard=(TICKS,))
    assignment = _Assignment(ORDERS, TICKS, CLAIMS)
    for state in assignment.states.values():
        state.highwater, state.timestamp = 7, 1_000
    watermark_stamps.stamp_at_send(fetcher)
    await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS, TICKS))
    assert assignment.states[TICKS].timestamp == 1_000  # discarded by aiokafka
    assert assignment.states[CLAIMS].timestamp == 1_000  # not in this fetch
    assert assignment.states[ORDERS].timestamp > 1_000
    assert assignment.states[ORDERS].timestamp < int(1000 * time.time()) + 1


async def test_stamps_are_set_back_when_the_handling_ends_in_an_error() -> None:
    fetcher = _Fetcher()
    fetcher.fail_after_stamping = True
    assignment = _Assignment(ORDERS)
    watermark_stamps.stamp_at_send(fetcher)
    with pytest.raises(asyncio.CancelledError):
        await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS))
    assert assignment.states[ORDERS].timestamp <= int(1000 * time.time())


async def test_a_partition_no_longer_assigned_is_skipped() -> None:
    fetcher = _Fetcher(discard=(TICKS,))
    assignment = _Assignment(ORDERS)  # TICKS revoked while the fetch was out
    watermark_stamps.stamp_at_send(fetcher)
    await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS, TICKS))
    assert assignment.states[ORDERS].timestamp <= int(1000 * time.time())


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

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_start", faust_on_start)
    await thread.on_start()
    assignment = _Assignment(ORDERS)
    await fetcher._proc_fetch_request(assignment, 1, _request(ORDERS))
    assert assignment.states[ORDERS].timestamp <= int(1000 * time.time())
