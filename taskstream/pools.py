"""Operators' view of the budget pools: open, close, and where every unit is.

`pools open|close|central POOL` produce a `pool_command` to the partition of the
budget-requests topic that owns the pool's master; the allocator applies it
in order with the buckets' requests.

`pools status` reads what the workers stored, from Kafka (no worker
needed): the latest master of each pool from the allocator table's
changelog, the latest buckets of each partition from the state table's
changelog (the partition records, `p:N`, or a newer batch's redo record
when a crash cut that batch short), and combines their own counters into
the balance sheet `app.bucketing.balance_sheet`: master, each bucket,
issued, in flight, and whether they add up to the total. The state
changelog also holds every user, so this reads it in full: fine for
operations, not for a hot loop.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from app.bucketing import (
    CENTRAL_COMMAND,
    CLOSE_COMMAND,
    OPEN_COMMAND,
    Bucket,
    Master,
    PoolBalanceSheet,
    balance_sheet,
    master_partition,
)
from schemas.codec import encode
from schemas.records import PoolCommand
from streams.allocation import MASTER_PREFIX, decode_allocator, decode_master
from streams.config import ALLOCATOR_TABLE, BUDGET_REQUESTS, STATE_TABLE, Settings
from streams.fencing import epoch_of, keeps
from streams.partition_state import decode_partition, decode_redo
from taskstream.kafka_io import changelog_topic, client_config, producer

COMMANDS = (OPEN_COMMAND, CLOSE_COMMAND, CENTRAL_COMMAND)
_REDO = b"r:"
_RECORD = b"p:"


def send_command(settings: Settings, pool_id: str, command: str, at: int) -> PoolCommand:
    """Produce one pool command; return it once the broker has it."""
    if command not in COMMANDS:
        raise ValueError(f"unknown pool command {command!r}")
    message = PoolCommand(f"cmd-{uuid.uuid4().hex}", pool_id, command, at)
    client = producer(settings)
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    client.produce(
        settings.topic(BUDGET_REQUESTS),
        key=pool_id.encode(),
        value=encode(message),
        partition=master_partition(pool_id, settings.partitions),
        on_delivery=delivered,
    )
    client.flush(30)
    if errors:
        raise RuntimeError(f"pool command not delivered: {errors[0]}")
    return message


def read_latest(
    settings: Settings, topic: str, on_message: Callable[[int], object] | None = None
) -> dict[bytes, bytes]:
    """Every key's latest value in a (compacted) changelog topic, read to its
    end, with the workers' recovery rule: a frozen worker's late writes after
    a newer owner's are skipped (streams.fencing)."""
    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": f"taskstream-pools-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
    )
    latest: dict[bytes, bytes] = {}
    highest: dict[int, int] = {}  # partition -> highest epoch applied
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return latest
        ends: dict[int, int] = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + 120
        while ends and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                continue  # partition EOF and the like
            partition, offset = message.partition() or 0, message.offset() or 0
            key, value = message.key(), message.value()
            epoch = epoch_of(message.headers())
            if not keeps(epoch, highest.get(partition, 0)):
                key = None  # a zombie's
            elif epoch is not None:
                highest[partition] = max(epoch, highest.get(partition, 0))
            if key is not None:
                if value is None:
                    latest.pop(key, None)  # a tombstone
                else:
                    latest[key] = value
            if on_message is not None:
                on_message(1)
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
        if ends:
            raise TimeoutError(f"{topic}: could not read to the end of partitions {sorted(ends)}")
    finally:
        consumer.close()
    return latest


@dataclass(frozen=True)
class PoolsSnapshot:
    masters: dict[str, Master]
    buckets: dict[str, list[Bucket]]  # pool id -> the buckets found, by partition

    def sheets(self) -> list[tuple[Master, PoolBalanceSheet]]:
        return [
            (master, balance_sheet(master, self.buckets.get(pool_id, [])))
            for pool_id, master in sorted(self.masters.items())
        ]


def snapshot(
    settings: Settings, on_message: Callable[[int], object] | None = None
) -> PoolsSnapshot:
    masters = _masters(
        read_latest(settings, changelog_topic(settings, ALLOCATOR_TABLE), on_message)
    )
    records = _partition_records(
        read_latest(settings, changelog_topic(settings, STATE_TABLE), on_message)
    )
    buckets: dict[str, list[Bucket]] = {}
    for record_buckets in records:
        for pool_id, bucket in record_buckets.items():
            buckets.setdefault(pool_id, []).append(bucket)
    return PoolsSnapshot(masters, buckets)


def _with_cut_batches(latest: dict[bytes, bytes], record_seq: Callable[[bytes], int]) -> None:
    """Overlay each redo record newer than what was stored (a batch a crash cut short)."""
    for key, value in list(latest.items()):
        if not key.startswith(_REDO):
            continue
        redo = decode_redo(value)
        stored = _writes_key(redo.writes, latest)
        if stored is None or redo.seq > record_seq(stored):
            for write_key, write_value in redo.writes:
                if write_value is None:
                    latest.pop(write_key, None)
                else:
                    latest[write_key] = write_value


def _writes_key(
    writes: Iterable[tuple[bytes, bytes | None]], latest: dict[bytes, bytes]
) -> bytes | None:
    """The stored record (the batch's last write) that a redo record would update."""
    *_, (last_key, _) = writes
    return latest.get(last_key)


def _masters(latest: dict[bytes, bytes]) -> dict[str, Master]:
    _with_cut_batches(latest, lambda raw: decode_allocator(raw).seq)
    masters = {}
    for key, value in latest.items():
        if key.startswith(MASTER_PREFIX):
            master = decode_master(value)
            masters[master.pool_id] = master
    return masters


def _partition_records(latest: dict[bytes, bytes]) -> list[dict[str, Bucket]]:
    _with_cut_batches(latest, lambda raw: decode_partition(raw).seq)
    return [
        dict(decode_partition(value).buckets)
        for key, value in sorted(latest.items())
        if key.startswith(_RECORD)
    ]


def sheet_as_dict(master: Master, sheet: PoolBalanceSheet) -> dict[str, object]:
    return {
        "pool_id": sheet.pool_id,
        "mode": master.mode,
        "total": sheet.total,
        "master": sheet.master,
        "buckets": {str(p): units for p, units in sheet.buckets.items()},
        "in_buckets": sum(sheet.buckets.values()),
        "issued": sheet.issued,
        "grants_in_flight": sheet.grants_in_flight,
        "returns_in_flight": sheet.returns_in_flight,
        "balanced": sheet.balanced,
        "requests": master.requests,
        "grants": master.grants,
        "denials": master.denials,
        "recall_rounds": master.rounds,
    }
