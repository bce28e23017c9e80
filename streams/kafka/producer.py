"""The hot path's producer: librdkafka (confluent-kafka) for outputs and
changelog records, one delivery wait per batch.

aiokafka's producer is pure Python: ~30 µs of the event loop per message
in our profiles, and a batch sends one changelog record per changed key
plus its outputs. librdkafka builds, compresses and sends the records on
its own threads; the event loop only hands each record over (~2 µs).

Delivery reports are collected, not acted on, in librdkafka's callback
(which runs in whatever thread polls): `wait` flushes in a worker thread
and hands the reports of that batch back to the event loop, where the
caller looks at the offsets (the changelog's acknowledgements, for the
zombie fence) and fails the batch if anything was not delivered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, Producer

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]
Record = tuple[str, bytes | None, bytes | None, int | None]  # topic, key, value, partition
WAIT_WARNING_SECONDS = 10.0


class Delivered(NamedTuple):
    """Where one record landed, for the topics the caller asked to track.
    The delivery callback makes a plain tuple of the same three fields
    (`Delivery`): one comes per changelog record, under the GIL, and the
    named tuple's constructor is a Python-level call (1.3 % of the worker's
    GIL samples on the peer log, `bench profile --peer --gil`, 2026-12-05). Keeping
    librdkafka's message objects instead would hold a copy of every value,
    in the collector's sight, until the batch settles."""

    topic: str
    partition: int
    offset: int


Delivery = tuple[str, int, int]  # (topic, partition, offset): a Delivered, or made as one


# librdkafka's RD_KAFKA_PARTITION_UA (confluent-kafka's default partition,
# not exported): its partitioner picks the partition by key.
_BY_KEY = -1


