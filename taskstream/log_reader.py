"""Read whole topics from Kafka, as they are now: what audit, explain and simulate start from.

    read_topics(settings, ["claims", "orders"], on_message=bar.update) -> list[LogMessage]

Each topic is read from its first retained offset to the end offset it had
when the read began (messages produced meanwhile are left for the next
run), by a consumer that never joins a group (`assign`, no commits), so
reading never disturbs the workers. Messages come back per topic and
partition in offset order; nothing is decoded here.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition
from tqdm import tqdm

from streams.config import Settings
from taskstream.kafka_io import client_config


@dataclass(frozen=True, slots=True)
class LogMessage:
    topic: str  # the short name ("orders"), as in streams.config
    partition: int
    offset: int
    timestamp_ms: int  # the broker's timestamp (create time unless the topic says otherwise)
    key: bytes | None
    value: bytes | None

    def source(self, prefix: str) -> str:
        """Where it was read, as the workers name it in dead letters."""
        return f"{prefix}{self.topic}/{self.partition}@{self.offset}"


class TopicMissing(LookupError):
    """A topic to read does not exist on the brokers."""


def partition_count(settings: Settings, short_topic: str, timeout: float = 10.0) -> int:
    """How many partitions a topic has (TopicMissing if it does not exist)."""
    consumer = _consumer(settings)
    try:
        marks = _watermarks(consumer, settings, [short_topic], timeout)
    finally:
        consumer.close()
    return len(marks)


def end_offsets(
    settings: Settings, short_topics: Iterable[str], timeout: float = 10.0
) -> dict[tuple[str, int], tuple[int, int]]:
    """(short topic, partition) -> (first retained offset, end offset), now."""
    consumer = _consumer(settings)
    try:
        return _watermarks(consumer, settings, list(short_topics), timeout)
    finally:
        consumer.close()


def read_topics(
    settings: Settings,
    short_topics: Iterable[str],
    *,
    on_message: Callable[[int], object] | None = None,
    on_total: Callable[[int], object] | None = None,
    timeout: float = 300.0,
    missing_ok: bool = False,
    partitions: Iterable[int] | None = None,
    optional: Collection[str] = (),
) -> list[LogMessage]:
    """Every message of the topics, from the start to the end offsets seen at
    the start. `on_total` learns how many messages that is (for a progress
    bar), `on_message` is called once per message read. A missing topic
    raises TopicMissing unless `missing_ok` or it is `optional` (then it
    reads as empty). `partitions`: read only these partitions of every topic."""
    topics = list(short_topics)
    consumer = _consumer(settings)
    out: list[LogMessage] = []
    try:
        marks = _watermarks(
            consumer, settings, topics, 10.0, missing_ok=missing_ok, optional=optional
        )
        if partitions is not None:
            wanted = set(partitions)
            marks = {tp: mark for tp, mark in marks.items() if tp[1] in wanted}
        remaining = {tp: high for tp, (low, high) in marks.items() if high > low}
        if on_total is not None:
            on_total(sum(high - low for low, high in marks.values()))
        short_of = {settings.topic(t): t for t in topics}
        consumer.assign(
            [
                TopicPartition(settings.topic(topic), partition, marks[(topic, partition)][0])
                for topic, partition in remaining
            ]
        )
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            for message in batch:
                if message.error() is not None:
                    continue  # partition EOF and the like
                topic = short_of[message.topic() or ""]
                partition, offset = message.partition() or 0, message.offset() or 0
                end = remaining.get((topic, partition))
                if end is None or offset >= end:
                    continue  # produced after the read began
                _kind, timestamp = message.timestamp()
                out.append(
                    LogMessage(topic, partition, offset, timestamp, message.key(), message.value())
                )
                if on_message is not None:
                    on_message(1)
                if offset + 1 >= end:
                    remaining.pop((topic, partition))
        if remaining:
            raise TimeoutError(
                "could not read to the end of "
                + ", ".join(f"{t}/{p}" for t, p in sorted(remaining))
                + f" within {timeout:.0f} s"
            )
    finally:
        consumer.close()
    out.sort(key=lambda m: (m.topic, m.partition, m.offset))
    return out


def read_topics_with_progress(
    settings: Settings,
    short_topics: Iterable[str],
    *,
    progress: bool,
    partitions: Iterable[int] | None = None,
    optional: Collection[str] = (),
) -> list[LogMessage]:
    """`read_topics` with a progress bar on stderr (shown only on a terminal)."""
    with tqdm(desc="reading", unit="msg", file=sys.stderr, disable=not progress or None) as bar:
        return read_topics(
            settings,
            short_topics,
            partitions=partitions,
            optional=optional,
            on_total=lambda n: setattr(bar, "total", n),
            on_message=bar.update,
        )


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        client_config(
            settings,
            **{
                # Never joins the group (assign only) and never commits.
                "group.id": f"taskstream-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.max.bytes": 64 * 1024 * 1024,
            },
        )
    )


def _watermarks(
    consumer: Consumer,
    settings: Settings,
    topics: list[str],
    timeout: float,
    *,
    missing_ok: bool = False,
    optional: Collection[str] = (),
) -> dict[tuple[str, int], tuple[int, int]]:
    marks: dict[tuple[str, int], tuple[int, int]] = {}
    for topic in topics:
        name = settings.topic(topic)
        metadata = consumer.list_topics(name, timeout=timeout).topics.get(name)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            if missing_ok or topic in optional:
                continue
            raise TopicMissing(f"topic {name} does not exist on {settings.bootstrap}")
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(name, partition), timeout=timeout
            )
            marks[(topic, partition)] = (low, high)
    return marks
