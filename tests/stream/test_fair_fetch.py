"""Repair 7 (streams.kafka.fair_fetch): a fetch's buffered records are
handed out in turns over the partitions, through aiokafka's own
FetchResult (its getall moves the positions)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.consumer.fetcher import FetchError, FetchResult
from aiokafka.errors import KafkaError
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from streams.kafka.fair_fetch import drain_in_turns, fetched_records, shares


@dataclass
class _State:
    position: int
    paused: bool = False

    def consumed_to(self, offset: int) -> None:
        self.position = offset


@dataclass
class _Assignment:
    states: dict[TP, _State] = field(default_factory=dict)
    active: bool = True

    def state_value(self, tp: TP) -> _State:
        return self.states[tp]


class _Records:
    """aiokafka's PartitionRecords as FetchResult uses it: an iterator
    whose next_fetch_offset follows what was taken."""

    def __init__(self, start: int, count: int) -> None:
        self.next_fetch_offset = start
        self._end = start + count

    def __iter__(self) -> _Records:
        return self

    def __next__(self) -> int:
        if self.next_fetch_offset >= self._end:
            raise StopIteration
        self.next_fetch_offset += 1
        return self.next_fetch_offset - 1


@dataclass
class _Subscriptions:
    assignment: _Assignment
    reassignment_in_progress: bool = False

    def is_assigned(self, tp: TP) -> bool:
        return tp in self.assignment.states


class _Fetcher:
    """The parts of aiokafka's Fetcher that fair_fetch reads."""

    def __init__(self, buffered: dict[TP, int]) -> None:
        self.assignment = _Assignment()
        self._subscriptions = _Subscriptions(self.assignment)
        self._records: dict[TP, Any] = {}
        self.notified = 0
        self._wait_consume_future = None
        self._closed = False
        for tp, count in buffered.items():
            self.buffer(tp, count)

    def buffer(self, tp: TP, count: int, start: int = 0) -> None:
        self.assignment.states[tp] = _State(start)
        self._records[tp] = FetchResult(
            tp, assignment=self.assignment, partition_records=_Records(start, count), backoff=0
        )

    def _notify(self, future: Any) -> None:
        self.notified += 1

    def _create_fetch_waiter(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()


def tp(partition: int, topic: str = "ts.orders") -> TP:
    return TP(topic, partition)


def test_a_batch_is_shared_out_over_every_buffered_partition() -> None:
    fetcher = _Fetcher({tp(0): 6000, tp(1): 6000, tp(2): 6000, tp(3): 6000})
    drained = drain_in_turns(fetcher, None, 2000)
    assert {p: len(records) for p, records in drained.items()} == {
        tp(0): 500,
        tp(1): 500,
        tp(2): 500,
        tp(3): 500,
    }
    assert drained[tp(2)] == list(range(500))  # in offset order, from the position
    assert fetcher.assignment.states[tp(2)].position == 500
    assert fetcher.notified == 0  # every partition still has records buffered


def test_what_a_short_partition_leaves_goes_to_the_others() -> None:
    fetcher = _Fetcher({tp(0): 10, tp(1): 6000, tp(2): 6000})
    drained = drain_in_turns(fetcher, None, 2000)
    assert sum(map(len, drained.values())) == 2000
    assert len(drained[tp(0)]) == 10
    assert abs(len(drained[tp(1)]) - len(drained[tp(2)])) <= 1
    assert tp(0) not in fetcher._records  # all taken: fetched again
    assert fetcher.notified == 1


def test_the_old_drain_took_one_partition_at_a_time() -> None:
    """Why repair 7 exists: aiokafka's own order, for contrast."""
    fetcher = _Fetcher({tp(0): 6000, tp(1): 6000})
    taken: dict[TP, list[int]] = {}
    left = 2000
    for p, result in list(fetcher._records.items()):
        taken[p] = result.getall(left)
        left -= len(taken[p])
        if not left:
            break
    assert list(taken) == [tp(0)]


def test_only_the_asked_partitions_and_unassigned_ones_are_cleaned_up() -> None:
    fetcher = _Fetcher({tp(0): 5, tp(1): 5, tp(2): 5})
    del fetcher.assignment.states[tp(2)]  # revoked meanwhile
    drained = drain_in_turns(fetcher, {tp(0)}, 100)
    assert list(drained) == [tp(0)]
    assert tp(1) in fetcher._records  # kept for a later call
    assert tp(2) not in fetcher._records


def test_a_paused_partition_gives_nothing_and_is_fetched_again() -> None:
    fetcher = _Fetcher({tp(0): 5, tp(1): 5})
    fetcher.assignment.states[tp(0)].paused = True
    drained = drain_in_turns(fetcher, None, 100)
    assert list(drained) == [tp(1)]
    assert tp(0) not in fetcher._records


def test_no_limit_takes_everything() -> None:
    fetcher = _Fetcher({tp(0): 7, tp(1): 3})
    drained = drain_in_turns(fetcher, None, None)
    assert {p: len(r) for p, r in drained.items()} == {tp(0): 7, tp(1): 3}
    assert not fetcher._records


def test_an_error_is_raised_alone_or_after_the_records_before_it() -> None:
    fetcher = _Fetcher({tp(0): 5})
    fetcher._records[tp(1)] = FetchError(error=KafkaError("broken"), backoff=0)
    assert list(drain_in_turns(fetcher, None, 100)) == [tp(0)]
    assert tp(1) in fetcher._records  # kept: raised at the next call
    with pytest.raises(KafkaError):
        drain_in_turns(fetcher, None, 100)
    assert tp(1) not in fetcher._records  # so the partition is fetched again


@given(
    st.lists(st.integers(0, 3000), min_size=1, max_size=12),
    st.integers(1, 5000),
)
def test_turns_fill_the_batch_fairly_and_lose_nothing(counts: list[int], limit: int) -> None:
    fetcher = _Fetcher({tp(n): count for n, count in enumerate(counts)})
    drained = drain_in_turns(fetcher, None, limit)
    got = {p: len(records) for p, records in drained.items()}
    assert sum(got.values()) == min(limit, sum(counts))
    for n, count in enumerate(counts):
        taken = got.get(tp(n), 0)
        assert drained.get(tp(n), []) == list(range(taken))
        assert fetcher.assignment.states[tp(n)].position == taken
        # Fair: a partition left with records got as much as any other, but
        # for the one turn the full batch cut short.
        if taken < count:
            assert all(taken >= other - shares(limit, len(counts)) for other in got.values())


def test_shares_round_up() -> None:
    assert shares(2000, 3) == 667
    assert shares(1, 8) == 1
    assert shares(16, 8) == 2


def test_the_waiting_call_returns_what_a_fetch_brings_in_turns() -> None:
    async def scenario() -> dict[TP, list[int]]:
        fetcher = _Fetcher({})
        waiter: asyncio.Future[None] | None = None

        def create() -> asyncio.Future[None]:
            nonlocal waiter
            waiter = asyncio.get_running_loop().create_future()
            return waiter

        fetcher._create_fetch_waiter = create  # type: ignore[method-assign]
        call = asyncio.ensure_future(fetched_records(fetcher, None, 5.0, 10))
        await asyncio.sleep(0)
        fetcher.buffer(tp(0), 100)
        fetcher.buffer(tp(1), 100)
        assert waiter is not None
        waiter.set_result(None)
        return await call

    drained = asyncio.run(scenario())
    assert {p: len(r) for p, r in drained.items()} == {tp(0): 5, tp(1): 5}


def test_nothing_buffered_and_no_timeout_returns_at_once() -> None:
    assert asyncio.run(fetched_records(_Fetcher({}), None, 0, 10)) == {}
