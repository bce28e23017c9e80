"""The master allocator agent: budget requests in, grants out, a batch at a time.

A thin agent around `streams.worker.allocator.Allocator` (what a batch
does). It has its own librdkafka producer: `BatchProducer.wait` waits for
every record sent so far, and the processor's worker must not wait for the
allocator's records (nor take their delivery reports), nor the reverse.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from faust.types import TP

from streams.agents import metrics, wait_for_catalog
from streams.app import allocator_table, app, budget_requests, catalog_feed, settings
from streams.config import MAX_MESSAGE_BYTES
from streams.kafka.producer import BatchProducer, producer_config
from streams.worker.allocator import Allocator
from streams.worker.state_store import PartitionStateStore

_client = {"bootstrap.servers": settings.bootstrap, **settings.kafka_security.confluent_config()}
producer = BatchProducer(
    producer_config(_client, MAX_MESSAGE_BYTES, settings.compression),
    tracked_topics=frozenset({allocator_table.changelog_topic.get_topic_name()}),
)
store = PartitionStateStore(allocator_table, producer)
allocator = Allocator(
    app,
    settings,
    store,
    producer,
    catalog=lambda: catalog_feed.catalog,
    metrics=metrics,
)


@app.task  # type: ignore[untyped-decorator]
async def warm_producer() -> None:
    """As the worker's (streams.agents.warm_producer): connected before the first grant."""
    await asyncio.to_thread(producer.warm, [store.changelog, *allocator.output_topics.values()])


@app.agent(budget_requests, concurrency=1)
async def allocate_budgets(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
    """Every refill request, return and pool command, per pool in log order."""
    await wait_for_catalog()
    batches = cast(Any, stream).take_events(settings.batch_max, within=settings.batch_window)
    async for events in batches:
        await allocator.on_events(events)
        yield None


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _forget_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    allocator.on_revoked(revoked)


@app.on_before_shutdown.connect  # type: ignore[arg-type]
def _flush_producer(sender: Any, **kwargs: Any) -> None:
    producer.close()
