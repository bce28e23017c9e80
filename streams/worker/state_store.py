"""One partition's share of a faust table, written a batch at a time.

faust's table writes a key at a time: a changelog send through aiokafka and
a RocksDB put per key, behind its Table/Store layers. The worker's batches
write many keys at once, so `PartitionStateStore` writes them the way Quix
Streams and Kafka Streams do: every key's changelog record handed to the
librdkafka producer (with the writer's epoch, streams.fencing), then one
RocksDB write batch per partition. Reads go straight to the partition's
database. The store is faust's (`FencedStore`, opened, recovered and
revoked by faust), so recovery, standby-less rebuilds and the zombie fence
work as for any faust table.

Durability is unchanged from faust's: the changelog is the truth; the local
copy's recorded offset only advances to acknowledged changelog offsets
(`acknowledge`), so a crash between the RocksDB write and the delivery
replays those records at recovery.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import rocksdict
from faust.types import TP

from streams.fenced_store import FencedStore
from streams.fencing import EPOCH_HEADER
from streams.kafka.producer import BatchProducer, Delivery, Headers

Write = tuple[bytes, bytes | None]  # (key, value); None deletes the key


class PartitionStateStore:
    """A faust table's RocksDB databases and changelog, partition by partition."""

    def __init__(self, table: Any, producer: BatchProducer) -> None:
        self._table = table
        self._producer = producer
        self.changelog = table.changelog_topic.get_topic_name()
        self._checked: FencedStore | None = None

    @property
    def _store(self) -> FencedStore:
        """The table's store, checked once (it is read for every user loaded)."""
        if self._checked is None:
            store = self._table.data
            if not isinstance(store, FencedStore):
                raise RuntimeError(
                    f"the worker needs the RocksDB store (TASKSTREAM_STORE=rocksdb://), "
                    f"not {store!r}"
                )
            self._checked = store
        return self._checked

    def get(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = self._store._db_for_partition(partition).get(key)
        return value

    def items_from(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of the partition whose key starts with `prefix`."""
        for key, value in self._store._db_for_partition(partition).items(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield key, value

    def write(self, partition: int, writes: Sequence[Write]) -> None:
        """Send every write's changelog record, then apply them locally in one
        RocksDB write batch. Delivery is awaited by the caller
        (`BatchProducer.wait`), then reported back with `acknowledge`."""
        store = self._store
        headers: Headers = [(EPOCH_HEADER, b"%d" % store.epoch_for(partition))]
        changelog = self.changelog
        self._producer.send_all(
            ((changelog, key, value, partition) for key, value in writes), headers
        )
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in writes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        store._db_for_partition(partition).write(batch)

    def acknowledge(self, delivered: Iterable[Delivery]) -> None:
        """The changelog offsets our writes landed at (in delivery order)."""
        by_partition: defaultdict[int, list[int]] = defaultdict(list)
        changelog = self.changelog
        for topic, partition, offset in delivered:
            if topic == changelog:
                by_partition[partition].append(offset)
        store = self._store
        for partition, offsets in by_partition.items():
            store.acknowledge(TP(changelog, partition), offsets)


R = TypeVar("R")


async def step_each(
    partitions: Iterable[int],
    step: Callable[[int], Awaitable[R]],
    forget: Callable[[int], None],
) -> list[tuple[int, R]]:
    """Each partition's step (writes sent, RocksDB written) in partition
    order; a partition whose step fails is forgotten (its cache is rebuilt
    from the table, and its unacknowledged batches written again, on next
    use) and the error raised."""
    done: list[tuple[int, R]] = []
    for partition in sorted(partitions):
        try:
            done.append((partition, await step(partition)))
        except Exception:
            forget(partition)
            raise
    return done


async def deliver(
    producer: BatchProducer,
    store: PartitionStateStore,
    forget: Callable[[int], None],
    partitions: Iterable[int],
) -> None:
    """One delivery wait for everything sent, then the changelog offsets
    acknowledged. When the wait fails, every partition with a batch in it is
    forgotten and the error raised. Callers record input positions only
    after this returns."""
    try:
        delivered = await producer.wait()
    except Exception:
        for partition in partitions:
            forget(partition)
        raise
    store.acknowledge(delivered)
