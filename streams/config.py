"""Worker settings, read once from the environment (twelve-factor style)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.kafka_security import KafkaSecurity, read_secret

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to know about where it runs.

    KAFKA_BOOTSTRAP            brokers, host:port[,host:port] (default: the local
                               broker, 127.0.0.1:$KAFKA_PORT, KAFKA_PORT default 19092)
    TASKSTREAM_APP_ID          consumer group and table namespace (default taskstream)
    TASKSTREAM_TOPIC_PREFIX    prefix of every topic name (default taskstream.)
    TASKSTREAM_PARTITIONS      partitions of the input topics (default 8)
    TASKSTREAM_REPLICATION     replication factor of created topics (default auto:
                               min(3, brokers in the cluster))
    TASKSTREAM_MIN_INSYNC_REPLICAS  their min.insync.replicas (default auto: the
                               replication factor minus one, at least 1)
    TASKSTREAM_DATA_DIR        where RocksDB tables live (default .data/<app id>)
    TASKSTREAM_WEB_PORT        faust's web server port: /metrics, /health, /ready (default 6066)
    TASKSTREAM_WEB_HOST        address the web server binds and advertises to the
                               other workers for routing (default 127.0.0.1)
    TASKSTREAM_API_PORT        port of the render API process the worker starts beside
                               it; advertised to the other workers for routing
                               (default TASKSTREAM_WEB_PORT + 1; docs/api.md)
    TASKSTREAM_API_NICE        CPU niceness of that process, so event processing wins
                               the CPU under a request spike (default 10, 0-19)
    TASKSTREAM_API_SECRET      HMAC secret of the render API's user tokens (or
                               TASKSTREAM_API_SECRET_FILE: read from that file);
                               unset: no API process (`taskstream api` answers 503)
    TASKSTREAM_SERVICE_KEY     key of back-end callers, X-Service-Key header (or
                               TASKSTREAM_SERVICE_KEY_FILE); unset: no service access
    TASKSTREAM_API_RATE        render API requests/s this worker works on; the excess
                               gets a fallback answer (default 400; docs/api.md)
    TASKSTREAM_API_BURST       requests above the rate taken at once (default 100)
    TASKSTREAM_API_CONCURRENCY render API requests in flight at most (default 32)
    TASKSTREAM_API_CACHE       answers kept for fallbacks, per worker (default 10000)
    TASKSTREAM_STORE           table store URL (default rocksdb://; memory:// for tests)
    TASKSTREAM_ROCKSDB_MEMORY_MB memory all RocksDB databases of the process share:
                               block cache, memtables, index and filter blocks
                               (default 64, at least 8; streams.rocksdb_memory)
    TASKSTREAM_COMPRESSION     how the worker compresses what it produces (changelog
                               records and outputs): lz4 (default), zstd, snappy,
                               gzip or none; every Kafka client reads all of them
    TASKSTREAM_SESSION_TIMEOUT seconds before a silent worker's partitions move (default 30)
    TASKSTREAM_PROGRESS_SECONDS how often the worker logs its progress line (default 10)
    TASKSTREAM_COMMIT_INTERVAL seconds between offset commits (default 2.8, faust's)
    TASKSTREAM_BATCH_MAX       most input messages one batch takes (default 2000)
    TASKSTREAM_MAX_PENDING     events one partition may hold back for event-time
                               order before it releases them anyway (default 20000)
    TASKSTREAM_MAX_IDLE_MS     how long an event waits, from when the broker appended
                               it, for an input that is read to its end but behind it
                               in event time: for producers that do not keep a user's
                               events in order across topics, what one sent just before
                               may reach the broker a moment later (Kafka Streams'
                               max.task.idle.ms; default 0: pass an input once its high
                               watermark, read after the event arrived, says it is read
                               to its end; an input arriving later still is applied
                               late and recorded, docs/streams.md "Late inputs")

    Connecting to a secured cluster (docs/security.md; every client uses them):
    KAFKA_SECURITY_PROTOCOL    PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL
    KAFKA_SASL_MECHANISM       PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)
    KAFKA_SASL_USERNAME        the SASL user
    KAFKA_SASL_PASSWORD        its password (or KAFKA_SASL_PASSWORD_FILE: read from
                               that file); never logged
    KAFKA_SSL_CA_FILE          PEM CA bundle the brokers' certificates are checked
                               against (default: the system's CAs)
    KAFKA_SSL_CERT_FILE        client certificate (PEM) for brokers that ask for one,
    KAFKA_SSL_KEY_FILE         and its private key (PEM); KAFKA_SSL_KEY_PASSWORD
                               (or _FILE) if the key is encrypted
    KAFKA_SSL_CHECK_HOSTNAME   check the broker's host name in its certificate
                               (default true; false only for test setups)
    """

    bootstrap: str = DEFAULT_BOOTSTRAP
    app_id: str = "taskstream"
    topic_prefix: str = "taskstream."
    partitions: int = 8
    replication: int = 0  # 0: auto (replication_for)
    min_insync: int = 0  # 0: auto
    data_dir: Path = Path(".data/taskstream")
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    # Secrets: never in repr (settings may be logged).
    api_secret: str = field(default="", repr=False)
    service_key: str = field(default="", repr=False)
    api_port: int = 6067
    api_nice: int = 10
    api_rate: int = 400
    api_burst: int = 100
    api_concurrency: int = 32
    api_cache: int = 10_000
    store: str = "rocksdb://"
    rocksdb_memory_mb: int = 64
    # librdkafka's compression.type for what the worker produces. lz4 halved
    # the broker's CPU on the peer log (its bytes: 159 -> 74 MiB), and the
    # broker shares the machine's cores with the worker.
    compression: str = "lz4"
    session_timeout: int = 30
    progress_seconds: int = 10
    commit_interval: float = 2.8
    batch_max: int = 2000
    max_pending: int = 20_000
    max_idle_ms: int = 0
    # Decoded users kept in memory per partition between batches (0: none).
    user_cache: int = 8_192
    # Allocations between two young-generation passes of Python's cyclic
    # collector (0: Python's own 700). The worker keeps ~10^5-10^6 long-lived
    # objects (cached users), and at 700 the collector's passes took ~20 % of
    # the batch step (BENCHMARKS "batchcore"); the fold's garbage has no
    # cycles, so reference counting frees it either way.
    gc_threshold: int = 50_000
    # TLS and SASL of every Kafka client; its secrets are kept out of repr.
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        app_id = env.get("TASKSTREAM_APP_ID", cls.app_id)
        web_port = _positive_int(env, "TASKSTREAM_WEB_PORT", cls.web_port)
        return cls(
            bootstrap=_bootstrap(env),
            app_id=app_id,
            topic_prefix=env.get("TASKSTREAM_TOPIC_PREFIX", cls.topic_prefix),
            partitions=_positive_int(env, "TASKSTREAM_PARTITIONS", cls.partitions),
            replication=_auto_or_positive(env, "TASKSTREAM_REPLICATION"),
            min_insync=_auto_or_positive(env, "TASKSTREAM_MIN_INSYNC_REPLICAS"),
            data_dir=Path(env.get("TASKSTREAM_DATA_DIR", f".data/{app_id}")),
            web_port=web_port,
            web_host=env.get("TASKSTREAM_WEB_HOST") or cls.web_host,
            api_port=_positive_int(env, "TASKSTREAM_API_PORT", web_port + 1),
            api_nice=_niceness(env),
            api_secret=read_secret(env, "TASKSTREAM_API_SECRET"),
            service_key=read_secret(env, "TASKSTREAM_SERVICE_KEY"),
            api_rate=_positive_int(env, "TASKSTREAM_API_RATE", cls.api_rate),
            api_burst=_positive_int(env, "TASKSTREAM_API_BURST", cls.api_burst),
            api_concurrency=_positive_int(env, "TASKSTREAM_API_CONCURRENCY", cls.api_concurrency),
            api_cache=_positive_int(env, "TASKSTREAM_API_CACHE", cls.api_cache),
            store=env.get("TASKSTREAM_STORE", cls.store),
            rocksdb_memory_mb=_int_at_least(
                env, "TASKSTREAM_ROCKSDB_MEMORY_MB", cls.rocksdb_memory_mb, 8, "an integer >= 8"
            ),
            session_timeout=_positive_int(env, "TASKSTREAM_SESSION_TIMEOUT", cls.session_timeout),
            progress_seconds=_positive_int(
                env, "TASKSTREAM_PROGRESS_SECONDS", cls.progress_seconds
            ),
            commit_interval=_positive_float(env, "TASKSTREAM_COMMIT_INTERVAL", cls.commit_interval),
            batch_max=_positive_int(env, "TASKSTREAM_BATCH_MAX", cls.batch_max),
            max_pending=_positive_int(env, "TASKSTREAM_MAX_PENDING", cls.max_pending),
            max_idle_ms=_non_negative_int(env, "TASKSTREAM_MAX_IDLE_MS", cls.max_idle_ms),
            user_cache=_non_negative_int(env, "TASKSTREAM_USER_CACHE", cls.user_cache),
            gc_threshold=_non_negative_int(env, "TASKSTREAM_GC_THRESHOLD", cls.gc_threshold),
            compression=_compression(env),
            kafka_security=KafkaSecurity.from_env(env),
        )

    def topic(self, name: str) -> str:
        """The full name of one of our topics."""
        return f"{self.topic_prefix}{name}"


