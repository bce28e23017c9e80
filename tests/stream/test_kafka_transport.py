"""streams.kafka: the bookkeeping behind repairs 4 and 5, batch delivery
through a real faust consumer object, and the guard that fails when the
pinned faust or aiokafka changes under our subclasses."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import aiokafka
import faust
import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from faust.tables import manager as faust_manager
from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.kafka import fetch_sizes, recovery, transport
from streams.kafka.positions import CommitPositions
from streams.kafka.read_offsets import RewindAwareReadOffsets

ORDERS = TP("ts.orders", 3)
CHANGELOG = TP("app-state-changelog", 3)

# The faust/aiokafka code each override replaces or relies on, as pinned in
# pyproject.toml. A new version changes a digest: read the new code, check
# the override still does what its docstring says, then update the digest.
PINNED = {"faust": "0.15.3", "aiokafka": "0.14.0"}
REPLACED = {
    "faust Consumer.getmany": (faust_consumer.Consumer.getmany, "4b168d84882a"),
    "faust Consumer._wait_next_records": (
        faust_consumer.Consumer._wait_next_records,
        "6218e1969a63",
    ),
    "faust Consumer._drain_messages": (faust_consumer.Consumer._drain_messages, "44a2500309e8"),
    "faust Consumer.seek": (faust_consumer.Consumer.seek, "b86a9fe05f95"),
    "faust Consumer.on_partitions_revoked": (
        faust_consumer.Consumer.on_partitions_revoked,
        "d04b7ae72c6f",
    ),
    "faust ThreadDelegateConsumer._commit": (
        faust_consumer.ThreadDelegateConsumer._commit,
        "a20eec84e4b2",
    ),
    "faust AIOKafkaConsumerThread.seek_to_committed": (
        faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed,
        "775ab0adc4b0",
    ),
    "faust AIOKafkaConsumerThread._fetch_records": (
        faust_aiokafka.AIOKafkaConsumerThread._fetch_records,
        "39a2c6c79fc1",
    ),
    "faust Recovery._resume_streams": (faust_recovery.Recovery._resume_streams, "d986a6710c1a"),
    "faust TableManager.recovery": (faust_manager.TableManager.recovery.fget, "f0bf5de78b4c"),
    # Recovery._set_recovery_started also clears the end signal that
    # Recovery.restore sets (this loop clears it only when it wakes).
    "faust Recovery._set_recovery_started": (
        faust_recovery.Recovery._set_recovery_started,
        "bcfebf81ae13",
    ),
    # Recovery.restore does, per fetch, what this loop does per record.
    "faust Recovery._slurp_changelogs": (
        faust_recovery.Recovery._slurp_changelogs.fun,  # type: ignore[attr-defined]
        "7825c7e50f76",
    ),
    "aiokafka AIOKafkaConsumer.seek_to_committed": (
        aiokafka.AIOKafkaConsumer.seek_to_committed,
        "f6cd85c8b70a",
    ),
    # Relied on, not replaced: Consumer.read_mark reads a partition's state
    # where aiokafka's highwater does.
    "aiokafka AIOKafkaConsumer.highwater": (aiokafka.AIOKafkaConsumer.highwater, "044275efc968"),
    # Repair 8 (streams.kafka.watermark_stamps) wraps it on one fetcher, and
    # sets back the stamps it moves; the fetch loop must call it through
    # the instance, and faust's on_start must make and start the consumer.
    "aiokafka Fetcher._proc_fetch_request": (
        aiokafka_fetcher.Fetcher._proc_fetch_request,
        "59bf948fff47",
    ),
    "aiokafka Fetcher._fetch_requests_routine": (
        aiokafka_fetcher.Fetcher._fetch_requests_routine,
        "2a8ec5932644",
    ),
    "faust AIOKafkaConsumerThread.on_start": (
        faust_aiokafka.AIOKafkaConsumerThread.on_start,
        "38b4e8bd1e10",
    ),
    # ConsumerThread._create_worker_consumer sets the fetch wait that
    # AIOKafkaConsumer.start hands its fetcher (faust passes a constant).
    "faust AIOKafkaConsumerThread._create_worker_consumer": (
        faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer,
        "c2701bfc3e6f",
    ),
    "aiokafka AIOKafkaConsumer.start": (aiokafka.AIOKafkaConsumer.start, "2f1ba7044332"),
    # Repair 7 (streams.kafka.fair_fetch) mirrors fetched_records, draining
    # in turns through FetchResult.getall and has_more.
    "aiokafka Fetcher.fetched_records": (
        aiokafka_fetcher.Fetcher.fetched_records,
        "be4348896b9b",
    ),
    "aiokafka FetchResult.getall": (aiokafka_fetcher.FetchResult.getall, "3e717e30de50"),
    "aiokafka FetchResult.has_more": (aiokafka_fetcher.FetchResult.has_more, "a25ee8ab9340"),
    # Repair 9 (streams.kafka.fetch_sizes) sets the sizes this reads for
    # every fetch request it builds. Repair 10 (streams.kafka.follow_up)
    # wraps it and _proc_fetch_request on one fetcher, as repair 8 does the
    # latter (tests/stream/test_follow_up.py checks the calls go through
    # the instance).
    "aiokafka Fetcher._get_actions_per_node": (
        aiokafka_fetcher.Fetcher._get_actions_per_node,
        "1dab2cf937d1",
    ),
    # Repair 11 (streams.kafka.raw_records) sets, on the buffers of the
    # sink's topics, the per-instance `_consumer_record` that the records
    # generator calls for each record, before the generator has started
    # (it is made in __init__ and runs as the buffer is drained); the
    # buffer is FetchResult's `_partition_records`.
    "aiokafka PartitionRecords.__init__": (
        aiokafka_fetcher.PartitionRecords.__init__,
        "8ec1c2ae6ea1",
    ),
    "aiokafka PartitionRecords._unpack_records": (
        aiokafka_fetcher.PartitionRecords._unpack_records,
        "b803e6d46480",
    ),
    "aiokafka PartitionRecords._consumer_record": (
        aiokafka_fetcher.PartitionRecords._consumer_record,
        "e668541600b0",
    ),
    "aiokafka FetchResult.__init__": (aiokafka_fetcher.FetchResult.__init__, "126a3e45763b"),
}


def digest(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:12]


def test_the_pinned_versions_are_installed() -> None:
    assert {"faust": faust.__version__, "aiokafka": aiokafka.__version__} == PINNED


@pytest.mark.parametrize("name", sorted(REPLACED))
def test_the_code_our_subclasses_replace_is_unchanged(name: str) -> None:
    function, expected = REPLACED[name]
    assert digest(function) == expected, (
        f"{name} changed: re-check streams/kafka against it, then update its digest"
    )


def test_the_subclasses_are_registered_for_this_app_only() -> None:
    scheme = transport.register()
    from faust.transport.drivers import by_url

    assert by_url(f"{scheme}://127.0.0.1:9092") is transport.Transport
    assert by_url("kafka://127.0.0.1:9092") is faust_aiokafka.Transport
    assert transport.Transport.Consumer is transport.Consumer
    assert issubclass(recovery.TableManager, faust_manager.TableManager)


# ---------------------------------------------------------------- repair 4


def test_the_drain_loop_cannot_move_a_rewound_partition_until_the_awaited_record() -> None:
    offsets = RewindAwareReadOffsets()
    offsets[ORDERS] = 200  # read up to 200 before the rewind
    offsets.rewind(ORDERS, 120)
    assert offsets[ORDERS] is None  # every record passes the drain loop's filter
    offsets[ORDERS] = 201  # a record fetched before the seek: ignored
    offsets[ORDERS] = 119
    assert offsets[ORDERS] is None
    offsets[ORDERS] = 120  # the awaited record
    assert offsets[ORDERS] == 120
    offsets[ORDERS] = 121
    assert offsets[ORDERS] == 121


def test_a_revoke_forgets_the_rewind() -> None:
    offsets = RewindAwareReadOffsets()
    offsets.rewind(ORDERS, 50)
    offsets.pop(ORDERS, None)
    offsets[ORDERS] = 70  # faust's seek after the next assignment
    assert offsets[ORDERS] == 70
    assert offsets[TP("ts.orders", 9)] is None  # unknown partitions read as None, as in faust


# ---------------------------------------------------------------- repair 5


def test_commits_send_the_processors_positions_for_owned_topics_only() -> None:
    positions = CommitPositions()
    positions.record(ORDERS, 640)
    positions.record(TP("ts.orders", 4), 10)  # not assigned here any more
    acked = {ORDERS: 2011, TP("ts.orders", 5): 99, CHANGELOG: 7}
    sent = positions.to_send(acked, {ORDERS, TP("ts.orders", 5), CHANGELOG}, {"ts.orders"})
    # faust acked up to 2011, the table holds 640: the group gets 640; a
    # partition the processor has not taken is not committed at all.
    assert sent == {ORDERS: 640, CHANGELOG: 7}


def test_only_moved_positions_are_committed_again() -> None:
    positions = CommitPositions()
    positions.record(ORDERS, 640)
    assert positions.moved({ORDERS}) == {ORDERS: 640}
    positions.sent({ORDERS: 640})
    assert positions.moved({ORDERS}) == {}
    positions.record(ORDERS, 700)
    assert positions.moved({ORDERS}) == {ORDERS: 700}
    positions.forget([ORDERS])
    assert positions.moved({ORDERS}) == {}


# ---------------------------------------------------------- batch delivery


class _Record:
    def __init__(self, tp: TP, offset: int) -> None:
        self.topic, self.partition, self.offset = tp.topic, tp.partition, offset
        self.timestamp, self.timestamp_type, self.headers = 0, 0, []
        self.key, self.value, self.checksum = b"k", b"v", None
        self.serialized_key_size = self.serialized_value_size = 1


class _Sink:
    def __init__(self, *topics: str, calls: list[str] | None = None) -> None:
        self.topics = frozenset(topics or {"ts.orders"})
        self.fetches: list[tuple[dict[TP, list[int]], int]] = []
        self.calls = [] if calls is None else calls  # shared between sinks: the order

    async def on_records(self, records: Mapping[TP, Sequence[Any]], generation: int) -> None:
        self.calls.append(f"records {min(self.topics)}")
        self.fetches.append(
            ({tp: [r.offset for r in rs] for tp, rs in records.items()}, generation)
        )

    async def drain(self) -> None:
        self.calls.append(f"drain {min(self.topics)}")


async def test_a_fetch_reaches_the_sink_whole_and_other_topics_go_the_usual_way() -> None:
    app = transport.BatchApp("batch-test", broker=f"{transport.register()}://127.0.0.1:1")
    sink = _Sink()
    app.batch_sink = sink
    consumer = app.consumer
    assert isinstance(consumer, transport.Consumer)
    other = TP("ts.budget-requests", 0)
    fetched = {
        ORDERS: [_Record(ORDERS, 5), _Record(ORDERS, 6)],
        TP("ts.orders", 4): [_Record(TP("ts.orders", 4), 0)],
        other: [_Record(other, 9)],
        TP("ts.orders", 7): [_Record(TP("ts.orders", 7), 1)],  # not active: dropped
    }
    active = {ORDERS, TP("ts.orders", 4), other}

    async def wait_next_records(timeout: float) -> tuple[Any, Any]:
        return fetched, active

    consumer._wait_next_records = wait_next_records  # type: ignore[method-assign]
    consumer.resume_flow()
    consumer.highwater = lambda tp: 10  # type: ignore[method-assign]
    handed_on = [(tp, m.offset) async for tp, m in consumer.getmany(timeout=0.1)]
    assert sink.fetches == [({ORDERS: [5, 6], TP("ts.orders", 4): [0]}, app.consumer_generation_id)]
    assert handed_on == [(other, 9)]


async def test_while_inputs_are_held_back_a_fetch_waits_briefly_so_a_let_go_counts_soon() -> None:
    """A fetch asks only for the partitions active when it began: with faust's
    1 s drain wait, a `let_go` during it counted a second later (the peer
    log lost 1 s of ~7 so). Held back, a fetch waits LET_GO_WITHIN_SECONDS."""
    app = transport.BatchApp("batch-test", broker=f"{transport.register()}://127.0.0.1:1")
    app.batch_sink = _Sink()
    consumer = app.consumer
    assert isinstance(consumer, transport.Consumer)
    waits: list[float] = []

    async def wait_next_records(timeout: float) -> tuple[Any, Any]:
        waits.append(timeout)
        return {}, set()

    consumer._wait_next_records = wait_next_records  # type: ignore[method-assign]
    consumer.resume_flow()
    consumer.assignment = lambda: {ORDERS}  # type: ignore[method-assign]

    async def fetch() -> None:
        async for _ in consumer.getmany(timeout=1.0):
            pass

    await fetch()
    consumer.hold_back({ORDERS})
    await fetch()
    consumer.let_go({ORDERS})
    await fetch()
    consumer.hold_back({ORDERS})
    await consumer.on_partitions_revoked({ORDERS})
    await fetch()
    assert waits == [1.0, transport.LET_GO_WITHIN_SECONDS, 1.0, 1.0]


async def test_a_changelog_fetch_being_recovered_goes_to_the_recovery_whole() -> None:
    app = transport.BatchApp(
        "restore-test",
        broker=f"{transport.register()}://127.0.0.1:1",
        TableManager="streams.kafka.recovery:TableManager",
    )
    consumer = app.consumer
    restoring, standby = CHANGELOG, TP("app-state-changelog", 4)
    bulk = app.tables.recovery
    assert isinstance(bulk, recovery.Recovery)
    restored: list[tuple[TP, list[int]]] = []
    bulk.takes = lambda tp: tp == restoring  # type: ignore[method-assign]
    bulk.restore = lambda tp, rs: restored.append((tp, [r.offset for r in rs])) or len(rs)  # type: ignore[method-assign]
    consumer._read_offset[restoring] = 4  # the drain loop's: below it is dropped
    fetched = {
        restoring: [_Record(restoring, o) for o in (3, 4, 5, 6)],
        standby: [_Record(standby, 0)],
    }

    async def wait_next_records(timeout: float) -> tuple[Any, Any]:
        return fetched, None

    consumer._wait_next_records = wait_next_records  # type: ignore[method-assign]
    consumer.resume_flow()
    consumer.highwater = lambda tp: 10  # type: ignore[method-assign]
    handed_on = [(tp, m.offset) async for tp, m in consumer.getmany(timeout=0.1)]
    assert restored == [(restoring, [4, 5, 6])]
    assert consumer._read_offset[restoring] == 6
    assert handed_on == [(standby, 0)]  # not taken: faust's way, one message at a time


# ------------------------------------------------------------- repair 6


def test_the_consumer_thread_runs_fetches_and_commits_on_two_queue_workers() -> None:
    """What repair 6 rests on: faust sends fetches and commits through the
    consumer thread's method queue, and mode gives that queue two workers."""
    import mode.threads

    assert mode.threads.MethodQueue().num_workers == 2
    for method in (
        faust_aiokafka.AIOKafkaConsumerThread.getmany,
        faust_aiokafka.AIOKafkaConsumerThread.commit,
    ):
        assert "self.call_thread(" in inspect.getsource(method)


