"""The worker's RocksDB store and table class, fencing zombie writes.

`FencedTable` writes every changelog message with its epoch header;
`FencedStore` (faust's RocksDB store in the process's memory budget,
streams.rocksdb_memory) applies the rules of streams.fencing: recovery skips
a zombie's late writes, own acknowledgements are checked for gaps, and a
distrusted database is emptied and rebuilt from the changelog the next time
its partition is assigned here. `install()` makes `rocksdb://` this store.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, cast

import faust
import faust.stores
import rocksdict
from faust.types import TP, CollectionT, EventT
from faust.types.tuples import FutureMessage

from streams.changelog_reader import Written
from streams.fencing import AckTracker, epoch_header, epoch_of, keeps, own_epoch
from streams.rocksdb_memory import BoundedStore

log = logging.getLogger("taskstream.worker")

# Beside faust's own b"__faust\0offset__" in every partition's database.
EPOCH_KEY = b"__taskstream\0epoch__"  # the highest epoch applied here
DISTRUSTED_KEY = b"__taskstream\0distrusted__"  # rebuild at the next assignment


# Reads (topic, partition, start, end) of a changelog: set by streams.app
# with the worker's client settings (streams.changelog_reader.read_range).
RangeReader = Callable[[str, int, int, int], list[Written]]


class FencedStore(BoundedStore):
    """faust's RocksDB store with the zombie fencing of streams.fencing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # How to read a range of the changelog back, for `_repair` (the app's,
        # streams/app.py: streams.changelog_reader); None: a gap found is
        # only distrusted, not repaired.
        self.range_reader: RangeReader | None = getattr(self.app, "changelog_range_reader", None)
        self._highest: dict[int, int] = {}  # partition -> highest epoch applied
        self._own: dict[int, int] = {}  # partition -> epoch of own writes (this assignment)
        self._acks: dict[int, AckTracker] = {}
        self._distrusted: set[int] = set()
        # Since this process started (metrics: taskstream_fencing_*_total).
        self.skipped_writes = 0
        self.gaps = 0
        self.rebuilds = 0
        self.rewritten_keys = 0
        self._repairs: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- epochs

    def highest_epoch(self, partition: int) -> int:
        known = self._highest.get(partition)
        if known is None:
            raw = self._db_for_partition(partition).get(EPOCH_KEY)
            known = self._highest[partition] = int(raw) if raw is not None else 0
        return known

    def epoch_for(self, partition: int) -> int:
        """The epoch of this worker's writes to `partition` until the next rebalance."""
        epoch = self._own.get(partition)
        if epoch is None:
            highest = self.highest_epoch(partition)
            epoch = self._own[partition] = own_epoch(self.app.consumer_generation_id, highest)
            if epoch > highest:
                self._db_for_partition(partition).put(EPOCH_KEY, str(epoch).encode())
                self._highest[partition] = epoch
        return epoch

    # -------------------------------------------------------------- recovery

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """faust's, with the epoch rule; the highest epoch is written in the
        same batch as the data."""
        batches: defaultdict[int, rocksdict.WriteBatch] = defaultdict(
            lambda: rocksdict.WriteBatch(raw_mode=True)
        )
        last_offsets: dict[TP, int] = {}
        skipped: defaultdict[int, int] = defaultdict(int)
        for event in batch:
            msg = event.message
            tp, partition = msg.tp, msg.partition
            last_offsets[tp] = max(msg.offset, last_offsets.get(tp, -1))
            highest = self.highest_epoch(partition)
            epoch = epoch_of(msg.headers)
            if not keeps(epoch, highest):
                skipped[partition] += 1
                continue
            if epoch is not None and epoch > highest:
                self._highest[partition] = epoch
                batches[partition].put(EPOCH_KEY, str(epoch).encode())
            key = cast(bytes, msg.key)  # raw bytes: both tables have the "raw" serializer
            if msg.value is None:
                batches[partition].delete(key)
            else:
                batches[partition].put(key, msg.value)
        for partition, writes in batches.items():
            self._db_for_partition(partition).write(writes)
        for tp, offset in last_offsets.items():
            super().set_persisted_offset(tp, offset)
            self._acks.setdefault(tp.partition, AckTracker()).caught_up_to(offset)
        for partition, count in skipped.items():
            self.skipped_writes += count
            log.warning(
                "%s partition %d: skipped %d changelog write(s) of an earlier owner "
                "that arrived after a newer owner's (a frozen worker's late sends)",
                self.table_name,
                partition,
                count,
            )

    # ----------------------------------------------------------- own writes

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """An own changelog write was acknowledged at `offset` (faust's
        callback): advance the recorded offset only while nobody else wrote."""
        self.acknowledge(tp, (offset,))

    def acknowledge(self, tp: TP, offsets: Iterable[int]) -> None:
        """Own changelog writes were acknowledged at `offsets` (in the order
        they were sent): advance the recorded offset, once, to the last of
        them that follows the others without a gap."""
        partition = tp.partition
        if partition in self._distrusted or partition not in self._dbs:
            # Distrusted; or revoked meanwhile (faust drops the handle): a late
            # acknowledgement must not open the database again.
            return
        tracker = self._acks.setdefault(partition, AckTracker())
        offsets = list(offsets)
        if tracker.acknowledged_run(offsets):  # the usual case, without a step per record
            super().set_persisted_offset(tp, offsets[-1])
            return
        recorded = self.persisted_offset(tp) if tracker.next_offset is None else None
        advanced_to: int | None = None
        for offset in offsets:
            if not tracker.acknowledged(offset, recorded):
                break
            if tracker.next_offset == offset + 1:  # advanced (not a write read back)
                advanced_to = offset
        if advanced_to is not None:
            super().set_persisted_offset(tp, advanced_to)
        if not tracker.gaps:
            return
        expected, got = tracker.gaps.pop()
        self.gaps += 1
        self._distrust(partition)
        self._schedule_repair(tp, expected, got)
        log.warning(
            "%s partition %d: another worker wrote to the changelog between two of this "
            "worker's writes (expected offset %d, got %d): one of them was frozen past "
            "the session timeout; this copy is rebuilt from the changelog when the "
            "partition is next assigned here",
            self.table_name,
            partition,
            expected,
            got,
        )

    def _schedule_repair(self, tp: TP, start: int, end: int) -> None:
        if self.range_reader is None:
            return
        task = asyncio.get_running_loop().create_task(self._repair(tp, start, end))
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _repair(self, tp: TP, start: int, end: int) -> None:
        """Write this worker's current values of the keys another worker wrote
        between two of our writes, if that one was an earlier owner: the
        epoch rule skips its writes in a replay, but log compaction keeps only
        the last record of a key, so ours must be the last again."""
        reader = self.range_reader
        own = self._own.get(tp.partition)
        if reader is None or own is None:
            return
        try:
            written = await asyncio.to_thread(reader, tp.topic, tp.partition, start, end)
        except Exception as exc:  # the copy stays distrusted: rebuilt at its next assignment
            log.warning(
                "%s partition %d: could not read the writes between our own (%s); not rewritten",
                self.table_name,
                tp.partition,
                exc,
            )
            return
        newer = [w for w in written if w.epoch is not None and w.epoch > own]
        if newer or self._own.get(tp.partition) != own or not self._still_owns(tp):
            return  # this worker is the earlier owner, or the partition moved meanwhile
        db = self._dbs.get(tp.partition)
        if db is None:
            return
        keys = sorted({w.key for w in written})
        for key in keys:  # no await in between: nothing writes these keys meanwhile
            self.table.send_changelog(tp.partition, key, db.get(key))
        self.rewritten_keys += len(keys)
        log.warning(
            "%s partition %d: rewrote %d key(s) an earlier owner wrote late (offsets %d-%d), "
            "so that log compaction keeps this worker's values",
            self.table_name,
            tp.partition,
            len(keys),
            start,
            end - 1,
        )

    def _still_owns(self, tp: TP) -> bool:
        return not self.app.rebalancing and tp in self.app.assignor.assigned_actives()

    def _distrust(self, partition: int) -> None:
        self._distrusted.add(partition)
        db = self._dbs.get(partition)
        if db is not None:  # else the marker is kept in memory until the next assignment
            db.put(DISTRUSTED_KEY, b"1")

    # ------------------------------------------------------------- rebalance

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        # New generation: own epochs are computed again, acknowledgements
        # are compared with what recovery reads next.
        self._own.clear()
        self._acks.clear()
        mine = self.table.changelog_topic.topics
        for tp in assigned:
            if tp.topic in mine:
                self._rebuild_if_distrusted(tp)

    def _rebuild_if_distrusted(self, tp: TP) -> None:
        partition = tp.partition
        db = self._dbs.get(partition)  # faust has opened every assigned partition's
        if db is None or (partition not in self._distrusted and db.get(DISTRUSTED_KEY) is None):
            return
        # Every key our tables write sorts below 0xff ("u:", "p:", "r:",
        # "m:", "__faust...", "__taskstream..."): one range tombstone, not a
        # delete per key on the event loop.
        db.delete_range(b"", b"\xff")
        # faust's recovery keeps, for a partition this worker keeps across
        # the rebalance (or never learnt it lost, being frozen), the offset
        # it read up to last time and would go on from there: forget it, so
        # the emptied copy is read from the changelog's start.
        recovery = cast(Any, self.app.tables).recovery  # on TableManager, not TableManagerT
        recovery.active_offsets.pop(tp, None)
        recovery.standby_offsets.pop(tp, None)
        self.rebuilds += 1
        self._distrusted.discard(partition)
        self._highest.pop(partition, None)
        log.warning(
            "%s partition %d: local copy distrusted; rebuilding it from the whole changelog",
            self.table_name,
            partition,
        )

    def revoke_partitions(self, table: CollectionT, tps: set[TP]) -> None:
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self._highest.pop(tp.partition, None)
                self._own.pop(tp.partition, None)
                self._acks.pop(tp.partition, None)
        super().revoke_partitions(table, tps)


class FencedTable(faust.Table[Any, Any]):
    """faust's Table whose changelog messages carry the writer's epoch."""

    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> FutureMessage:
        store = self.data
        if isinstance(store, FencedStore) and partition is not None:
            epoch = store.epoch_for(partition)
        else:  # the memory store (tests): the generation is the epoch
            epoch = self.app.consumer_generation_id
        return self.changelog_topic.send_soon(
            key=key,
            value=value,
            partition=partition,
            headers=epoch_header(epoch),
            key_serializer=key_serializer or self.key_serializer,
            value_serializer=value_serializer or self.value_serializer,
            callback=self._on_changelog_sent,
            eager_partitioning=True,
        )


def install() -> None:
    """Make `rocksdb://` mean `FencedStore` in this process."""
    faust.stores.STORES.aliases["rocksdb"] = f"{__name__}:FencedStore"