def _niceness(env: Mapping[str, str]) -> int:
    raw = env.get("TASKSTREAM_API_NICE", "")
    if raw == "":
        return Settings.api_nice
    if not raw.isdigit() or int(raw) > 19:
        raise ValueError(f"TASKSTREAM_API_NICE must be an integer from 0 to 19, got {raw!r}")
    return int(raw)


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive number, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be a positive number, got {raw!r}")
    return value


def _bootstrap(env: Mapping[str, str]) -> str:
    """The one place every command learns where the brokers are:
    KAFKA_BOOTSTRAP, else the local broker's KAFKA_PORT (what `make run
    KAFKA_PORT=...` and `taskstream kafka up --port` start it on), else
    127.0.0.1:19092."""
    bootstrap = env.get("KAFKA_BOOTSTRAP", "").strip()
    if bootstrap:
        return bootstrap
    port = env.get("KAFKA_PORT", "").strip()
    if not port:
        return DEFAULT_BOOTSTRAP
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"KAFKA_PORT must be a port number (1-65535), not {port!r}")
    return f"127.0.0.1:{int(port)}"


COMPRESSIONS = ("lz4", "zstd", "snappy", "gzip", "none")


def _compression(env: Mapping[str, str]) -> str:
    raw = env.get("TASKSTREAM_COMPRESSION", "").strip().lower() or Settings.compression
    if raw not in COMPRESSIONS:
        raise ValueError(
            f"TASKSTREAM_COMPRESSION must be one of {', '.join(COMPRESSIONS)}, got {raw!r}"
        )
    return raw