class _WaitingThread:
    """The consumer thread's commit as aiokafka's waits for a coordinator:
    each call is noted, and returns once `coordinator_back` is set."""

    def __init__(self) -> None:
        self.coordinator_back = asyncio.Event()
        self.calls: list[dict[TP, int]] = []

    async def commit(self, offsets: dict[TP, int]) -> bool:
        self.calls.append(dict(offsets))
        await self.coordinator_back.wait()
        return True


def _consumer_on_a_waiting_thread(app_id: str) -> tuple[Any, transport.Consumer, _WaitingThread]:
    app = transport.BatchApp(app_id, broker=f"{transport.register()}://127.0.0.1:1")
    consumer = app.consumer
    assert isinstance(consumer, transport.Consumer)
    thread = _WaitingThread()
    consumer._thread = thread  # type: ignore[assignment]
    return app, consumer, thread


async def test_a_commit_asked_for_while_one_waits_is_skipped_not_queued() -> None:
    _, consumer, thread = _consumer_on_a_waiting_thread("commit-test")
    calls, coordinator_back = thread.calls, thread.coordinator_back
    consumer.commit_positions.record(ORDERS, 640)
    first = asyncio.ensure_future(consumer._send_commit({ORDERS: 640}))
    await asyncio.sleep(0)
    # faust's own commit timer, meanwhile: not sent, so it cannot hold the
    # thread's second worker (the fetches') too.
    assert await asyncio.wait_for(consumer._send_commit({ORDERS: 640}), timeout=1) is False
    assert calls == [{ORDERS: 640}]
    coordinator_back.set()
    assert await first is True
    assert consumer.commit_positions.moved({ORDERS}) == {}
    # The next commit goes again.
    consumer.commit_positions.record(ORDERS, 700)
    assert await consumer._send_commit({ORDERS: 700}) is True
    assert calls[-1] == {ORDERS: 700}


