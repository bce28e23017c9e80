"""How long a fetch may wait at the broker, by whether records are flowing.

Kafka answers a fetch once it finds `fetch.min.bytes` of new records, or
after `fetch.max.wait.ms` with whatever it found. aiokafka's defaults (1
byte) answer every fetch at the first record: at 200 events/s every record
made a fetch of its own, and each response lists every assigned partition
(49 for a worker), which aiokafka decodes in Python: half a core of the
worker (aiokafka's thread 0.25 of it) and 0.6 of the broker's.

- **Flowing** (the last fetch brought records): wait for 16 KiB or 20 ms.
  At 200 events/s the worker took 0.19 cores and the broker 0.5, for
  +12-15 ms of latency (reward p99 7-18 -> 25-28 ms); at 14,415 events/s
  16 KiB arrives within a few ms and no cost was seen (BENCHMARKS.md
  "peer", fourth session).
- **Quiet** (the last fetch found nothing): answer at the first byte, and
  wait up to 100 ms otherwise, as before. The first record after a quiet
  spell is answered at once, and an idle worker asks 10 times a second,
  not 50 (the 20 ms wait alone took an idle worker's aiokafka thread from
  0.23 to 1.04 CPU s per 20 s).

The waits also bound how long an event waits for a quiet input: the
processor lets it pass only with that input's high watermark from a fetch
*sent* after the event's idle wait (`streams.kafka.watermark_stamps`), so
up to one fetch wait (20 or 100 ms) after the fetch in flight.

aiokafka reads both from its fetcher each time it builds a fetch request
(`Fetcher._get_actions_per_node`, pinned in tests/stream/test_kafka_transport.py);
the consumer thread, which runs the fetcher, sets them each time it hands
fetched records on (`ConsumerThread._fetch_records`), by whether there were
any.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class FetchSizes(NamedTuple):
    min_bytes: int
    max_wait_ms: int


FLOWING = FetchSizes(min_bytes=16 * 1024, max_wait_ms=20)
QUIET = FetchSizes(min_bytes=1, max_wait_ms=100)


def sizes_after(got_records: bool) -> FetchSizes:
    """The next fetch's sizes, given whether the last one brought records."""
    return FLOWING if got_records else QUIET


def apply(target: Any, sizes: FetchSizes) -> None:
    """Set `sizes` on aiokafka's fetcher (or on its consumer before start,
    which hands them to the fetcher it builds)."""
    target._fetch_min_bytes = sizes.min_bytes
    target._fetch_max_wait_ms = sizes.max_wait_ms
