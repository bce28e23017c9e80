"""Prometheus metrics and health pages of one worker (faust's web server).

Pages, on `TASKSTREAM_WEB_PORT`:

- `/metrics`: every metric below, Prometheus text format (OpenMetrics if asked);
- `/health`: 200 as long as the event loop answers (liveness);
- `/ready`: 200 once the worker has joined the group, recovered its tables
  from the changelogs and loaded the first catalog, and is not rebalancing;
  else 503 with `{"ready": false, "waiting_for": [...]}`.

One `WorkerMetrics` object per worker (built by streams.agents, handed to
the `Worker` and the `Allocator`) holds the registry, the counters and what
the scrape reads; nothing here is module state. The worker and the
allocator report once per partition batch (`observe_batch`,
`observe_allocation`): counters from the tallies the processor already
keeps (streams.processor.BatchStats), never by decoding outputs. Gauges
(lag, buckets, masters) and the event-lag histogram are read at scrape
time by `_StateCollector`. Metric names and what to alert on:
docs/metrics.md. The registry is the object's own, not the global one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from app.bucketing import Master
from schemas.timestamps import MICROS_PER_SECOND
from streams import rocksdb_memory
from streams.allocation import AllocationResult
from streams.config import BUDGET_REQUESTS, PROCESSOR_INPUTS, Settings
from streams.fenced_store import FencedStore
from streams.monitor.metrics_core import (
    EVENT_LAG_BUCKETS_SECONDS,
    TYPE_OF_ROLE,
    allocator_dead_reasons,
    event_lag_histogram,
    input_lag,
    readiness,
    reason_class,
    reward_outcome,
)
from streams.partition_state import PartitionRecord
from streams.processor import BatchResult

# No `_created` series next to every counter: they double the page and no
# dashboard here reads them (a process-wide switch; this is the worker's only registry).
disable_created_metrics()  # type: ignore[no-untyped-call]
_SENT_TYPES = frozenset({"refill_requested", "bucket_returned"})
PROCESSOR, ALLOCATOR = "processor", "allocator"


class WorkerMetrics:
    """One worker's Prometheus registry, its counters, and what its scrape
    reads: the partition records and masters last seen, the event-lag
    histogram. `app`, `settings`, `tables` and `catalog_ready` are read at
    scrape time only (lags, readiness, fencing counters)."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        tables: Sequence[Any],
        catalog_ready: Callable[[], bool],
    ) -> None:
        self.app = app
        self.settings = settings
        self.tables = tuple(tables)
        self.catalog_ready = catalog_ready
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.input_events = Counter(
            "taskstream_input_events",
            "Input events applied by the engine, by event type (engine errors included).",
            ["type"],
            registry=registry,
        )
        self.input_messages = Counter(
            "taskstream_input_messages",
            "Input messages by what offset acceptance made of them: accepted, redelivered "
            "(already processed), dropped_for_rewind (after a gap), stale (fetched before a "
            "rebalance).",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "taskstream_dead_letters",
            "Dead letters written, by reason class (streams/monitor/metrics_core.py) and agent.",
            ["reason", "agent"],
            registry=registry,
        )
        self.output_events = Counter(
            "taskstream_output_events",
            "Task events and rewards emitted by the processor, by event type.",
            ["type"],
            registry=registry,
        )
        self.rewards = Counter(
            "taskstream_rewards",
            "Reward events by outcome (granted, revoked, rejected), template and pool.",
            ["outcome", "template_id", "pool_id"],
            registry=registry,
        )
        self.reward_cents = Counter(
            "taskstream_reward_amount_cents",
            "Sum of the rewards' amount_cents (also for items pools) by outcome, template and "
            "pool.",
            ["outcome", "template_id", "pool_id"],
            registry=registry,
        )
        self.budget_messages = Counter(
            "taskstream_budget_messages",
            "Budget messages of this worker's buckets: sent to the masters (refill_requested, "
            "bucket_returned) and received from them (bucket_granted, refill_denied, "
            "bucket_recalled).",
            ["pool_id", "type", "direction"],
            registry=registry,
        )
        self.stalls = Counter(
            "taskstream_budget_stalls",
            "Times a partition's head event had to wait for a pool master's answer.",
            registry=registry,
        )
        self.applied_late = Counter(
            "taskstream_inputs_applied_late",
            "Input events applied after a later event of their partition (they reached the "
            "worker after it; each is recorded on the late-inputs topic for the audit).",
            registry=registry,
        )
        self.freezes = Counter(
            "taskstream_worker_freezes",
            "Times this worker found it had been frozen (SIGSTOP, a suspended host) for over half "
            "the session timeout, and held processing back until the group settled.",
            registry=registry,
        )
        self.lost_fetches = Counter(
            "taskstream_input_refetches",
            "Times an input partition's waiting messages had not reached the processor for "
            "a while and were fetched again (streams/worker/lost_fetches.py).",
            registry=registry,
        )
        self.allocator_messages = Counter(
            "taskstream_allocator_messages",
            "Messages the masters on this worker handled: requests accepted and grants, "
            "denials and recalls sent.",
            ["kind"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "taskstream_batch_processing_seconds",
            "Wall time of one partition batch, from the messages to the outputs handed to the "
            "producer.",
            ["agent"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        # Last partition record seen per processor partition, and the masters
        # last changed per budget-requests partition: the scrape reads them
        # (dropped when the partition is revoked: `forget`).
        self.records: dict[int, PartitionRecord] = {}
        self.masters: dict[int, dict[str, Master]] = {}
        self.event_lag = event_lag_histogram()
        registry.register(_StateCollector(self))
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds (/proc).
        ProcessCollector(registry=registry)

    def observe_stored_record(self, partition: int, record: PartitionRecord) -> None:
        """A partition assigned here but not processed yet in this generation:
        its stored record, so lag and bucket gauges show the table's view rather
        than the group's committed offsets. A batch's record always wins."""
        self.records.setdefault(partition, record)

    def observe_batch(self, partition: int, result: BatchResult, seconds: float) -> None:
        """One processor partition batch: a few counter updates per distinct label."""
        stats = result.stats
        self.records[partition] = result.record
        self.batch_seconds.labels(PROCESSOR).observe(seconds)
        if stats.accepted:
            self.input_messages.labels("accepted").inc(stats.accepted)
        if stats.redelivered:
            self.input_messages.labels("redelivered").inc(stats.redelivered)
        if stats.dropped_for_rewind:
            self.input_messages.labels("dropped_for_rewind").inc(stats.dropped_for_rewind)
        if stats.stalls:
            self.stalls.inc(stats.stalls)
        if stats.late:
            self.applied_late.inc(stats.late)
        for role, n in stats.applied_by_role.items():
            self.input_events.labels(TYPE_OF_ROLE.get(role, role)).inc(n)
        if stats.applied_at:
            self.event_lag.observe_lags(time.time_ns() // 1000, stats.applied_at)
        for kind, n in stats.outputs_by_type.items():
            self.output_events.labels(kind).inc(n)
        for (kind, template_id, pool_id), (count, cents) in stats.rewards.items():
            outcome = reward_outcome(kind)
            self.rewards.labels(outcome, template_id, pool_id).inc(count)
            self.reward_cents.labels(outcome, template_id, pool_id).inc(cents)
        for (kind, pool_id), n in stats.budget_by_type.items():
            direction = "sent" if kind in _SENT_TYPES else "received"
            self.budget_messages.labels(pool_id, kind, direction).inc(n)
        for reason in stats.dead_reasons:
            self.dead_letters.labels(reason_class(reason), PROCESSOR).inc()

    def observe_freeze(self) -> None:
        self.freezes.inc()

    def observe_refetch(self) -> None:
        self.lost_fetches.inc()

    def observe_stale(self, events: int) -> None:
        self.input_messages.labels("stale").inc(events)

    def observe_allocation(self, partition: int, result: AllocationResult, seconds: float) -> None:
        """One allocator partition batch: the masters it changed, what they sent."""
        stats = result.stats
        self.batch_seconds.labels(ALLOCATOR).observe(seconds)
        if result.masters:
            self.masters.setdefault(partition, {}).update(result.masters)
        for kind, n in (
            ("requests", stats.accepted),
            ("grants", stats.grants),
            ("denials", stats.denials),
            ("recalls", stats.recalls),
        ):
            if n:
                self.allocator_messages.labels(kind).inc(n)
        if stats.dead:
            for reason in allocator_dead_reasons(result.notes):
                self.dead_letters.labels(reason_class(reason), ALLOCATOR).inc()

    def forget(self, revoked: Iterable[TP]) -> None:
        """Revoked partitions: their records and masters are another worker's now."""
        processor_topics = {self.settings.topic(role) for role in PROCESSOR_INPUTS}
        requests_topic = self.settings.topic(BUDGET_REQUESTS)
        for tp in revoked:
            if tp.topic in processor_topics:
                self.records.pop(tp.partition, None)
            elif tp.topic == requests_topic:
                self.masters.pop(tp.partition, None)

    def _ready_gauge(self) -> Metric:
        gauge = GaugeMetricFamily(
            "taskstream_worker_ready", "1 when /ready answers 200 (see waiting_for there), else 0."
        )
        gauge.add_metric([], 0.0 if self.waiting_for() else 1.0)
        return gauge

    def _lag_gauges(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "taskstream_input_lag_messages",
            "Per assigned input partition: high watermark (as of the last fetch) minus the "
            "next offset the partition record expects.",
            labels=["topic", "partition"],
        )
        held = GaugeMetricFamily(
            "taskstream_held_events",
            "Per processor partition: accepted events held back for event-time order "
            "(or behind a stall on a pool master).",
            labels=["partition"],
        )
        for (role, partition), behind in sorted(self.input_lags().items()):
            lag.add_metric([role, str(partition)], float(behind))
        for partition, record in sorted(self.records.items()):
            held.add_metric([str(partition)], float(sum(len(o) for o in record.held.values())))
        yield lag
        yield held

    def input_lags(self) -> dict[tuple[str, int], int]:
        """(input role, partition) -> messages behind, per assigned input partition:
        the high watermark (as of the last fetch) minus the next offset the
        partition record expects (where the consumer is, before the first batch)."""
        consumer: Any = self.app.consumer  # _read_offset is not on faust's ConsumerT
        roles = {self.settings.topic(role): role for role in PROCESSOR_INPUTS}
        try:
            assignment = consumer.assignment()
        except ConsumerNotStarted:  # scraped while the worker starts
            assignment = set()
        lags: dict[tuple[str, int], int] = {}
        for tp in assignment:
            role = roles.get(tp.topic)
            if role is None:
                continue  # changelogs, budget-requests (the allocator's), templates
            record = self.records.get(tp.partition)
            if record is not None:
                next_offset: int | None = record.next_offset.get(role)
            else:  # not processed here yet: where the consumer is
                read = consumer._read_offset.get(tp)
                next_offset = None if read is None else int(read) + 1
            behind = input_lag(next_offset, consumer.highwater(tp))
            if behind is not None:
                lags[role, tp.partition] = behind
        return lags

    def _bucket_gauges(self) -> Iterator[Metric]:
        balance = GaugeMetricFamily(
            "taskstream_bucket_balance_units",
            "Units (cents or items) in this partition's bucket of the pool.",
            labels=["pool_id", "partition"],
        )
        issued = GaugeMetricFamily(
            "taskstream_bucket_issued_units",
            "Units paid out from this partition's bucket, net of revocations, ever.",
            labels=["pool_id", "partition"],
        )
        received = GaugeMetricFamily(
            "taskstream_bucket_received_units",
            "Units granted to this partition's bucket by the pool's master, ever (refills).",
            labels=["pool_id", "partition"],
        )
        for partition, record in sorted(self.records.items()):
            for pool_id, bucket in sorted(record.buckets.items()):
                labels = [pool_id, str(partition)]
                balance.add_metric(labels, float(bucket.balance))
                issued.add_metric(labels, float(bucket.issued))
                received.add_metric(labels, float(bucket.received))
        yield balance
        yield issued
        yield received

    def _master_metrics(self) -> Iterator[Metric]:
        level = GaugeMetricFamily(
            "taskstream_master_level_units",
            "Units left in the pool's master (on the worker that owns it).",
            labels=["pool_id"],
        )
        counters = {
            name: CounterMetricFamily(
                f"taskstream_master_{name}",
                f"The pool master's {name}, ever (stored with the master, so across restarts).",
                labels=["pool_id"],
            )
            for name in ("requests", "grants", "denials", "rounds")
        }
        for masters in self.masters.values():
            for pool_id, master in sorted(masters.items()):
                level.add_metric([pool_id], float(master.master))
                for name, family in counters.items():
                    family.add_metric([pool_id], float(getattr(master, name)))
        yield level
        yield from counters.values()

    def _event_lag_metric(self) -> Metric:
        histogram = HistogramMetricFamily(
            "taskstream_event_lag_seconds",
            "Wall clock when an event was applied minus its `at` (event time).",
        )
        cumulative = self.event_lag.cumulative()
        bounds = [repr(float(s)) for s in EVENT_LAG_BUCKETS_SECONDS] + ["+Inf"]
        histogram.add_metric(
            [],
            buckets=list(zip(bounds, (float(n) for n in cumulative), strict=True)),
            sum_value=self.event_lag.total / MICROS_PER_SECOND,
        )
        return histogram

    def _fencing_counters(self) -> Iterator[Metric]:
        families = {
            name: CounterMetricFamily(f"taskstream_fencing_{name}", text, labels=["table"])
            for name, text in (
                (
                    "skipped_writes",
                    "Changelog writes of an earlier owner that landed after a newer owner's, "
                    "skipped while rebuilding a partition (a frozen worker's late sends).",
                ),
                (
                    "gaps",
                    "Times another worker wrote to a partition's changelog between two of this "
                    "worker's writes (the local copy is then rebuilt at its next assignment).",
                ),
                ("rebuilds", "Distrusted local copies emptied and rebuilt from the changelog."),
                (
                    "rewritten_keys",
                    "Keys an earlier owner wrote late that this worker, the newer owner, wrote "
                    "again so that log compaction keeps its values.",
                ),
            )
        }
        for table in self.tables:
            store = table.data
            if isinstance(store, FencedStore):
                for name, family in families.items():  # the store's counter of that name
                    family.add_metric([table.name], float(getattr(store, name)))
        yield from families.values()

    def waiting_for(self) -> list[str]:
        """What this worker still waits for before it is ready (empty: ready)."""
        # faust's Recovery service sets `completed` once the first assignment's
        # tables are restored (and never clears it); `in_recovery` and
        # `rebalancing` cover the later rebalances.
        tables: Any = self.app.tables  # `recovery` is on TableManager, not on TableManagerT
        return readiness(
            joined=self.app.consumer_generation_id > 0,
            rebalancing=self.app.rebalancing,
            in_recovery=self.app.in_recovery,
            recovered=tables.recovery.completed.is_set(),
            catalog_loaded=self.catalog_ready(),
        )


class _StateCollector:
    """Gauges read at scrape time from what the worker and the allocator last stored."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to check at registration (and no consumer yet)

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        yield metrics._ready_gauge()
        yield from metrics._lag_gauges()
        yield from metrics._bucket_gauges()
        yield from metrics._master_metrics()
        yield metrics._event_lag_metric()
        budget = getattr(metrics.app, "rocksdb_budget", None)
        if isinstance(budget, rocksdb_memory.MemoryBudget):
            yield from _rocksdb_memory_gauges(budget)
        yield from metrics._fencing_counters()


def counter_total(counter: Counter, **labels: str) -> int:
    """A counter's value summed over every label set matching `labels`."""
    total = 0.0
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return int(total)


def _rocksdb_memory_gauges(budget: rocksdb_memory.MemoryBudget) -> Iterator[Metric]:
    usage = budget.usage()
    used = GaugeMetricFamily(
        "taskstream_rocksdb_memory_bytes",
        "The process's shared RocksDB memory budget: everything charged to the block "
        "cache (data, index and filter blocks, memtables), the part of it readers pin, "
        "and the memtables' share of it.",
        labels=["part"],
    )
    used.add_metric(["cache"], float(usage.cache))
    used.add_metric(["pinned"], float(usage.pinned))
    used.add_metric(["memtables"], float(usage.memtables))
    yield used
    limit = GaugeMetricFamily(
        "taskstream_rocksdb_memory_limit_bytes",
        "TASKSTREAM_ROCKSDB_MEMORY_MB in bytes: what the block cache holds at most.",
    )
    limit.add_metric([], float(usage.limit))
    yield limit


def install_pages(app: Any, metrics: WorkerMetrics) -> None:
    """/metrics, /health and /ready on the app's web server."""

    @app.page("/metrics")
    class MetricsPage(View):
        async def get(self, request: Request) -> Response:
            accept: str = request.headers.get("Accept", "")
            encode, content_type = choose_encoder(accept)
            # As a header: aiohttp refuses a content_type argument with a charset in it.
            return self.bytes(encode(metrics.registry), headers={"Content-Type": content_type})

    @app.page("/health")
    class HealthPage(View):
        async def get(self, request: Request) -> Response:
            return self.json({"alive": True})

    @app.page("/ready")
    class ReadyPage(View):
        async def get(self, request: Request) -> Response:
            waiting = metrics.waiting_for()
            if waiting:
                return self.json({"ready": False, "waiting_for": waiting}, status=503)
            return self.json({"ready": True})