class Addressed(Protocol):
    """A record to produce that names its topic by role (`send_outputs`)."""

    @property
    def role(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes: ...
    @property
    def partition(self) -> int | None: ...


class DeliveryFailed(Exception):
    """A record could not be delivered within librdkafka's delivery timeout."""


def producer_config(
    client: Mapping[str, Any], max_message_bytes: int, compression: str = "lz4"
) -> dict[str, Any]:
    """Our producer settings over the client settings (bootstrap, security)."""
    return {
        **client,
        # Every record on disk at every in-sync replica before it counts,
        # and no reordering or duplicates from librdkafka's own retries.
        "acks": "all",
        "enable.idempotence": True,
        # Keyed outputs land where Kafka's Java clients and aiokafka put them
        # (librdkafka's default is CRC32): readers find a user's events by it.
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "compression.type": compression,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "message.max.bytes": max_message_bytes + 1024,
        # Retry until the brokers take it, however long that is (0: no
        # timeout): a batch's inputs are committed only after its records are
        # delivered, so a cluster short of in-sync replicas (min.insync.replicas)
        # holds the worker, which says why (`wait`), instead of failing it.
        "message.timeout.ms": 0,
        # compression: faust's recovery and the allocator read these topics
        # with aiokafka, which decompresses lz4, snappy and zstd with cramjam
        # (pinned in pyproject.toml for that reason).
    }


class BatchProducer:
    """confluent-kafka Producers; `send` then `await wait()` once per batch.

    Two clients: one for the tracked topics (the changelog), whose every
    delivery is reported (its offsets feed the zombie fence), and one for
    the rest (outputs), configured to report failures only
    (`delivery.report.only.error`): a success report costs a Python call
    and a message object on librdkafka's polling thread, under the GIL,
    for every output. A failure is reported by both, and fails the batch."""

    def __init__(self, config: Mapping[str, Any], tracked_topics: frozenset[str]) -> None:
        self._config = {**config, "on_delivery": self._on_delivery, "error_cb": self._on_error}
        self._quiet_config = {**self._config, "delivery.report.only.error": True}
        self._tracked = tracked_topics
        self._reports: list[Delivery] = []
        self._errors: list[str] = []
        self._making = threading.Lock()  # held while a client is made
        self._client: Producer | None = None  # the tracked topics
        self._quiet: Producer | None = None  # every other topic
        self.last_client_error = ""  # librdkafka's latest (it retries by itself)

    @property
    def _producer(self) -> Producer:
        """Made at the warm-up or the first send, so importing the worker
        connects nowhere. Under a lock: the warm-up makes it in a thread,
        and two clients would split the records between them."""
        if self._client is None:
            with self._making:
                if self._client is None:
                    self._client = Producer(self._config)
        return self._client

    @property
    def _quiet_producer(self) -> Producer:
        if self._quiet is None:
            with self._making:
                if self._quiet is None:
                    self._quiet = Producer(self._quiet_config)
        return self._quiet

    def warm(self, topics: Iterable[str], timeout: float = 10.0) -> list[str]:
        """Make both clients now and read the metadata of the topics they
        will write, so the first batch's delivery does not wait for the
        connections, the idempotent producer ids and the metadata (0.5-1 s
        on a local broker, with the event loop blocked on that batch's
        settle). Blocking: run it in a thread. Returns the topics whose
        metadata could not be read (librdkafka keeps trying by itself; a
        send then waits as it would have anyway)."""
        missing: list[str] = []
        for topic in topics:
            client = self._producer if topic in self._tracked else self._quiet_producer
            try:
                client.list_topics(topic, timeout=timeout)
            except Exception as exc:  # KafkaException: unreachable, or not authorised
                log.debug("warm-up: no metadata for %s yet: %s", topic, exc)
                missing.append(topic)
        return missing

    def _clients(self) -> list[Producer]:
        return [client for client in (self._client, self._quiet) if client is not None]

    def _queued(self) -> int:
        """Records not yet delivered (each client's pending events served
        first: librdkafka counts them in its queue length)."""
        queued = 0
        for client in self._clients():
            client.poll(0)
            queued += len(client)
        return queued

    def _flush(self, timeout: float) -> None:
        for client in self._clients():
            if len(client) > 0:
                client.flush(timeout)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        # librdkafka's thread of the moment: only append (atomic under the GIL).
        # Success is reported by the tracked topics' client only (the other
        # reports failures only), so a success is always a tracked record.
        if err is None:
            self._reports.append((msg.topic(), msg.partition(), msg.offset()))
        else:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def _on_error(self, err: KafkaError) -> None:
        self.last_client_error = err.str()

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.send_all(((topic, key, value, partition),), headers)

    def send_all(self, records: Iterable[Record], headers: Headers | None = None) -> None:
        """Hand each (topic, key, value, partition) to librdkafka, with the
        same headers (if any). One call per batch, not per record, and every
        argument by position: confluent-kafka parses keywords slowly (1.31
        against 0.97 µs a record with headers, 0.69 without; positions after
        the partition: callback and on_delivery (None: the client's
        `on_delivery`), timestamp (0: now), headers)."""
        tracked = self._tracked
        loud, quiet = self._producer, self._quiet_producer
        for topic, key, value, partition in records:
            producer = loud if topic in tracked else quiet
            produce = producer.produce
            while True:
                try:
                    if headers is not None:
                        if partition is None:
                            produce(topic, value, key, _BY_KEY, None, None, 0, headers)
                        else:
                            produce(topic, value, key, partition, None, None, 0, headers)
                    elif partition is None:
                        produce(topic, value, key)
                    else:
                        produce(topic, value, key, partition)
                    break
                except BufferError:  # the local queue is full: let librdkafka send
                    producer.poll(0.05)

    def send_outputs(self, outputs: Iterable[Addressed], topic_of: Mapping[str, str]) -> None:
        """`send_all` for records that name their topic by role (the
        processor's outputs: `role`, `key`, `value`, `partition`), without a
        tuple per record on the way."""
        tracked = self._tracked
        loud, quiet = self._producer, self._quiet_producer
        for output in outputs:
            topic = topic_of[output.role]
            producer = loud if topic in tracked else quiet
            key, value, partition = output.key, output.value, output.partition
            try:
                if partition is None:
                    producer.produce(topic, value, key)
                else:
                    producer.produce(topic, value, key, partition)
            except BufferError:  # the local queue is full: let librdkafka send,
                producer.poll(0.05)  # then `send_all` tries until it has room
                self.send_all(((topic, key, value, partition),))

    async def wait(self) -> list[Delivery]:
        """Until every record sent so far is delivered; the tracked topics'
        delivery reports since the last wait. Raises DeliveryFailed."""
        began = time.monotonic()
        said = began
        while self._queued() > 0:
            await asyncio.to_thread(self._flush, 1.0)
            now = time.monotonic()
            if now - said >= WAIT_WARNING_SECONDS and self._queued() > 0:
                said = now
                log.warning(
                    "%d record(s) not acknowledged by the brokers after %.0f s (acks=all: "
                    "min.insync.replicas in-sync replicas must have each); the batch's inputs "
                    "stay uncommitted until they are; last client error: %s",
                    self._queued(),
                    now - began,
                    self.last_client_error or "none",
                )
        for client in self._clients():
            client.poll(0)
        reports, self._reports = self._reports, []
        errors, self._errors = self._errors, []
        if errors:
            raise DeliveryFailed(f"{len(errors)} record(s) not delivered: {'; '.join(errors[:5])}")
        return reports

    def close(self, timeout: float = 10.0) -> None:
        left = sum(client.flush(timeout) for client in self._clients())
        if left:
            log.warning("%d record(s) still undelivered at close", left)