def _non_negative_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _int_at_least(env, name, default, 0, "an integer >= 0")


def _auto_or_positive(env: Mapping[str, str], name: str) -> int:
    """A positive integer, or 0 for `auto` (unset, empty or the word)."""
    if env.get(name, "").strip().lower() in ("", "auto"):
        return 0
    return _positive_int(env, name, 0)


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _int_at_least(env, name, default, 1, "a positive integer")


def _int_at_least(env: Mapping[str, str], name: str, default: int, minimum: int, what: str) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {raw!r}")
    return value


# Short names of our topics; the full name is Settings.topic(short name).
# Inputs (co-partitioned, keyed by user_id; a tick goes to every partition):
CLAIMS = "claims"
ORDERS = "orders"
REFUNDS = "refunds"
TICKS = "ticks"
INPUT_TOPICS = (CLAIMS, ORDERS, REFUNDS, TICKS)
# Outputs:
TASK_EVENTS = "task-events"
REWARDS = "rewards"
DEAD_LETTERS = "dead-letters"
OUTPUT_TOPICS = (TASK_EVENTS, REWARDS, DEAD_LETTERS)
# Budget messages (progressive bucketing, app.bucketing), as many partitions
# as the inputs. Grants, refusals and recalls go to the bucket's partition and
# are read by the processor beside the inputs; refill requests, returns and
# operators' pool commands go to the partition that owns the pool's master
# (app.bucketing.master_partition) and are read by the allocator.
BUDGET_GRANTS = "budget-grants"
BUDGET_REQUESTS = "budget-requests"
BUDGET_TOPICS = (BUDGET_GRANTS, BUDGET_REQUESTS)
# What the processor reads, co-partitioned: the inputs and the buckets' budget
# messages (the roles a partition record keeps positions for).
PROCESSOR_INPUTS = (*INPUT_TOPICS, BUDGET_GRANTS)
# The processor's merge decisions (schemas.records.AppliedLate): each input it
# applied out of event-time order, on the partition it was read from, so the
# audit applies the inputs in the order the workers did.
LATE_INPUTS = "late-inputs"
# Templates and pools, compacted, one partition: every worker reads all of it.
TEMPLATES = "templates"
TOPICS = (*INPUT_TOPICS, *OUTPUT_TOPICS, *BUDGET_TOPICS, LATE_INPUTS)

