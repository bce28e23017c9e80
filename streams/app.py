"""The Faust application: one module-level app, its topics and its tables.

Topics carry raw bytes: the agents decode them themselves, so a malformed
message becomes a dead letter with its reason instead of a crashed worker.
"""

from __future__ import annotations

import faust

from streams import faust_fixes
from streams.config import DEAD_LETTERS, ORDER_COUNTS, ORDERS, Settings

faust_fixes.install()
settings = Settings.from_env()

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{host}" for host in settings.bootstrap.split(",")],
    store=settings.store,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    datadir=str(settings.data_dir),
    web_port=settings.web_port,
    # Every input is keyed by user id; read a fresh group from the beginning.
    consumer_auto_offset_reset="earliest",
    # The changelog and outputs must be on disk at the broker before an
    # input offset is committed (faust flushes the producer before commit).
    producer_acks=-1,
    broker_commit_interval=settings.commit_interval,
    # RocksDB tables read and write the current event's partition.
    table_standby_replicas=0,
    # A crashed worker's partitions move after this long; the broker's
    # group.min.session.timeout.ms (6 s by default) is the floor.
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=max(1, settings.session_timeout // 5),
    autodiscover=False,
)


def _topic(name: str, *, compacted: bool = False) -> faust.TopicT:
    return app.topic(
        settings.topic(name),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        compacting=compacted,
    )


orders_topic = _topic(ORDERS)
order_counts_topic = _topic(ORDER_COUNTS)
dead_letters_topic = _topic(DEAD_LETTERS)

# user_id -> encoded UserCount. RocksDB through the rocksdict driver, one
# database per partition, backed by the changelog topic
# "<app id>-order-counts-changelog".
order_counts = app.Table(
    "order-counts",
    key_type=str,
    value_type=bytes,  # bytes -> faust's "raw" serializer; we encode with orjson
    partitions=settings.partitions,
    options={"driver": "rocksdict"},
)
