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

A pool's master is one key in one partition, so its messages are applied
one at a time, in log order, by whichever worker owns that partition. After
a crash the redo record is re-applied and its outputs re-sent when the
partition is next used (same ids, same bytes; buckets de-duplicate).

The writes used to go through faust's table and topics (aiokafka's
producer, one send per key): not idempotent, so a retry after a lost
acknowledgement could write a grant twice in the log, and a broker outage
of a 3-broker cluster had no place to say why the allocator waited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
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
from streams.kafka.transport import Consumer
from streams.monitor.metrics import WorkerMetrics
from streams.partition_state import Output, Redo, decode_redo, encode_redo, last_batch_again
from streams.processor import InMessage
from streams.worker.state_store import PartitionStateStore, step_then_deliver

log = logging.getLogger("taskstream.allocator")

_OUTPUT_ROLES = (BUDGET_GRANTS, BUDGET_REQUESTS, DEAD_LETTERS)

# A master that is asked about a pool missing from this worker's catalog
# waits this long for the catalog feed before its partition is fetched again.
CATALOG_WAIT_SECONDS = 1.0


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

    @property
    def consumer(self) -> Consumer:
        consumer: Consumer = self.app.consumer
        return consumer

    async def on_events(self, events: Sequence[Any]) -> None:
        """One batch of the agent's stream (faust events): each partition's
        step, one delivery wait for all, then positions and rewinds."""
        by_partition: dict[int, list[InMessage]] = {}
        for event in events:
            m = event.message
            if self._from_an_earlier_assignment(m.generation_id):
                # Fetched again once the rebalance is over (Consumer.refetch_skipped).
                self.consumer.note_skipped(m.tp, m.offset)
                continue
            by_partition.setdefault(m.partition, []).append(
                InMessage(BUDGET_REQUESTS, self.topic, m.partition, m.offset, m.key, m.value)
            )

        async def step(partition: int) -> AllocationResult:
            return self._step(partition, by_partition[partition])

        done = await step_then_deliver(by_partition, step, self.producer, self.store, self.forget)
        for partition, result in done:
            await self._after_delivery(partition, result)

    def _from_an_earlier_assignment(self, generation: int | None) -> bool:
        if self.app.rebalancing or self.app.in_recovery:
            return True
        return generation is not None and generation != self.app.consumer_generation_id

    def _step(self, partition: int, messages: Sequence[InMessage]) -> AllocationResult:
        if partition not in self.caches:
            self._finish_last_batch(partition)
            self.caches[partition] = AllocatorCache()
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
        if result.rewind is not None:
            if result.waiting_for_pool is not None:
                await asyncio.sleep(CATALOG_WAIT_SECONDS)
            await self.consumer.rewind(tp, result.rewind)

    def _finish_last_batch(self, partition: int) -> None:
        """After an assignment or a failed batch: write the last batch again,
        changelog records included (`last_batch_again`: the local copy may
        hold it while the changelog does not), and send its outputs again
        (they may not have arrived)."""
        key = allocator_redo_key(partition)
        raw = self.store.get(partition, key)
        if raw is None:
            return
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
