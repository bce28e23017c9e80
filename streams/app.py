"""The Faust application: one module-level app, its topics and its table.

Topics carry raw bytes: the processor decodes them itself, so a malformed
message becomes a dead letter with its reason instead of a crashed worker.
"""

from __future__ import annotations

import functools

import faust

from streams import changelog_reader, fenced_store, rocksdb_memory
from streams.catalog_feed import CatalogFeed
from streams.config import (
    ALLOCATOR_TABLE,
    BUDGET_GRANTS,
    BUDGET_REQUESTS,
    CLAIMS,
    DEAD_LETTERS,
    MAX_MESSAGE_BYTES,
    ORDERS,
    PROCESSOR_INPUTS,
    REFUNDS,
    REWARDS,
    STATE_TABLE,
    TASK_EVENTS,
    TEMPLATES,
    TICKS,
    Settings,
    topic_config,
)
from streams.kafka import transport

settings = Settings.from_env()


class WorkerApp(transport.BatchApp):
    """The worker's faust app. Its tables' stores read two things from it:
    the RocksDB memory budget every table opens in (streams.rocksdb_memory)
    and how to read a range of a changelog back (streams.fenced_store's
    repair of a zombie's writes), both built from the settings below."""

    rocksdb_budget: rocksdb_memory.MemoryBudget | None = None
    changelog_range_reader: fenced_store.RangeReader | None = None


# Our consumer (batch delivery, faust's repairs: streams.kafka.transport) and
# table manager (streams.kafka.recovery), for this app only.
scheme = transport.register()
app = WorkerApp(
    settings.app_id,
    broker=[f"{scheme}://{host}" for host in settings.bootstrap.split(",")],
    TableManager="streams.kafka.recovery:TableManager",
    store=settings.store,
    # Changelog writes carry the writer's epoch (streams.fencing).
    Table=fenced_store.FencedTable,
    topic_partitions=settings.partitions,
    # Only for a topic faust would create itself; `taskstream worker` creates
    # every one first (taskstream.kafka_io.ensure_topics), replicated for the
    # cluster at hand.
    topic_replication_factor=settings.replication or 1,
    datadir=str(settings.data_dir),
    web_port=settings.web_port,  # /metrics, /health, /ready
    web_host=settings.web_host,
    web_bind=settings.web_host,
    # Advertised to the group: the URL of this worker's render API process
    # (streams.api.routing), where the others forward a user's requests.
    canonical_url=f"http://{settings.web_host}:{settings.api_port}",
    # Every input is keyed by user id; read a fresh group from the beginning.
    consumer_auto_offset_reset="earliest",
    # The changelog and outputs must be on disk at the broker before an
    # input offset is committed (faust flushes the producer before commit).
    producer_acks=-1,
    producer_max_request_size=MAX_MESSAGE_BYTES,
    broker_commit_interval=settings.commit_interval,
    # One fetch is one batch of the worker (streams.kafka.transport): bounded,
    # so its redo record, its memory and the event loop's time on it are too
    # (unbounded, one fetch took a whole 200,000-message backlog: RSS 760 MiB).
    broker_max_poll_records=settings.batch_max,
    # RocksDB tables read and write the current event's partition.
    table_standby_replicas=0,
    # A crashed worker's partitions move after this long; the broker's
    # group.min.session.timeout.ms (6 s by default) is the floor.
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=max(1, settings.session_timeout // 5),
    autodiscover=False,
    # TLS / SASL (streams.kafka_security): faust passes them to every aiokafka client.
    **settings.kafka_security.faust_settings(),
)


def _topic(name: str) -> faust.TopicT:
    return app.topic(
        settings.topic(name),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        config=topic_config(name),  # if faust creates it: as `topics create` would
    )


# Inputs: one channel over the four co-partitioned topics and the buckets'
# budget messages, so partition p of each is assigned to the same worker and
# one agent merges them in event time (and pays from partition p's buckets).
inputs_channel = app.topic(
    *(settings.topic(name) for name in PROCESSOR_INPUTS),
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    config=topic_config(ORDERS),  # the inputs' settings (append times), if faust creates them
)
ROLE_OF_TOPIC = {settings.topic(name): name for name in PROCESSOR_INPUTS}
input_topics = {name: _topic(name) for name in (CLAIMS, ORDERS, REFUNDS, TICKS)}
# The allocator's input: refill requests, returns and pool commands.
budget_requests = _topic(BUDGET_REQUESTS)
# Subscribed as faust's agents subscribe their topics; the records reach the
# worker in whole fetches (streams.kafka.transport), not through an agent.
app.topics.add(inputs_channel)
# The group commits the processors' own positions for these (streams.kafka.positions).
app.own_positions = frozenset(settings.topic(name) for name in (*PROCESSOR_INPUTS, BUDGET_REQUESTS))
output_topics = {
    name: _topic(name)
    for name in (TASK_EVENTS, REWARDS, DEAD_LETTERS, BUDGET_REQUESTS, BUDGET_GRANTS)
}

# RocksDB per partition database, all of them in one memory budget
# (streams.rocksdb_memory: shared block cache, memtables charged to it).
# faust's defaults gave each database its own 2 GiB block cache and three
# 64 MiB memtables: with 16 databases (8 partitions x 2 tables) a worker's
# RSS climbed ~1.3 MiB/s for 8 minutes of live load (to 612 MiB), then
# dropped 190 MiB at once as the memtables flushed, with throughput dipping
# ~20 % and the lag at 30 s while it did (BENCHMARKS "soak"). Small
# memtables flush sooner and in smaller steps.
app.rocksdb_budget = rocksdb_memory.MemoryBudget(settings.rocksdb_memory_mb * rocksdb_memory.MIB)
fenced_store.install()  # rocksdb:// -> the budget's store, fencing zombie writes
app.changelog_range_reader = functools.partial(
    changelog_reader.read_range,
    {"bootstrap.servers": settings.bootstrap, **settings.kafka_security.confluent_config()},
)
ROCKSDB_OPTIONS = {
    "driver": "rocksdict",
    "write_buffer_size": 8 * 1024**2,
    "max_write_buffer_number": 3,
}

# Users, partition records and redo records (see streams.partition_state).
# RocksDB through the rocksdict driver, one database per partition, backed
# by the changelog topic "<app id>-state-changelog".
state = app.Table(
    STATE_TABLE,
    key_type=bytes,  # bytes -> faust's "raw" serializer, both ways
    value_type=bytes,
    partitions=settings.partitions,
    options=dict(ROCKSDB_OPTIONS),
    extra_topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)},
)

# The pools' masters (streams.allocation), on the budget-requests partitions.
allocator_table = app.Table(
    ALLOCATOR_TABLE,
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    options=dict(ROCKSDB_OPTIONS),
    extra_topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)},
)

catalog_feed = CatalogFeed(
    {"bootstrap.servers": settings.bootstrap, **settings.kafka_security.confluent_config()},
    settings.topic(TEMPLATES),
)
