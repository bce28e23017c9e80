"""The worker's wiring: the `Worker` that takes each fetch of the inputs, the
pools' `Allocator` that takes each fetch of the budget requests, and the
timers around them.

One worker (concurrency 1: fetches and idle releases run one at a time under
its lock) reads the four co-partitioned input topics and the buckets'
budget messages (budget-grants, docs/bucketing.md); the allocator reads the
budget-requests topic, where the pools' masters live. faust's consumer
hands both whole fetches (streams.kafka.transport, batch delivery);
streams.worker.worker and streams.worker.allocator say what a batch does.
Each has its own librdkafka producer: `BatchProducer.wait` waits for every
record sent so far, and neither must wait for the other's records (nor
take their delivery reports).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from faust.types import TP

from streams.app import (
    ROLE_OF_TOPIC,
    allocator_table,
    app,
    budget_requests,
    catalog_feed,
    settings,
    state,
)
from streams.config import MAX_MESSAGE_BYTES
from streams.kafka.producer import BatchProducer, producer_config
from streams.kafka.transport import BatchSink, Consumer, SinkGroup
from streams.monitor.metrics import WorkerMetrics, install_pages
from streams.worker.allocator import Allocator
from streams.worker.state_store import PartitionStateStore
from streams.worker.worker import Worker

log = logging.getLogger("taskstream.worker")

_client = {"bootstrap.servers": settings.bootstrap, **settings.kafka_security.confluent_config()}


def _producer_for(table: Any) -> BatchProducer:
    return BatchProducer(
        producer_config(_client, MAX_MESSAGE_BYTES, settings.compression),
        tracked_topics=frozenset({table.changelog_topic.get_topic_name()}),
    )


# The worker's Prometheus registry and what its /metrics page reads.
metrics = WorkerMetrics(
    app, settings, (state, allocator_table), catalog_ready=lambda: catalog_feed.wait_ready(0)
)
install_pages(app, metrics)  # /metrics, /health and /ready on the web port
producer = _producer_for(state)
store = PartitionStateStore(state, producer)
worker = Worker(
    app,
    settings,
    store,
    producer,
    catalog=lambda: catalog_feed.catalog,
    role_of_topic=ROLE_OF_TOPIC,
    metrics=metrics,
)
allocator_producer = _producer_for(allocator_table)
allocator_store = PartitionStateStore(allocator_table, allocator_producer)
allocator = Allocator(
    app,
    settings,
    allocator_store,
    allocator_producer,
    catalog=lambda: catalog_feed.catalog,
    metrics=metrics,
)
# Subscribed as faust's agents subscribe their topics (the inputs are, in
# streams.app); the records reach the allocator in whole fetches.
app.topics.add(budget_requests)


async def wait_for_catalog() -> None:
    started = time.monotonic()
    while not await asyncio.to_thread(catalog_feed.wait_ready, 1.0):
        log.info("waiting for the templates topic (%.0f s)", time.monotonic() - started)


class _CatalogFirst:
    """A batch sink that takes fetches once the templates are read: a fetch
    before that waits (and so does the next fetch)."""

    def __init__(self, sink: BatchSink) -> None:
        self.sink = sink
        self.topics = sink.topics
        self._ready = False

    async def on_records(self, records: Any, generation: int) -> None:
        if not self._ready:
            await wait_for_catalog()
            self._ready = True
        await self.sink.on_records(records, generation)

    async def drain(self) -> None:
        await self.sink.drain()


# The allocator first: it only queues the fetch for its own loop.
app.batch_sink = _CatalogFirst(SinkGroup(allocator, worker))


@app.task  # type: ignore[untyped-decorator]
async def allocate_budgets() -> None:
    """The pools' masters: each fetch of budget requests in turn (`Allocator.run`)."""
    await allocator.run()


@app.task  # type: ignore[untyped-decorator]
async def start_catalog_feed() -> None:
    catalog_feed.start()


@app.task  # type: ignore[untyped-decorator]
async def warm_producer() -> None:
    """Connect the producer while the group forms: the first batch's
    settle then waits for its own records, not for the connections
    (measured: ~0.95 s of a cold producer's first delivery, with the event
    loop blocked on it)."""
    await asyncio.gather(
        asyncio.to_thread(producer.warm, [store.changelog, *worker.output_topics.values()]),
        asyncio.to_thread(
            allocator_producer.warm,
            [allocator_store.changelog, *allocator.output_topics.values()],
        ),
    )


# How often the worker looks for input messages lost between fetch and processor.
LOST_FETCH_LOOK_SECONDS = 2.0


@app.timer(0.2)  # type: ignore[untyped-decorator]
async def beat() -> None:
    worker.check_for_freeze()


@app.task  # type: ignore[untyped-decorator]
async def release_idle_waits() -> None:
    """Idle waits end on time (their latency is the events' latency), and
    batches no later fetch settled are settled (`Worker.settle`). It sleeps
    until the earliest of those is due or a batch sets a new one
    (`Worker.next_look`; looking every 10 ms cost an idle worker ~0.03 CPU
    s a second). A loop, not a faust timer: a run longer than the period is normal under
    load, and a 10 ms timer logged "Timer ... is overlapping" for every one
    (dozens of lines a second in the fault suite's logs). It ends when the
    app starts to stop, as faust's timers do: faust cancels tasks only after
    it has closed the tables and left the group."""
    while not app.should_stop:
        try:
            await worker.timer_round()
        except Exception:  # a failed step or settle: its partitions reload on next use
            log.exception("the timer loop's round failed; it goes on")


@app.timer(LOST_FETCH_LOOK_SECONDS)  # type: ignore[untyped-decorator]
async def refetch_lost_inputs() -> None:
    """Waiting input messages that never reached the processor are fetched again."""
    await worker.refetch_lost_inputs()


@app.timer(settings.commit_interval)  # type: ignore[untyped-decorator]
async def commit_processor_positions() -> None:
    """The group's committed offsets follow the table (streams.kafka.positions)."""
    consumer = cast(Consumer, app.consumer)
    await consumer.commit_moved_positions()


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _forget_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    worker.on_revoked(revoked)
    allocator.on_revoked(revoked)
    metrics.forget(revoked)


@app.on_before_shutdown.connect  # type: ignore[arg-type]
def _flush_producer(sender: Any, **kwargs: Any) -> None:
    close_all(
        ("the allocator", allocator.close),
        ("the worker's producer", producer.close),
        ("the allocator's producer", allocator_producer.close),
    )


def close_all(*parts: tuple[str, Callable[[], object]]) -> None:
    """Close each part in turn; one that raises is logged and the next ones
    are closed all the same (a producer left unclosed drops the records it
    still buffers, which the next owner would then have to redo)."""
    for name, close in parts:
        try:
            close()
        except Exception:
            log.exception("closing %s failed; closing the rest", name)
