"""Templates and pools published at run time, held by every worker.

The compacted `templates` topic (one partition) holds one record per
template (`template:<id>`) and per pool (`pool:<id>`); a null value removes
it. Every worker reads the whole topic with its own consumer (no group: each
needs all of it, like a Kafka Streams GlobalKTable), keeps reading, and
swaps in a new `Catalog` whenever a record arrives. A published set that does
not validate (say a template naming a pool nobody published yet) is logged
and the last good catalog stays in use.

Faust's own GlobalTable is not used: its recovery has open bugs around
global changelogs, and a catalog is a small, read-mostly value that one
thread keeps fresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson

from app.catalog import Catalog, CatalogError, parse_catalog

log = logging.getLogger("taskstream.catalog")

TEMPLATE_PREFIX = b"template:"
POOL_PREFIX = b"pool:"


def catalog_key(kind: str, item_id: str) -> bytes:
    prefix = TEMPLATE_PREFIX if kind == "template" else POOL_PREFIX
    return prefix + item_id.encode()


class CatalogDocs:
    """The latest JSON document per template and pool, as read from the topic."""

    def __init__(self) -> None:
        self.templates: dict[str, Any] = {}
        self.pools: dict[str, Any] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> str:
        """Fold one record in; say what it was (for the log)."""
        if key is None:
            raise ValueError("templates record without a key")
        if key.startswith(TEMPLATE_PREFIX):
            target, name = self.templates, key[len(TEMPLATE_PREFIX) :].decode()
        elif key.startswith(POOL_PREFIX):
            target, name = self.pools, key[len(POOL_PREFIX) :].decode()
        else:
            raise ValueError(f"templates record with unknown key {key!r}")
        if value is None:
            target.pop(name, None)
            return f"removed {key.decode()}"
        target[name] = orjson.loads(value)
        return f"set {key.decode()}"

    def catalog(self) -> Catalog:
        return parse_catalog(
            [self.templates[k] for k in sorted(self.templates)],
            [self.pools[k] for k in sorted(self.pools)],
        )


class CatalogFeed:
    """A thread that follows the templates topic and publishes `catalog`."""

    def __init__(self, consumer_config: Mapping[str, Any], topic: str) -> None:
        self._config = dict(consumer_config)
        self._topic = topic
        self._docs = CatalogDocs()
        self.catalog: Catalog = parse_catalog([], [])
        self.version = 0  # catalogs built so far
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catalog-feed", daemon=True)

    def start(self) -> None:
        """Start following the topic; a second call does nothing (the
        worker's command starts the feed before faust does, so the catalog
        is read while faust starts, and faust's start task calls it again)."""
        if self._thread.ident is None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def wait_ready(self, timeout: float) -> bool:
        """True once the topic was read to its end at least once."""
        return self._ready.wait(timeout)

    def _run(self) -> None:
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        consumer = Consumer(
            {
                **self._config,
                "group.id": "taskstream-catalog-feed",  # required; nothing is committed
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            partitions = self._partitions(consumer)
            consumer.assign([TopicPartition(self._topic, p, 0) for p in partitions])
            at_end: set[int] = set()
            dirty = False
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition() or 0)
                        if dirty or not self._ready.is_set():
                            self._rebuild()
                            dirty = False
                        if at_end >= set(partitions):
                            self._ready.set()
                        continue
                    log.warning("templates topic: %s", error)
                    continue
                try:
                    what = self._docs.apply(message.key(), message.value())
                    log.info("templates topic @%d: %s", message.offset(), what)
                    dirty = True
                except (ValueError, orjson.JSONDecodeError) as exc:
                    log.error("templates topic @%d: ignored: %s", message.offset(), exc)
        finally:
            consumer.close()

    def _partitions(self, consumer: Any) -> list[int]:
        while not self._stop.is_set():
            metadata = consumer.list_topics(self._topic, timeout=10)
            topic = metadata.topics.get(self._topic)
            if topic is not None and topic.error is None and topic.partitions:
                return sorted(topic.partitions)
            log.warning("waiting for topic %s to exist", self._topic)
            time.sleep(1)
        return []

    def _rebuild(self) -> None:
        try:
            catalog = self._docs.catalog()
        except CatalogError as exc:
            log.error("published templates do not validate; keeping the previous ones: %s", exc)
            return
        self.catalog = catalog
        self.version += 1
        log.info(
            "catalog v%d: %d template(s), %d pool(s)",
            self.version,
            len(catalog.templates),
            len(catalog.pools),
        )
