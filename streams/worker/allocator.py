"""The master allocator's shell: budget requests in, grants out, a batch at a time.

Built like the processor's `Worker`: for each partition of a batch of the
budget-requests topic the pure `streams.allocation.process_requests`
decides, and this shell

1. writes the redo record (the whole batch as one changelog record), the
   changed masters and the allocator record: changelog records through
   librdkafka (idempotent, acks=all), one RocksDB write batch
   (`PartitionStateStore`);
2. sends the grants, refusals, recalls and dead letters through the same
   producer;
3. waits once, for the whole batch, until the brokers have every record;
4. only then records the allocator's positions for the group's commits and
   the changelog offsets as the local copy's recovery point;
5. rewinds the consumer where the allocator found skipped offsets.

A partition loaded again (after an assignment or a failed batch) first has
its last batch written, sent and delivered again (`_load`): it has one redo
record, which its next step replaces. A batch or a delivery that fails is
fetched again RETRY_SECONDS later from the stored offset, whether or not a
later message shows the gap.

The records come as the worker's do: faust's consumer hands each fetch of
the budget-requests partitions to `on_records` (streams.kafka.transport,
batch delivery), not through a faust agent's stream. It queues them for the
allocator's own loop (`run`, an app task), which takes them in turn, its
delivery waits included, so the fetch loop the worker shares never waits
for the allocator's brokers (unless QUEUED_FETCHES fetches wait). The agent
this replaced asked its stream for a batch every 20 ms (`take_events`):
~12 ms of CPU a second on an idle worker, a third of what it spent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from faust.types import TP

from app.bucketing import Master
from app.catalog import Catalog
from streams.allocation import (
    AllocationResult,
    AllocatorCache,
    AllocatorRecord,
    allocation_writes,
    allocator_key,
    allocator_redo_key,
    decode_allocator,
    decode_master,
    master_key,
    process_requests,
)
from streams.config import BUDGET_GRANTS, BUDGET_REQUESTS, DEAD_LETTERS, Settings
from streams.kafka.producer import BatchProducer
from streams.kafka.transport import Consumer, fetched_before_a_rebalance, skip_fetch
from streams.monitor.metrics import WorkerMetrics
from streams.partition_state import Output, Redo, decode_redo, encode_redo, last_batch_again
from streams.processor import InMessage
from streams.worker.state_store import PartitionStateStore, deliver

log = logging.getLogger("taskstream.allocator")

_OUTPUT_ROLES = (BUDGET_GRANTS, BUDGET_REQUESTS, DEAD_LETTERS)

# A master that is asked about a pool missing from this worker's catalog
# waits this long for the catalog feed before its partition is fetched again;
# so does a partition whose batch failed.
RETRY_SECONDS = 1.0
# Fetches of budget requests that may wait for the allocator's loop before
# the fetch loop (the worker's too) waits for it. The allocator's batches are
# small and few (refills, returns); this bounds memory if its producer stalls.
QUEUED_FETCHES = 16


class Allocator:
    """The pools' masters on this worker's budget-requests partitions."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        store: PartitionStateStore,
        producer: BatchProducer,
        catalog: Callable[[], Catalog],
        metrics: WorkerMetrics,
    ) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        self.producer = producer
        self.metrics = metrics
        self._catalog = catalog
        self.topic = settings.topic(BUDGET_REQUESTS)
        self.output_topics = {role: settings.topic(role) for role in _OUTPUT_ROLES}
        # Per partition, rebuilt on first use after an assignment.
        self.caches: dict[int, AllocatorCache] = {}
        # Fetches waiting for `run` (on_records puts them; the fetch loop
        # waits only when it is full).
        self._queue: asyncio.Queue[tuple[Mapping[TP, Sequence[Any]], int]] = asyncio.Queue(
            QUEUED_FETCHES
        )
        self._rewinds: set[asyncio.Task[None]] = set()  # `_rewind_later`s to come
        self._closed = False  # set at shutdown: nothing more is processed or rewound

    @property
    def consumer(self) -> Consumer:
        consumer: Consumer = self.app.consumer
        return consumer

    @property
    def topics(self) -> frozenset[str]:
        """The topics this batch sink takes (streams.kafka.transport.BatchSink)."""
        return frozenset({self.topic})

    async def on_records(self, records: Mapping[TP, Sequence[Any]], generation: int) -> None:
        """One fetch of the budget-requests partitions (aiokafka's records
        per partition, fetched in `generation`), queued for `run`. The fetch
        loop, which is the worker's too, waits here only while QUEUED_FETCHES
        fetches wait for the allocator (back pressure)."""
        await self._queue.put((records, generation))

    async def run(self) -> None:
        """The allocator's own loop (an app task): each queued fetch in turn,
        its delivery wait included, so that wait never holds the fetch loop.
        A failure is logged and the loop goes on: the partitions concerned
        are loaded again (their last batch written and sent again) and their
        messages fetched again."""
        while True:
            records, generation = await self._queue.get()
            try:
                await self._fetched(records, generation)
            except Exception:
                log.exception("allocator: a fetch's batch failed")
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Return once every queued fetch is done (before a revoke)."""
        await self._queue.join()

    def close(self) -> None:
        """At shutdown: no rewind fires after the consumer is gone, and no
        queued fetch is processed (faust stops the consumer and the tables
        before it closes the producers, and cancels this loop only after)."""
        self._closed = True
        for task in list(self._rewinds):
            task.cancel()

    def _stopping(self) -> bool:
        return self._closed or bool(self.app.should_stop)

    async def _fetched(self, records: Mapping[TP, Sequence[Any]], generation: int) -> None:
        if self._stopping():
            return  # whoever holds these partitions next fetches from the committed offsets
        if self._skipped_as_stale(records, generation):
            return
        by_partition = {
            tp.partition: [
                InMessage(BUDGET_REQUESTS, self.topic, tp.partition, r.offset, r.key, r.value)
                for r in tp_records
            ]
            for tp, tp_records in records.items()
            if tp_records
        }
        if not await self._load(by_partition, generation):
            return
        # The reload's delivery wait may have spanned a rebalance or the stop.
        if self._stopping() or self._skipped_as_stale(records, generation):
            return
        done = self._steps(by_partition, generation)
        if not done:
            return
        await self._deliver(done, by_partition, generation)
        for partition, result in done:
            try:
                await self._after_delivery(partition, result)
            except Exception:
                # A rewind that failed: the partition loads again, and its
                # next message shows the gap again (or nothing was lost).
                self.forget(partition)
                log.exception("allocator partition %d: recording its position failed", partition)

    def _skipped_as_stale(self, records: Mapping[TP, Sequence[Any]], generation: int) -> bool:
        """Fetched before a rebalance (or one under way): fetched again after it."""
        if not fetched_before_a_rebalance(self.app, generation):
            return False
        skip_fetch(self.consumer, records)
        return True

    async def _load(self, by_partition: dict[int, list[InMessage]], generation: int) -> bool:
        """Partitions not loaded since an assignment or a failure: their last
        batch written and sent again (`_finish_last_batch`) and delivered
        before any new step, since a step replaces the partition's one redo
        record: two failures in a row would otherwise lose the first batch
        while a later commit passed it. A partition whose reload fails is
        dropped from this fetch and fetched again later. False: nothing left."""
        fresh = sorted(p for p in by_partition if p not in self.caches)
        sent = []
        for partition in fresh:
            try:
                if self._finish_last_batch(partition):
                    sent.append(partition)
            except Exception:
                log.exception(
                    "allocator partition %d: writing its last batch again failed", partition
                )
                self._retry_later(partition, by_partition.pop(partition), generation)
                continue
            self.caches[partition] = AllocatorCache()
        if sent:
            try:
                await deliver(self.producer, self.store, self.forget, sent)
            except Exception:
                log.exception(
                    "allocator: the last batches of partitions %s were not delivered", sent
                )
                for partition in sent:
                    self._retry_later(partition, by_partition.pop(partition), generation)
        return bool(by_partition)

    async def _deliver(
        self,
        done: Sequence[tuple[int, AllocationResult]],
        by_partition: Mapping[int, Sequence[InMessage]],
        generation: int,
    ) -> None:
        """One delivery wait for the fetch's steps. When it fails the
        partitions are forgotten (`deliver`) and their messages fetched again
        a while later, even if no later message comes to show the gap (a
        bucket waiting for a refill would wait for good)."""
        try:
            await deliver(self.producer, self.store, self.forget, [p for p, _ in done])
        except Exception:
            for partition, _ in done:
                self._retry_later(partition, by_partition[partition], generation)
            raise

    def _retry_later(self, partition: int, messages: Sequence[InMessage], generation: int) -> None:
        self.forget(partition)
        self._rewind_later(TP(self.topic, partition), messages[0].offset, generation)

    def _steps(
        self, by_partition: Mapping[int, Sequence[InMessage]], generation: int
    ) -> list[tuple[int, AllocationResult]]:
        """Each partition's step, in partition order. One that fails is
        forgotten (its last batch is written and sent again at its next use)
        and fetched again a while later from where its record stands, and
        the others go on."""
        done = []
        for partition in sorted(by_partition):
            messages = by_partition[partition]
            try:
                done.append((partition, self._step(partition, messages)))
            except Exception:
                log.exception("allocator partition %d: the batch failed", partition)
                self._retry_later(partition, messages, generation)
        return done

    def _step(self, partition: int, messages: Sequence[InMessage]) -> AllocationResult:
        """One partition's batch, its cache loaded (`_load`)."""
        started = time.perf_counter()
        result = process_requests(
            self._read_record(partition),
            messages,
            pools=self._catalog().pools,
            partitions=self.settings.partitions,
            load_master=lambda pool_id: self._load_master(partition, pool_id),
            cache=self.caches[partition],
        )
        if result.stats.accepted or result.outputs:
            writes = allocation_writes(result)
            redo = encode_redo(Redo(result.record.seq, tuple(writes), result.outputs))
            self.store.write(partition, [(allocator_redo_key(partition), redo), *writes])
            self._send(result.outputs)
        for note in result.notes:
            log.warning("allocator partition %d: %s", partition, note)
        self.metrics.observe_allocation(partition, result, time.perf_counter() - started)
        return result

    async def _after_delivery(self, partition: int, result: AllocationResult) -> None:
        tp = TP(self.topic, partition)
        if result.record.next_offset is not None:
            self.consumer.commit_positions.record(tp, result.record.next_offset)
        if result.rewind is None:
            return
        if result.waiting_for_pool is None:
            await self.consumer.rewind(tp, result.rewind)
            return
        # A pool missing from the catalog: fetch again after a while (the
        # later fetches of budget requests go on meanwhile). Until the rewind
        # the allocator drops this partition's later messages: it awaits the
        # rewound offset (`AllocatorCache.rewinding`).
        self._rewind_later(tp, result.rewind, self.app.consumer_generation_id)

    def _rewind_later(self, tp: TP, offset: int, generation: int) -> None:
        """Fetch `tp` again from `offset` in RETRY_SECONDS (from its record's
        next offset, if that is earlier), unless a rebalance came between."""
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._rewind_after(tp, offset, generation))
        self._rewinds.add(task)
        task.add_done_callback(self._rewinds.discard)

    async def _rewind_after(self, tp: TP, offset: int, generation: int) -> None:
        await asyncio.sleep(RETRY_SECONDS)
        try:
            if self._stopping() or fetched_before_a_rebalance(self.app, generation):
                return  # whoever holds it next starts from the committed offset
            if tp not in self.consumer.assignment():
                return  # moved meanwhile: the same
            stored = self._read_record(tp.partition).next_offset
            await self.consumer.rewind(tp, offset if stored is None else min(offset, stored))
        except Exception:
            # Loaded again on its next message, which then shows the gap.
            self.forget(tp.partition)
            log.exception("allocator: fetching %s[%d] again failed", tp.topic, tp.partition)

    def _finish_last_batch(self, partition: int) -> bool:
        """After an assignment or a failed batch: write the last batch again,
        changelog records included (`last_batch_again`: the local copy may
        hold it while the changelog does not), and send its outputs again
        (they may not have arrived). False: there was none."""
        key = allocator_redo_key(partition)
        raw = self.store.get(partition, key)
        if raw is None:
            return False
        redo = decode_redo(raw)
        if redo.seq > self._read_record(partition).seq:
            log.warning(
                "allocator partition %d: batch %d was cut short by a crash; "
                "re-applying its %d write(s)",
                partition,
                redo.seq,
                len(redo.writes),
            )
        self.store.write(partition, last_batch_again(key, raw, redo))
        self._send(redo.outputs)
        return True

    def _send(self, outputs: Iterable[Output]) -> None:
        self.producer.send_outputs(outputs, self.output_topics)

    def _read_record(self, partition: int) -> AllocatorRecord:
        raw = self.store.get(partition, allocator_key(partition))
        return AllocatorRecord(partition) if raw is None else decode_allocator(raw)

    def _load_master(self, partition: int, pool_id: str) -> Master | None:
        raw = self.store.get(partition, master_key(pool_id))
        return None if raw is None else decode_master(raw)

    def forget(self, partition: int) -> None:
        self.caches.pop(partition, None)

    def on_revoked(self, revoked: Iterable[TP]) -> None:
        for tp in revoked:
            if tp.topic == self.topic:
                self.forget(tp.partition)
