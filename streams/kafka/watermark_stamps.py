"""High watermarks paired with when their fetch was sent (repair 8).

The processor lets an event pass an input that is read to its end only with
that input's high watermark read after the event arrived
(`streams.processor._Batch._may_release`): whatever the input's producer
appended before the event is then below the mark, so it is fetched and
merged first. The worker took "when" from aiokafka (`last_poll_timestamp`),
which stamps each partition's mark when it *handles* the fetch response.
That can be long after the broker read the mark: the response waits for the
consumer thread's turn at the GIL (a busy main thread, a machine short of
CPU) or the whole process was stopped (SIGSTOP, a suspended VM). An old mark
stamped late passed for a fresh one. Seen in the fault suite
(tests/integration/test_chaos_short.py) with a CPU hog beside it: two ticks
released ahead of 43 and 155 orders of their partitions appended up to ~4 s
before them, all then applied late, and the outputs no longer equal to the
log's replay.

The broker reads a mark after it receives the request, so the moment the
request was sent is a lower bound of when the mark was read. Two things
follow from aiokafka's handling, which the wrapper below leaves as it is:

- **The stamp.** Once the response is handled, every stamp at or after the
  send is set back to the send time (never raised: a partition can be in
  two requests at once after a leader moved, and the one handled first
  keeps its own, earlier, send time).
- **The pair.** The consumer thread handles a response while the worker
  reads marks from the event loop's thread: read between aiokafka's stamp
  and ours, or between a partition's mark and its stamp, a mark would come
  with the wrong time. So the wrapper also publishes `(mark, sent_ms)` as
  one attribute of the partition's state (`MARK_ATTRIBUTE`: one assignment,
  one read, atomic under the GIL), and the worker reads that pair
  (`read_mark`). A reassigned partition gets a new state, so no pair
  outlives its assignment.

aiokafka builds its Fetcher inside `AIOKafkaConsumer.start` and offers no
hook, so the wrapper is set on that one fetcher object
(`ConsumerThread.on_start`); the fetch loop calls the method through the
instance (`Fetcher._fetch_requests_routine`), and both are pinned in
tests/stream/test_kafka_transport.py.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.structs import TopicPartition

MARK_ATTRIBUTE = "taskstream_mark"  # on aiokafka's TopicPartitionState: (mark, sent_ms)
_WRAPPED = "_taskstream_stamps_at_send"


def stamp_at_send(fetcher: Any) -> None:
    """From now on, `fetcher` stamps the marks a fetch brings with the time
    the fetch was sent, and publishes each as a pair (once per fetcher;
    calling it again changes nothing)."""
    if getattr(fetcher, _WRAPPED, False):
        return
    process: Callable[[Any, int, Any], Awaitable[Any]] = fetcher._proc_fetch_request

    async def proc_fetch_request(assignment: Any, node_id: int, request: Any) -> Any:
        sent_ms = int(1000 * time.time())
        states = _states(assignment, request)
        try:
            return await process(assignment, node_id, request)
        finally:
            # No await since aiokafka's handling: no other response's
            # handling in this thread comes in between.
            for state in states:
                stamp = state.timestamp
                if stamp is not None and stamp >= sent_ms:  # handled since the send
                    state.timestamp = sent_ms
                    setattr(state, MARK_ATTRIBUTE, (state.highwater, sent_ms))

    fetcher._proc_fetch_request = proc_fetch_request
    setattr(fetcher, _WRAPPED, True)


def read_mark(state: Any) -> tuple[int | None, float | None]:
    """A partition state's last published (high watermark, seconds since
    the epoch its fetch was sent); (None, None) before its first fetch."""
    pair: tuple[int, int] | None = getattr(state, MARK_ATTRIBUTE, None)
    if pair is None:
        return None, None
    mark, sent_ms = pair
    return mark, sent_ms / 1000.0


def _states(assignment: Any, request: Any) -> list[Any]:
    """The partition states a fetch request asks for (as aiokafka's response
    handling finds them: `request.topics`, then `assignment.state_value`)."""
    states = []
    for topic, partitions in request.topics:
        for partition, *_ in partitions:
            state = assignment.state_value(TopicPartition(topic, partition))
            if state is not None:
                states.append(state)
    return states
