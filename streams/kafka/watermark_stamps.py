"""High watermarks stamped with when their fetch was sent (repair 8).

The processor lets an event pass an input that is read to its end only with
that input's high watermark read after the event arrived
(`streams.processor._Batch._may_release`): whatever the input's producer
appended before the event is then below the mark, so it is fetched and
merged first. The worker reads "when" from aiokafka (`last_poll_timestamp`),
which stamps each partition's mark when it *processes* the fetch response.
That can be long after the broker read the mark: the response waits for the
consumer thread's turn at the GIL (a busy main thread, a machine short of
CPU) or the whole process was stopped (SIGSTOP, a suspended VM). An old mark
stamped late passes for a fresh one. Seen in the fault suite
(tests/integration/test_chaos_short.py) with a CPU hog beside it: a tick
released ahead of 155 orders of its partition appended about 2 s before it,
all then applied late, and the outputs no longer equal the log's replay.

The broker reads a mark after it receives the request, so the moment the
request was sent is a lower bound of when the mark was read. Stamped with
it, "read after the event arrived" holds however late the response is
handled. Every other effect of the response (records, positions, the mark
itself, errors) is aiokafka's own: the fetcher's `_proc_fetch_request` runs
unchanged inside a wrapper set on that one fetcher object (aiokafka builds
its Fetcher inside `AIOKafkaConsumer.start` and offers no hook), and only
the stamps it moved are set back to the send time. The fetch loop calls the
method through the instance (`Fetcher._fetch_requests_routine`), and both
are pinned in tests/stream/test_kafka_transport.py.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.structs import TopicPartition

_MARK = "_taskstream_stamps_at_send"


def stamp_at_send(fetcher: Any) -> None:
    """From now on, `fetcher` stamps the marks a fetch brings with the time
    the fetch was sent (once per fetcher; calling it again changes nothing)."""
    if getattr(fetcher, _MARK, False):
        return
    process: Callable[[Any, int, Any], Awaitable[Any]] = fetcher._proc_fetch_request

    async def proc_fetch_request(assignment: Any, node_id: int, request: Any) -> Any:
        sent_ms = int(1000 * time.time())
        before = [(state, state.timestamp) for state in _states(assignment, request)]
        try:
            return await process(assignment, node_id, request)
        finally:
            for state, stamp in before:
                if state.timestamp != stamp:  # this response's mark
                    state.timestamp = sent_ms

    fetcher._proc_fetch_request = proc_fetch_request
    setattr(fetcher, _MARK, True)


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
