"""confluent-kafka helpers for the command-line tools: admin, produce, tail."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
)

from streams.config import (
    INPUT_TOPIC_BY_TYPE,
    MAX_MESSAGE_BYTES,
    TABLES,
    TEMPLATES,
    TICKS,
    TOPICS,
    Settings,
    replication_for,
    topic_config,
)

log = logging.getLogger(__name__)

# librdkafka's own log lines go through Python logging (one format, one place
# to filter) instead of raw stderr.
RDKAFKA_LOGGER = logging.getLogger("rdkafka")


class _TransientNotices(logging.Filter):
    """librdkafka warns about states it retries through by itself (a fresh
    broker's coordinators still loading): debug detail, not a user's problem."""

    RETRIED = ("Coordinator load in progress", "Not coordinator")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        return not any(text in message for text in self.RETRIED)


RDKAFKA_LOGGER.addFilter(_TransientNotices())


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The confluent-kafka config of every client: brokers, TLS/SASL, our logger."""
    return {
        "bootstrap.servers": settings.bootstrap,
        "logger": RDKAFKA_LOGGER,
        **settings.kafka_security.confluent_config(),
        **extra,
    }


def broker_answers(settings: Settings, timeout: float = 5.0) -> bool:
    """True when the brokers answer a metadata request over the configured security."""
    from taskstream.broker import metadata_ok

    return metadata_ok(
        settings.bootstrap, timeout, config=settings.kafka_security.confluent_config()
    )


def connection_problem(settings: Settings, timeout: float = 5.0) -> str | None:
    """None when the brokers answer a metadata request; else what went wrong and
    what to do, e.g. a refused login (the password is never in it)."""
    refused = _security_error(settings, timeout)
    if refused is None:
        return None
    security = settings.kafka_security
    if refused:
        return (
            f"Kafka at {settings.bootstrap} refused the connection "
            f"({security.describe()}): {refused}"
        )
    where = f"{settings.bootstrap} over {security.protocol}"
    return (
        f"no Kafka broker answers at {where}: start the local one with "
        "`make kafka-up` (or `make run`), or set KAFKA_BOOTSTRAP to your cluster"
    )


def _security_error(settings: Settings, timeout: float) -> str | None:
    """None when a metadata request succeeds; else librdkafka's reason for a refused
    login or TLS handshake (as soon as it happens), or "" when nothing answered."""
    errors: list[KafkaError] = []
    probe = AdminClient(
        client_config(
            settings,
            **{
                "socket.connection.setup.timeout.ms": int(timeout * 1000),
                "error_cb": errors.append,
                "log_level": 0,  # the reason is reported once, by the caller
            },
        )
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe.list_topics(timeout=0.5).brokers:
                return None
        except KafkaException:
            pass
        probe.poll(0)  # serves error_cb
        refused = [error for error in errors if error.code() in _SECURITY_ERRORS]
        if refused:
            return str(refused[-1].str())
        if time.monotonic() >= deadline:
            return ""


# librdkafka's codes for a failed login or TLS handshake.
_SECURITY_ERRORS = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.ILLEGAL_SASL_STATE,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
    }
)


def admin(settings: Settings) -> AdminClient:
    return AdminClient(client_config(settings))