async def test_before_a_revoke_the_last_commit_waits_its_turn_instead() -> None:
    app, consumer, thread = _consumer_on_a_waiting_thread("commit-test-2")
    calls, coordinator_back = thread.calls, thread.coordinator_back
    first = asyncio.ensure_future(consumer._send_commit({ORDERS: 640}))
    await asyncio.sleep(0)
    app.rebalancing = True  # faust's commit before the revoke
    last = asyncio.ensure_future(consumer._send_commit({ORDERS: 700}))
    await asyncio.sleep(0.05)
    assert calls == [{ORDERS: 640}]  # still one in the thread
    coordinator_back.set()
    assert await first is True
    assert await asyncio.wait_for(last, timeout=1) is True
    assert calls == [{ORDERS: 640}, {ORDERS: 700}]


# ------------------------------------------------------------ fetch sizes


async def test_the_worker_consumer_starts_quiet_where_aiokafka_reads_it() -> None:
    """faust passes aiokafka a 1,500 ms wait; ours is set where
    AIOKafkaConsumer.start reads it to build its fetcher (repair 9 then
    moves the fetcher's own values after each fetch)."""
    app = transport.BatchApp("fetch-size-test", broker=f"{transport.register()}://127.0.0.1:1")
    consumer_thread = transport.ConsumerThread(app.consumer, loop=asyncio.get_running_loop())
    client = consumer_thread._create_worker_consumer(app.transport)
    try:
        assert (client._fetch_min_bytes, client._fetch_max_wait_ms) == fetch_sizes.QUIET
        start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
        assert "fetch_min_bytes=self._fetch_min_bytes" in start
        assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start
    finally:
        await client._client.close()