# Redo records hold a whole batch; the changelogs and the producer carry them.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# The workers' tables (faust keeps each in "<app id>-<table>-changelog").
STATE_TABLE = "state"
ALLOCATOR_TABLE = "allocator"
TABLES = (STATE_TABLE, ALLOCATOR_TABLE)

# Which topic an input event goes to, by its `type`.
INPUT_TOPIC_BY_TYPE = {
    "task_claim": CLAIMS,
    "order_paid": ORDERS,
    "order_refunded": REFUNDS,
    "tick": TICKS,
}


@dataclass(frozen=True)
class Replication:
    """How our topics are replicated on the cluster at hand."""

    factor: int
    min_insync: int

    def topic_config(self) -> dict[str, str]:
        """What every topic of ours is created with, beside its own settings:
        a write counts once `min_insync` replicas have it (producers use
        acks=all), and a replica that fell behind never becomes leader."""
        return {
            "min.insync.replicas": str(self.min_insync),
            "unclean.leader.election.enable": "false",
        }


def replication_for(settings: Settings, brokers: int, existing: int | None = None) -> Replication:
    """The replication settings for a cluster where `brokers` brokers answer:
    the configured ones; else, on `auto`, what our topics that exist have
    (`existing`: a broker down for a while must not change the answer),
    or min(3, brokers) for a deployment's first topics; one fewer in sync."""
    factor = settings.replication or existing or min(3, max(1, brokers))
    if factor > brokers and existing is None:
        raise ValueError(f"TASKSTREAM_REPLICATION={factor} but the cluster has {brokers} broker(s)")
    min_insync = settings.min_insync or max(1, factor - 1)
    if min_insync > factor:
        raise ValueError(
            f"TASKSTREAM_MIN_INSYNC_REPLICAS={min_insync} is more than the {factor} replica(s)"
        )
    return Replication(factor, min_insync)


def topic_config(name: str) -> dict[str, str]:
    """The settings one of our topics is created with (short name)."""
    if name in BUDGET_TOPICS or name == LATE_INPUTS:
        # Budget messages are kept for good: they are small (a few per
        # thousand rewards), the agents read them from offset 0, and an
        # audit replays them. So are the merge decisions, which an audit
        # needs for as long as it can read the inputs (and are rarer still).
        return {"retention.ms": "-1"}
    if name in INPUT_TOPICS:
        # The broker stamps each input with its append time: the worker's
        # idle wait counts from it, so a backlog never waits (streams.processor).
        return {"message.timestamp.type": "LogAppendTime"}
    return {}
