"""The master allocator agent: budget requests in, grants out, a batch at a time.

The thin shell around `streams.allocation.process_requests`, built like the
processor agent: per partition of the budget-requests topic, load the
record, decide, write the redo record then the masters and the record, send
the grants/refusals/recalls and wait for the broker, then let faust ack.
A pool's master is one key in one partition, so its messages are applied
one at a time, in log order, by whichever worker owns that partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, cast

import faust
from faust.types import TP

from app.bucketing import Master
from streams import metrics, table_commit
from streams.agents import wait_for_catalog
from streams.allocation import (
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
from streams.app import (
    allocator_table,
    app,
    budget_requests,
    catalog_feed,
    output_topics,
    settings,
)
from streams.kafka.transport import Consumer
from streams.processor import BUDGET_REQUESTS, InMessage

log = logging.getLogger("taskstream.allocator")

_caches: dict[int, AllocatorCache] = {}


@app.agent(budget_requests, concurrency=1)
async def allocate_budgets(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
    """Every refill request, return and pool command, per pool in log order."""
    await wait_for_catalog()
    batches = cast(Any, stream).take_events(settings.batch_max, within=settings.batch_window)
    async for events in batches:
        await _run_batch(events)
        yield None


async def _run_batch(events: Sequence[faust.EventT[bytes]]) -> None:
    by_partition: dict[int, list[faust.EventT[bytes]]] = {}
    consumer = cast(Consumer, app.consumer)
    for event in events:
        if from_an_earlier_assignment(event):
            # Fetched again once the rebalance is over (Consumer.refetch_skipped).
            consumer.note_skipped(event.message.tp, event.message.offset)
            continue
        by_partition.setdefault(event.message.partition, []).append(event)
    await table_commit.run_by_partition(
        by_partition, _run_partition, lambda partition: _caches.pop(partition, None)
    )


def from_an_earlier_assignment(event: faust.EventT[bytes]) -> bool:
    if app.rebalancing or app.in_recovery:
        return True
    generation = event.message.generation_id
    return generation is not None and generation != app.consumer_generation_id


def _message(topic: str, partition: int, event: faust.EventT[bytes]) -> InMessage:
    m = event.message
    return InMessage(BUDGET_REQUESTS, topic, partition, m.offset, m.key, m.value)


def _read_record(partition: int) -> AllocatorRecord:
    raw = allocator_table.get(allocator_key(partition))
    return AllocatorRecord(partition) if raw is None else decode_allocator(raw)


def _load_master(pool_id: str) -> Master | None:
    raw = allocator_table.get(master_key(pool_id))
    return None if raw is None else decode_master(raw)


async def _run_partition(
    partition: int, events: Sequence[faust.EventT[bytes]]
) -> list[Awaitable[Any]]:
    deliveries: list[Awaitable[Any]] = []
    cache = _caches.get(partition)
    if cache is None:
        seq = _read_record(partition).seq
        deliveries += await table_commit.finish_cut_batch(
            allocator_table,
            output_topics,
            allocator_redo_key(partition),
            seq,
            f"allocator partition {partition}",
        )
        cache = _caches[partition] = AllocatorCache()
    started = time.perf_counter()
    record = _read_record(partition)
    topic = settings.topic(BUDGET_REQUESTS)
    messages = [
        InMessage(
            BUDGET_REQUESTS, topic, partition, e.message.offset, e.message.key, e.message.value
        )
        for e in events
    ]
    result = process_requests(
        record,
        messages,
        pools=catalog_feed.catalog.pools,
        partitions=settings.partitions,
        load_master=_load_master,
        cache=cache,
    )
    stats = result.stats
    if stats.accepted or result.outputs:
        deliveries += await table_commit.commit_batch(
            allocator_table,
            output_topics,
            allocator_redo_key(partition),
            result.record.seq,
            allocation_writes(result),
            result.outputs,
        )
    if result.record.next_offset is not None:
        consumer = cast(Consumer, app.consumer)
        consumer.commit_positions.record(TP(topic, partition), result.record.next_offset)
    if result.rewind is not None:
        if result.waiting_for_pool is not None:
            await asyncio.sleep(1.0)  # let the catalog feed catch up before fetching again
        await cast(Consumer, app.consumer).rewind(TP(topic, partition), result.rewind)
    for note in result.notes:
        log.warning("allocator partition %d: %s", partition, note)
    metrics.observe_allocation(partition, result, time.perf_counter() - started)
    return deliveries


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _forget_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    topic = settings.topic(BUDGET_REQUESTS)
    for tp in revoked:
        if tp.topic == topic:
            _caches.pop(tp.partition, None)