def changelog_topic(settings: Settings, table: str) -> str:
    """The changelog topic faust keeps a table in."""
    return f"{settings.app_id}-{table}-changelog"


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create our topics that do not exist yet; return the names created."""
    client = admin(settings)
    cluster = client.list_topics(timeout=timeout)
    existing = set(cluster.topics)
    try:
        replication = replication_for(
            settings, len(cluster.brokers), _replication_of(cluster.topics, settings)
        )
    except ValueError as exc:
        raise TopicMismatch([str(exc)]) from None
    replicated = replication.topic_config()
    wanted = [
        NewTopic(
            settings.topic(name),
            num_partitions=settings.partitions,
            replication_factor=replication.factor,
            config={**topic_config(name), **replicated},
        )
        for name in TOPICS
    ]
    # Templates and pools: one partition (every worker reads all of it),
    # compacted (the latest version of each template is what counts).
    wanted.append(
        NewTopic(
            settings.topic(TEMPLATES),
            num_partitions=1,
            replication_factor=replication.factor,
            config={"cleanup.policy": "compact", **replicated},
        )
    )
    # faust's leader election topic, which faust would create with one
    # replica: on a cluster, a broker's death must not take it offline.
    wanted.append(
        NewTopic(
            f"{settings.app_id}-__assignor-__leader",
            num_partitions=1,
            replication_factor=replication.factor,
            config=replicated,
        )
    )
    # The tables' changelogs, as faust would create them (compacted, one
    # partition per input partition). Created here, before any worker joins:
    # faust creates them while its consumer joins the group, and a member
    # whose assignment was computed before a changelog existed never gets
    # that table's partitions (seen: a worker stuck with its agents idle).
    wanted.extend(
        NewTopic(
            changelog_topic(settings, table),
            num_partitions=settings.partitions,
            replication_factor=replication.factor,
            config={
                "cleanup.policy": "compact",
                "max.message.bytes": str(MAX_MESSAGE_BYTES),
                **replicated,
            },
        )
        for table in TABLES
    )
    missing = [topic for topic in wanted if topic.topic not in existing]
    created = []
    if missing:
        for name, future in client.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    problems = topic_problems(client, wanted, timeout)
    if problems:
        raise TopicMismatch(problems)
    return created


def _replication_of(topics: dict[str, Any], settings: Settings) -> int | None:
    """The most common replication factor of this deployment's topics that
    exist (None: none yet). The metadata lists every replica assigned, down
    or not, so a broker that is away does not change it."""
    names = {settings.topic(name) for name in (*TOPICS, TEMPLATES)} | {
        changelog_topic(settings, table) for table in TABLES
    }
    ours = [
        len(partition.replicas)
        for name in names
        if name in topics and topics[name].error is None
        for partition in topics[name].partitions.values()
    ]
    return max(set(ours), key=ours.count) if ours else None


class TopicMismatch(ValueError):
    """Topics that exist with other partitions or settings than the deployment's."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            "topics disagree with this deployment (Kafka Streams refuses to start "
            "on mis-partitioned co-partitioned topics, and so does taskstream): "
            + "; ".join(problems)
            + ". Recreate them (or alter their settings), or set TASKSTREAM_PARTITIONS "
            "(and TASKSTREAM_REPLICATION, TASKSTREAM_MIN_INSYNC_REPLICAS) to what they have"
        )


# Settings whose value must be at least the one asked for; the others must be equal.
_AT_LEAST = frozenset({"max.message.bytes"})


def _described(
    client: AdminClient, resource: ConfigResource, timeout: float, deadline: float
) -> dict[str, Any]:
    """A topic's configuration. On a cluster the broker asked may not know a
    topic the controller has just created (UNKNOWN_TOPIC_OR_PART, seen by
    `python -m chaos --brokers 3` right after `topics create`): ask again
    until `deadline`."""
    while True:
        try:
            entries: dict[str, Any] = client.describe_configs([resource])[resource].result(
                timeout=timeout
            )
            return entries
        except KafkaException as exc:
            if (
                exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART
                or time.monotonic() >= deadline
            ):
                raise
        time.sleep(0.2)


def topic_problems(client: AdminClient, wanted: list[NewTopic], timeout: float) -> list[str]:
    """How the existing topics differ from `wanted`: partition counts, and the
    settings taskstream relies on (compaction, retention, append times)."""
    names = {topic.topic for topic in wanted}
    deadline = time.monotonic() + timeout
    while True:  # topics just created take a moment to show in the metadata
        metadata = client.list_topics(timeout=timeout).topics
        ready = all(n in metadata and metadata[n].error is None for n in names)
        if ready or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    problems: list[str] = []
    resources = []
    for topic in wanted:
        found = metadata.get(topic.topic)
        if found is None or found.error is not None:
            problems.append(f"{topic.topic} does not exist")
            continue
        if len(found.partitions) != topic.num_partitions:
            problems.append(
                f"{topic.topic} has {len(found.partitions)} partition(s), not "
                f"{topic.num_partitions}"
            )
        replicas = {len(p.replicas) for p in found.partitions.values()}
        if replicas and replicas != {topic.replication_factor}:
            problems.append(
                f"{topic.topic} has {'/'.join(map(str, sorted(replicas)))} replica(s), "
                f"not {topic.replication_factor}"
            )
        if topic.config:
            resources.append((topic, ConfigResource(ConfigResource.Type.TOPIC, topic.topic)))
    if resources:
        for topic, resource in resources:
            entries = _described(client, resource, timeout, deadline)
            for name, value in sorted((topic.config or {}).items()):
                entry = entries.get(name)
                actual = None if entry is None else entry.value
                ok = (
                    actual is not None and int(actual) >= int(value)
                    if name in _AT_LEAST
                    else actual == value
                )
                if not ok:
                    problems.append(f"{topic.topic} has {name}={actual}, not {value}")
    return problems


class UnroutableEvent(ValueError):
    """An input line that cannot be sent: no JSON object, unknown type, no user."""


@dataclass(frozen=True)
class Routed:
    topic: str
    key: bytes | None
    value: bytes
    broadcast: bool = False  # a tick: one copy to every partition of the topic