def test_fetches_wait_for_more_while_records_flow_and_answer_at_once_after() -> None:
    class Fetcher:
        _fetch_min_bytes = 1
        _fetch_max_wait_ms = 500

    fetcher = Fetcher()
    fetch_sizes.apply(fetcher, fetch_sizes.sizes_after(True))
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (16 * 1024, 20)
    fetch_sizes.apply(fetcher, fetch_sizes.sizes_after(False))
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, 100)
    # The fetcher reads them under these names for each request it builds.
    source = inspect.getsource(aiokafka_fetcher.Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms," in source
    assert "self._fetch_min_bytes," in source


async def test_the_consumer_thread_sets_the_next_fetch_by_what_this_one_brought() -> None:
    app = transport.BatchApp("fetch-size-test-2", broker=f"{transport.register()}://127.0.0.1:1")
    consumer_thread = transport.ConsumerThread(app.consumer, loop=asyncio.get_running_loop())
    app.consumer.flow_active = True

    class Subscriptions:
        reassignment_in_progress = False

        def fetch_context(self) -> Any:
            import contextlib

            return contextlib.nullcontext()

    class Fetcher:
        _closed = False
        _subscriptions = Subscriptions()
        _records: dict[TP, Any] = {}
        _fetch_min_bytes = 16 * 1024  # as after a fetch that brought records
        _fetch_max_wait_ms = 20
        _wait_consume_future = None

        def _notify(self, future: Any) -> None: ...

    class Client:
        _closed = False
        _fetcher = Fetcher()

    client = Client()
    got = await consumer_thread._fetch_records(client, None, timeout=0, max_records=10)
    assert got == {}
    assert (client._fetcher._fetch_min_bytes, client._fetcher._fetch_max_wait_ms) == (1, 100)
    aiokafka_fetch_result = _one_buffered_record(ORDERS)
    client._fetcher._records = {ORDERS: aiokafka_fetch_result}
    got = await consumer_thread._fetch_records(client, None, timeout=0, max_records=10)
    assert list(got) == [ORDERS]
    assert (client._fetcher._fetch_min_bytes, client._fetcher._fetch_max_wait_ms) == (16 * 1024, 20)


def _one_buffered_record(tp: TP) -> Any:
    class State:
        position = 0
        paused = False

        def consumed_to(self, offset: int) -> None:
            self.position = offset

    class Assignment:
        active = True
        state = State()

        def state_value(self, tp: TP) -> State:
            return self.state

    class Records:
        next_fetch_offset = 0

        def __iter__(self) -> Any:
            return self

        def __next__(self) -> int:
            if self.next_fetch_offset:
                raise StopIteration
            self.next_fetch_offset = 1
            return 0

    return aiokafka_fetcher.FetchResult(
        tp, assignment=Assignment(), partition_records=Records(), backoff=0
    )


async def test_a_sink_group_hands_each_sink_its_topics_share_in_order() -> None:
    calls: list[str] = []
    requests = _Sink("ts.budget-requests", calls=calls)
    inputs = _Sink("ts.orders", "ts.claims", calls=calls)
    group = transport.SinkGroup(requests, inputs)
    assert group.topics == {"ts.budget-requests", "ts.orders", "ts.claims"}
    fetched = {
        TP("ts.orders", 1): [_Record(TP("ts.orders", 1), 3)],
        TP("ts.budget-requests", 1): [_Record(TP("ts.budget-requests", 1), 8)],
        TP("ts.claims", 2): [_Record(TP("ts.claims", 2), 0)],
    }
    await group.on_records(fetched, 4)
    await group.on_records({TP("ts.claims", 2): [_Record(TP("ts.claims", 2), 1)]}, 4)
    await group.drain()
    assert requests.fetches == [({TP("ts.budget-requests", 1): [8]}, 4)]
    assert inputs.fetches == [
        ({TP("ts.orders", 1): [3], TP("ts.claims", 2): [0]}, 4),
        ({TP("ts.claims", 2): [1]}, 4),
    ]
    # A sink with nothing in a fetch is not called; both drain, in order.
    assert calls == [
        "records ts.budget-requests",
        "records ts.claims",
        "records ts.claims",
        "drain ts.budget-requests",
        "drain ts.claims",
    ]
