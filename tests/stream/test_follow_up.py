"""streams.kafka.follow_up (repair 10): the fetch sent at a drain answers at
once and its records join the drained ones, driven through a fetch loop
that calls the fetcher as aiokafka's does (build, then send each request)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from faust.types import TP

from streams.kafka import fair_fetch, fetch_sizes, follow_up

ORDERS = TP("ts.orders", 1)
CLAIMS = TP("ts.claims", 1)


class State:
    paused = False

    def __init__(self) -> None:
        self.position = 0

    def consumed_to(self, offset: int) -> None:
        self.position = offset


class Assignment:
    active = True

    def __init__(self) -> None:
        self.states: dict[TP, State] = {}

    def state_value(self, tp: TP) -> State:
        return self.states.setdefault(tp, State())


class Records:
    """aiokafka's partition records: the offsets given, in order."""

    def __init__(self, offsets: list[int]) -> None:
        self.offsets = list(offsets)
        self.next_fetch_offset = offsets[0]

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> int:
        if not self.offsets:
            raise StopIteration
        offset = self.offsets.pop(0)
        self.next_fetch_offset = offset + 1
        return offset


class Subscriptions:
    reassignment_in_progress = False

    def is_assigned(self, tp: TP) -> bool:
        return True


class Fetcher:
    """The parts of aiokafka's Fetcher that the repairs touch. Each request
    "answers" with the records queued for the broker (`appended`), as a
    fetch with the sizes it was built with."""

    _closed = False

    def __init__(self, answer_after: float = 0.0) -> None:
        self._records: dict[TP, Any] = {}
        self._subscriptions = Subscriptions()
        self._fetch_min_bytes, self._fetch_max_wait_ms = fetch_sizes.FLOWING
        self._wait_consume_future: asyncio.Future[None] | None = None
        self.assignment = Assignment()
        self.appended: dict[TP, list[int]] = {}
        self.built_with: list[tuple[int, int]] = []
        self.answer_after = answer_after
        self._fetch_waiters: set[asyncio.Future[None]] = set()

    def _create_fetch_waiter(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fetch_waiters.add(waiter)
        return waiter

    def _notify(self, future: Any) -> None:
        if future is not None and not future.done():
            future.set_result(None)

    def _get_actions_per_node(self, assignment: Any) -> tuple[list[Any], dict[Any, Any], float]:
        if self._records:
            return [], {}, 0.1  # a node with buffered records gets no fetch
        sizes = (self._fetch_min_bytes, self._fetch_max_wait_ms)
        self.built_with.append(sizes)
        return [(0, object())], {}, 0.1

    async def _proc_fetch_request(self, assignment: Any, node_id: int, request: Any) -> bool:
        await asyncio.sleep(self.answer_after)
        for tp, offsets in self.appended.items():
            if offsets:
                self.assignment.state_value(tp).position = offsets[0]  # where it fetched from
                self._records[tp] = aiokafka_fetcher.FetchResult(
                    tp, assignment=self.assignment, partition_records=Records(offsets), backoff=0
                )
        self.appended = {}
        if self._records:
            for waiter in list(self._fetch_waiters):
                self._notify(waiter)
            self._fetch_waiters.clear()
        return bool(self._records)


async def fetch_loop(fetcher: Fetcher) -> None:
    """aiokafka's `_fetch_requests_routine`, reduced to the order of calls:
    build when woken, send each request, wait for a drain or an answer."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[Any]] = set()
    while True:
        fetcher._wait_consume_future = loop.create_future()
        fetch_requests, _, _ = fetcher._get_actions_per_node(fetcher.assignment)
        for node_id, request in fetch_requests:
            pending.add(
                asyncio.ensure_future(
                    fetcher._proc_fetch_request(fetcher.assignment, node_id, request)
                )
            )
        done, _ = await asyncio.wait(
            {*pending, fetcher._wait_consume_future}, return_when=asyncio.FIRST_COMPLETED
        )
        pending -= done


def buffer(fetcher: Fetcher, tp: TP, offsets: list[int]) -> None:
    fetcher.assignment.state_value(tp).position = offsets[0]
    fetcher._records[tp] = aiokafka_fetcher.FetchResult(
        tp, assignment=fetcher.assignment, partition_records=Records(offsets), backoff=0
    )


async def test_the_fetch_sent_at_a_drain_answers_at_once_and_joins_the_batch() -> None:
    fetcher = Fetcher()
    follow_up.install(fetcher)
    buffer(fetcher, ORDERS, [10, 11])
    fetcher.appended = {ORDERS: [12, 13], CLAIMS: [5]}  # while the last batch ran
    loop_task = asyncio.ensure_future(fetch_loop(fetcher))
    try:
        await asyncio.sleep(0)
        drained = await fair_fetch.fetched_records(fetcher, None, 0, None)
        added = await follow_up.take_follow_up(fetcher, None, None, drained)
    finally:
        loop_task.cancel()
    assert added == 3
    assert drained == {ORDERS: [10, 11, 12, 13], CLAIMS: [5]}
    # Only the request built at the drain answered at once; the sizes went
    # back to the flowing ones for the next.
    assert fetcher.built_with[-1] == (
        follow_up.FOLLOW_UP.min_bytes,
        follow_up.FOLLOW_UP.max_wait_ms,
    )
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == fetch_sizes.FLOWING


async def test_a_batch_size_reached_leaves_the_rest_buffered_and_sends_no_follow_up() -> None:
    fetcher = Fetcher()
    follow_up.install(fetcher)
    buffer(fetcher, ORDERS, [10, 11, 12])
    drained = await fair_fetch.fetched_records(fetcher, None, 0, 2)
    assert await follow_up.take_follow_up(fetcher, None, 2, drained) == 0
    assert drained == {ORDERS: [10, 11]}
    assert fetcher.built_with == []
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == fetch_sizes.FLOWING


async def test_a_slow_answer_is_not_waited_for_and_comes_with_the_next_drain() -> None:
    fetcher = Fetcher(answer_after=follow_up.FOLLOW_UP_WAIT_SECONDS * 4)
    follow_up.install(fetcher)
    buffer(fetcher, ORDERS, [10])
    fetcher.appended = {ORDERS: [11]}
    loop_task = asyncio.ensure_future(fetch_loop(fetcher))
    try:
        await asyncio.sleep(0)
        drained = await fair_fetch.fetched_records(fetcher, None, 0, None)
        assert await follow_up.take_follow_up(fetcher, None, None, drained) == 0
        assert drained == {ORDERS: [10]}
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == fetch_sizes.FLOWING
        later = await fair_fetch.fetched_records(fetcher, None, 1.0, None)
    finally:
        loop_task.cancel()
    assert later == {ORDERS: [11]}


async def test_a_drain_of_nothing_sends_no_follow_up() -> None:
    fetcher = Fetcher()
    follow_up.install(fetcher)
    drained: dict[TP, list[Any]] = {}
    assert await follow_up.take_follow_up(fetcher, None, None, drained) == 0
    assert fetcher.built_with == []
    assert drained == {}


async def test_a_fetch_error_after_the_follow_up_is_raised_at_the_next_call_not_this_one() -> None:
    class Failed:
        def check_raise(self) -> None:
            raise RuntimeError("fetch failed")

    fetcher = Fetcher()
    fetcher._records[CLAIMS] = Failed()
    assert fair_fetch.drain_in_turns(fetcher, None, None, errors_later=True) == {}
    assert CLAIMS in fetcher._records  # still there for the next call
    with pytest.raises(RuntimeError, match="fetch failed"):
        fair_fetch.drain_in_turns(fetcher, None, None)


def test_install_is_once_per_fetcher() -> None:
    fetcher = Fetcher()
    first = follow_up.install(fetcher)
    build = fetcher._get_actions_per_node
    assert follow_up.install(fetcher) is first
    assert fetcher._get_actions_per_node is build


def test_aiokafka_builds_and_sends_through_the_instance() -> None:
    """The wrappers sit on one fetcher object: the fetch loop must call both
    methods through `self` (its digest is pinned in test_kafka_transport)."""
    source = inspect.getsource(aiokafka_fetcher.Fetcher._fetch_requests_routine)
    assert "= self._get_actions_per_node(assignment)" in source
    assert "self._proc_fetch_request(assignment, node_id, request)" in source
    # ... and the first of what _get_actions_per_node returns is the requests.
    actions = inspect.getsource(aiokafka_fetcher.Fetcher._get_actions_per_node)
    assert "return (\n            fetch_requests," in actions
