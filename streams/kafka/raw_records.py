"""Repair 11: the batch sink's records as aiokafka parsed them, with no
`ConsumerRecord` made for each.

aiokafka's `PartitionRecords` turns every record of a fetch into a
`ConsumerRecord` (`_consumer_record`: a dataclass of eleven fields, the
key and value sizes, a tuple of the headers), in the consumer thread, and
the worker then reads five of those fields to make its own `InMessage`.
The record it starts from, aiokafka's compiled `DefaultRecord` (or
`LegacyRecord` for old message formats), already has the same `offset`,
`timestamp`, `timestamp_type`, `key`, `value` and `headers`; the topic and
partition are the fetch's, which the sink gets with every batch. On the
peer log the consumer thread spent 0.62 of the worker's ~6.8 CPU s; without
the `ConsumerRecord`s, 0.47 (BENCHMARKS.md "peer", thirteenth session).

So the sink's topics get their records as parsed: once a fetch response is
handled (`Fetcher._proc_fetch_request`, wrapped on one fetcher), each new
buffer of a sink topic makes no `ConsumerRecord`. Only when no key or value
deserializer is set (faust sets none: it decodes the bytes itself); other
topics (changelogs, faust's own) are left as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
from faust.types import TP

_ATTRIBUTE = "_taskstream_raw_records"


def as_parsed(tp: TP, record: Any) -> Any:
    """`PartitionRecords._consumer_record` for a sink topic: the record as is."""
    return record


def topics_of(fetcher: Any) -> frozenset[str] | None:
    """The topics `install` was called with on `fetcher` (None: not installed)."""
    topics: frozenset[str] | None = getattr(fetcher, _ATTRIBUTE, None)
    return topics


def install(fetcher: Any, topics: frozenset[str]) -> None:
    """Wrap `fetcher`'s response handling so the buffers of `topics` hand
    out parsed records (once per fetcher)."""
    if topics_of(fetcher) is not None:
        return
    process: Callable[[Any, int, Any], Awaitable[Any]] = fetcher._proc_fetch_request

    async def proc_fetch_request(assignment: Any, node_id: int, request: Any) -> Any:
        try:
            return await process(assignment, node_id, request)
        finally:
            unwrap(fetcher._records, topics)

    fetcher._proc_fetch_request = proc_fetch_request
    setattr(fetcher, _ATTRIBUTE, topics)


def unwrap(buffered: dict[TP, Any], topics: frozenset[str]) -> int:
    """Make the not yet drained buffers of `topics` hand out parsed records;
    returns how many it changed. A buffer is changed before its first record
    is handed out (the response's handler made it just now, and the records
    are made lazily, as they are drained), so a drain never mixes the two."""
    changed = 0
    for tp, result in buffered.items():
        if tp.topic not in topics or type(result) is not FetchResult:
            continue
        records = result._partition_records
        if (
            type(records) is PartitionRecords
            and "_consumer_record" not in records.__dict__
            and records._key_deserializer is None
            and records._value_deserializer is None
        ):
            records._consumer_record = as_parsed
            changed += 1
    return changed
