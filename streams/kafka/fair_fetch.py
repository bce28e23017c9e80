"""Hand out fetched records in turns over the partitions (repair 7).

aiokafka's `Fetcher.fetched_records(max_records=N)` drains the partitions
in the order their fetch responses arrived: the first partition's buffered
records (up to `max_partition_fetch_bytes`, 1 MiB: ~6,000 of our inputs)
fill the whole batch, call after call, before the next partition gets any.
So a backlog was processed one input partition after another: on the peer
benchmark's log the first rewards of one partition came 2.8 s after
another's, and an order often arrived a whole fetch before its user's
claim on the other topic, waiting in the event-time buffer meanwhile.
librdkafka's consumer (Quix Streams, Kafka Streams' tasks in turn) serves
the partitions in turns.

`fetched_records` below is aiokafka's method (0.14.0) with one change: the
batch is shared out in turns, each partition with records getting an equal
share of what is left, until the batch is full or nothing is buffered.
Everything else (the reassignment wait, the errors, the fetch waiter, the
position updates through `FetchResult.getall`) is aiokafka's own, and
tests/stream/test_kafka_transport.py pins the code it mirrors.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.consumer.fetcher import FetchResult
from faust.types import TP


def shares(left: int, ready: int) -> int:
    """Each of `ready` partitions' turn out of `left` records: an equal
    share, rounded up (so one pass can fill the batch), at least one."""
    return max(1, -(-left // ready))


def drain_in_turns(
    fetcher: Any, partitions: set[TP] | None, max_records: int | None, errors_later: bool = False
) -> dict[TP, list[Any]]:
    """The buffered records of `partitions` (None: all), at most
    `max_records`, shared out in turns; raises a partition's fetch error as
    aiokafka does (at once if nothing was drained, else at the next call;
    `errors_later`: always at the next call, for a caller that already
    holds records of this call)."""
    buffered = fetcher._records
    ready: list[TP] = []
    for tp in list(buffered):
        if partitions and tp not in partitions:
            if not fetcher._subscriptions.is_assigned(tp):
                del buffered[tp]  # aiokafka's clean-up of unassigned partitions
            continue
        result = buffered[tp]
        if type(result) is FetchResult:
            ready.append(tp)
        elif ready or errors_later:
            break  # an error: raised at the next call, after these records
        else:
            del buffered[tp]  # so the partition is fetched again
            fetcher._notify(fetcher._wait_consume_future)
            result.check_raise()
    drained: dict[TP, list[Any]] = {}
    left = max_records
    while ready and (left is None or left > 0):
        turn = 0 if left is None else shares(left, len(ready))  # 0: unused, no limit
        again: list[TP] = []
        for tp in ready:
            if left is not None and left <= 0:
                break
            result = buffered[tp]
            records = result.getall(None if left is None else min(turn, left))
            if not result.has_more():
                del buffered[tp]  # all taken: fetch the partition again
                fetcher._notify(fetcher._wait_consume_future)
            elif records:
                again.append(tp)
            if records:
                drained.setdefault(tp, []).extend(records)
                if left is not None:
                    left -= len(records)
        ready = again
    return drained


async def fetched_records(
    fetcher: Any,
    partitions: set[TP] | None,
    timeout: float | None = 0,
    max_records: int | None = None,
) -> dict[TP, list[Any]]:
    """aiokafka's `Fetcher.fetched_records`, draining in turns (a timeout
    of 0 or None: return what is buffered now)."""
    while True:
        if fetcher._subscriptions.reassignment_in_progress:
            await fetcher._subscriptions.wait_for_assignment()
        start_time = time.monotonic()
        drained = drain_in_turns(fetcher, partitions, max_records)
        if drained or not timeout:
            return drained
        waiter = fetcher._create_fetch_waiter()
        done, pending = await asyncio.wait([waiter], timeout=timeout)
        if not done or fetcher._closed:
            if pending:
                pending.pop().cancel()
            return {}
        if waiter.done():
            waiter.result()  # authorisation errors
        timeout = max(0, timeout - (time.monotonic() - start_time))
