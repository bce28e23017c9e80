"""Read a range of one changelog partition: the keys and epochs written there.

Used by streams.fenced_store to repair after a zombie's late writes (it
runs in a thread: confluent-kafka blocks). Configured with the worker's
client settings, TLS and SASL included.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.fencing import epoch_of


@dataclass(frozen=True)
class Written:
    offset: int
    key: bytes
    epoch: int | None


def read_range(
    config: Mapping[str, Any], topic: str, partition: int, start: int, end: int, timeout: float = 30
) -> list[Written]:
    """Every keyed message at offsets `start` <= offset < `end` (fewer if
    compaction removed some), read without a consumer group."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            **config,
            "group.id": f"taskstream-fence-{uuid.uuid4().hex}",  # required; never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    found: list[Written] = []
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                continue
            offset = message.offset() or 0
            if offset >= end:
                break
            key = message.key()
            if key is not None:
                found.append(Written(offset, key, epoch_of(message.headers())))
        else:
            raise TimeoutError(f"{topic}[{partition}]: offsets {start}..{end} not read")
    finally:
        consumer.close()
    return found