def route(settings: Settings, line: bytes) -> Routed:
    """Pick the topic and key of one input line (keyed by user id)."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise UnroutableEvent(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UnroutableEvent("not a JSON object")
    kind = doc.get("type")
    # A list or object as "type" is unhashable: check before the lookup.
    short = INPUT_TOPIC_BY_TYPE.get(kind) if isinstance(kind, str) else None
    if short is None:
        raise UnroutableEvent(f"unknown event type {doc.get('type')!r}")
    if short == TICKS:
        return Routed(settings.topic(short), None, line, broadcast=True)
    user = doc.get("user_id")
    key = user.encode() if isinstance(user, str) else None
    return Routed(settings.topic(short), key, line)


def partition_count(client: Producer, topic: str, timeout: float = 10.0) -> int:
    """How many partitions `topic` has (it must exist)."""
    metadata = client.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise UnroutableEvent(f"topic {topic} does not exist: run `taskstream topics create`")
    return len(metadata.partitions)


def producer(settings: Settings, **extra: Any) -> Producer:
    config: dict[str, Any] = {
        **client_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        # Same partitioner as the Java client and aiokafka: keyed messages
        # land where the worker's tables expect them.
        "partitioner": "murmur2_random",
    }
    config.update(extra)
    return Producer(config)


class UnknownTopic(LookupError):
    """A topic name the brokers do not have."""


def short_names() -> tuple[str, ...]:
    """Every topic of ours by its short name (what `tail` and `topics list` take)."""
    return (*TOPICS, TEMPLATES)


def resolve_topic(settings: Settings, name: str) -> str:
    """A short name (`rewards`) or a full one (`taskstream.rewards`), as the full name."""
    if name in short_names():
        return settings.topic(name)
    return name


@dataclass(frozen=True)
class TopicSize:
    partitions: int
    messages: int  # high watermark minus low, summed over the partitions (compaction aside)


def topic_size(consumer: Consumer, topic: str, timeout: float = 10.0) -> TopicSize:
    """How many partitions and messages `topic` has; raises UnknownTopic."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise UnknownTopic(topic)
    messages = 0
    for partition in metadata.partitions:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout, cached=False
        )
        messages += max(0, high - low)
    return TopicSize(len(metadata.partitions), messages)


def reader(settings: Settings) -> Consumer:
    """A consumer that never joins a group nor commits: it is given its
    partitions (`assign`), so two readers of a topic each read all of it."""
    return Consumer(
        client_config(
            settings,
            **{
                # librdkafka wants a group id even for assigned partitions;
                # a fresh one per reader, and it never commits.
                "group.id": f"taskstream-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            },
        )
    )


@dataclass
class Tail:
    """`taskstream tail`: what is in a topic, read without a consumer group."""

    topic: str
    size: TopicSize
    consumer: Consumer
    printed: int = 0

    def messages(
        self, *, from_beginning: bool, idle_timeout: float | None
    ) -> Iterator[tuple[int, int, bytes | None, bytes | None]]:
        """Yield (partition, offset, key, value) as messages arrive; stops
        after `idle_timeout` seconds without one (None: never)."""
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        self.consumer.assign(
            [TopicPartition(self.topic, p, start) for p in range(self.size.partitions)]
        )
        idle = 0.0
        while idle_timeout is None or idle < idle_timeout:
            message = self.consumer.poll(0.5)
            if message is None:
                idle += 0.5
                continue
            error = message.error()
            if error is not None:
                raise KafkaException(error)
            idle = 0.0
            self.printed += 1
            yield message.partition() or 0, message.offset() or 0, message.key(), message.value()


def open_tail(settings: Settings, topic: str) -> Tail:
    """A Tail of `topic` (full name); raises UnknownTopic."""
    consumer = reader(settings)
    try:
        return Tail(topic, topic_size(consumer, topic), consumer)
    except BaseException:
        consumer.close()
        raise


def group_offsets(settings: Settings, short_topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (the workers' group's committed offset, log end offset) of
    one topic; -1001 (librdkafka's "invalid") where nothing is committed.

    Read by a consumer of the group that never joins it
    (AdminClient.list_consumer_group_offsets crashed librdkafka while a fresh
    broker's group coordinator was loading).
    """
    topic = settings.topic(short_topic)
    partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
    probe = Consumer(
        client_config(settings, **{"group.id": settings.app_id, "enable.auto.commit": False})
    )
    try:
        committed = {tp.partition: tp.offset for tp in probe.committed(partitions, timeout=10)}
        return {
            tp.partition: (committed[tp.partition], probe.get_watermark_offsets(tp, timeout=10)[1])
            for tp in partitions
        }
    finally:
        probe.close()
