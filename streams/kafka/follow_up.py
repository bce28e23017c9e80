"""At each drain, a follow-up fetch answered at once (repair 10).

aiokafka sends a node its next fetch only once every buffered record of its
partitions has been handed out. The worker takes them all at the start of a
batch, so the fetch sent then answers at once (while records flow, more
than its 16 KiB were appended during the batch before) with what was
appended *before* it was sent, and those records then wait in aiokafka's
buffer for the whole batch being processed. What is appended during that
batch goes out with the next fetch, sent when the next batch starts, and is
processed only in the batch after: two batch times before a record's turn.
Measured at 19,000 events/s on the latency log (one worker, 8 partitions):
a record was 22 ms old on average when its batch began, 14 ms of it in the
buffer while the batch before ran (BENCHMARKS.md "stream").

So when a drain hands out records, the consumer thread waits for the fetch
aiokafka sends at that drain, asked to answer at once (`FOLLOW_UP`: at most
0 ms at the broker), and hands its records out with the drained ones: a
batch then holds everything appended up to its start. The answer also
brings every fetched partition's high watermark, read after the drained
records were appended: the processor lets an event pass an input read to
its end only with a mark read after the event arrived
(`streams.kafka.watermark_stamps`), which took the next fetch before (20 ms
at the broker at 200 events/s), and now takes this one.

How it hooks in (the two fetcher methods are pinned in
tests/stream/test_kafka_transport.py; the fetch loop calls both through the
instance, as repair 8 relies on too):

- `Fetcher._get_actions_per_node` builds the requests from the fetcher's
  sizes. Armed (`arm`), the fetcher asks with `FOLLOW_UP`; the wrapper
  notes the requests built then and puts the sizes back at once, so only
  those requests answer at once.
- `Fetcher._proc_fetch_request` sends one and handles its answer; the
  wrapper marks the noted ones done.

A drain that leaves records buffered (a batch size reached) sends no fetch
to their node, and a fetch that does not come back within
`FOLLOW_UP_WAIT_SECONDS` is not waited for further: the batch goes on with
what it has, and that fetch's records come with the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import TP

from streams.kafka import fair_fetch, fetch_sizes
from streams.kafka.fetch_sizes import FetchSizes

FOLLOW_UP = FetchSizes(min_bytes=1, max_wait_ms=0)
# How long a drain waits for its follow-up's answer at most. A broker answers
# a fetch that may not wait within a round trip (~1 ms here); this bounds
# what a slow broker or a starved consumer thread adds to a batch.
FOLLOW_UP_WAIT_SECONDS = 0.05

_ATTRIBUTE = "taskstream_follow_up"


class FollowUps:
    """One fetcher's follow-up state, kept on the fetcher (`install`)."""

    def __init__(self, fetcher: Any) -> None:
        self.fetcher = fetcher
        # The sizes to put back once the follow-up requests are built (None:
        # not armed).
        self.restore: FetchSizes | None = None
        self.waiting: set[int] = set()  # id() of the follow-up requests not answered yet
        # Done once the armed requests are built and answered (`on_built`
        # alone resolves it when none were built).
        self.answered: asyncio.Future[None] | None = None

    def arm(self, then: FetchSizes) -> None:
        """The next requests the fetcher builds answer at once; those after
        them are asked with `then`."""
        self.restore = then
        self.answered = asyncio.get_running_loop().create_future()
        self.waiting = set()
        fetch_sizes.apply(self.fetcher, FOLLOW_UP)

    def disarm(self, then: FetchSizes) -> None:
        self.restore = None
        self.answered = None
        self.waiting = set()
        fetch_sizes.apply(self.fetcher, then)

    def on_built(self, fetch_requests: list[tuple[int, Any]]) -> None:
        """The fetch loop built `fetch_requests` (node id, request)."""
        if self.restore is None:
            return
        fetch_sizes.apply(self.fetcher, self.restore)
        self.restore = None
        self.waiting = {id(request) for _, request in fetch_requests}
        if not self.waiting:
            _resolve(self.answered)

    def on_answered(self, request: Any) -> None:
        """A fetch's answer was handled (or it failed or was cancelled)."""
        if id(request) in self.waiting:
            self.waiting.discard(id(request))
            if not self.waiting:
                _resolve(self.answered)

    async def wait(self, timeout: float) -> bool:
        """Wait until the armed requests are built and answered, at most
        `timeout` seconds in all; whether they were."""
        answered = self.answered
        if answered is None:
            return False
        try:
            await asyncio.wait_for(asyncio.shield(answered), timeout)
        except TimeoutError:
            return False
        return True


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def install(fetcher: Any) -> FollowUps:
    """Wrap `fetcher`'s request building and sending (once per fetcher:
    calling it again returns the same state)."""
    existing: FollowUps | None = getattr(fetcher, _ATTRIBUTE, None)
    if existing is not None:
        return existing
    follow_ups = FollowUps(fetcher)
    build: Callable[[Any], Any] = fetcher._get_actions_per_node
    process: Callable[[Any, int, Any], Awaitable[Any]] = fetcher._proc_fetch_request

    def get_actions_per_node(assignment: Any) -> Any:
        actions = build(assignment)
        follow_ups.on_built(actions[0])  # (fetch_requests, resets, timeout, ...)
        return actions

    async def proc_fetch_request(assignment: Any, node_id: int, request: Any) -> Any:
        try:
            return await process(assignment, node_id, request)
        finally:
            follow_ups.on_answered(request)

    fetcher._get_actions_per_node = get_actions_per_node
    fetcher._proc_fetch_request = proc_fetch_request
    setattr(fetcher, _ATTRIBUTE, follow_ups)
    return follow_ups


def follow_ups_of(fetcher: Any) -> FollowUps | None:
    """The fetcher's state, if `install` was called on it."""
    state: FollowUps | None = getattr(fetcher, _ATTRIBUTE, None)
    return state


async def take_follow_up(
    fetcher: Any,
    partitions: set[TP] | None,
    max_records: int | None,
    drained: dict[TP, list[Any]],
) -> int:
    """After a drain that handed out `drained`: wait for the fetch sent at
    that drain, asked to answer at once, and add its records (of
    `partitions`; None: all) after the drained ones, up to `max_records`
    in all. Returns how many it added. Runs in the consumer thread."""
    state = follow_ups_of(fetcher)
    if state is None or not drained:
        return 0
    left = None if max_records is None else max_records - sum(map(len, drained.values()))
    if left is not None and left <= 0:
        return 0  # records are left in the buffer: no fetch goes to their node
    flowing = fetch_sizes.sizes_after(True)
    state.arm(then=flowing)
    if not await state.wait(FOLLOW_UP_WAIT_SECONDS):
        state.disarm(then=flowing)  # its records, if any, come with the next drain
        return 0
    if fetcher._subscriptions.reassignment_in_progress:
        return 0  # the next call waits for the assignment (`fair_fetch.fetched_records`)
    more = fair_fetch.drain_in_turns(fetcher, partitions, left, errors_later=True)
    added = 0
    for tp, records in more.items():
        drained.setdefault(tp, []).extend(records)
        added += len(records)
    return added
