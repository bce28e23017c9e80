"""The pure half of the worker's metrics: what to count, and how to bound labels.

No faust and no prometheus_client here (streams/monitor/metrics.py is the shell):
mapping a dead letter's free-text reason to a small set of classes, the
consumer lag of a partition from its record, the readiness verdict, and a
histogram that takes a whole batch of observations at once (the event-time
lag of every applied event would cost ~1.3 us each through
prometheus_client's `Histogram.observe`, a tenth of the processing itself).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from schemas.records import OrderPaid, OrderRefunded, TaskClaim, Tick
from schemas.timestamps import MICROS_PER_SECOND
from streams.processor import CLAIMS, ORDERS, REFUNDS, TICKS

# The input role an event was read from -> its event type (the metric's label).
TYPE_OF_ROLE = {
    CLAIMS: TaskClaim.TYPE,
    ORDERS: OrderPaid.TYPE,
    REFUNDS: OrderRefunded.TYPE,
    TICKS: Tick.TYPE,
}

# Dead-letter reason classes, checked in this order (first match wins): the
# label stays bounded whatever the free text says (field names, offsets, keys).
# A marker starting with "^" must start the reason; others may occur anywhere.
# The engine-error prefix comes first: its text quotes an arbitrary exception.
_REASON_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("engine_error", ("^engine error:",)),
    ("malformed_json", ("^malformed JSON", "^expected a JSON object", "^empty message")),
    ("unknown_type", ("^type: ",)),
    ("unsupported_version", (".v: unsupported v",)),
    ("wrong_topic", ("does not belong on the",)),
    ("wrong_key", ("^message key ",)),
    ("wrong_partition", ("^addressed to partition", "belongs to partition")),
    ("unknown_pool", ("^unknown pool",)),
    # The allocator refusing a budget message ("pool <id>: ..." from app.bucketing).
    ("budget_message", ("^pool ",)),
)
REASON_CLASSES = (*(name for name, _ in _REASON_CLASSES), "schema", "other")


def reason_class(reason: str) -> str:
    """A dead letter's reason as one of REASON_CLASSES.

    Field validation failures read "<type>.<field>: <why>" (schemas.codec);
    they are the `schema` class unless an earlier class matched.
    """
    for name, markers in _REASON_CLASSES:
        for marker in markers:
            if reason.startswith(marker[1:]) if marker[0] == "^" else marker in reason:
                return name
    head, sep, _ = reason.partition(": ")
    if sep and "." in head and " " not in head:
        return "schema"
    return "other"


def allocator_dead_reasons(notes: Iterable[str]) -> list[str]:
    """The reasons of the allocator's dead letters, from its notes
    ("dead letter <topic/partition@offset>: <reason>")."""
    prefix = "dead letter "
    reasons = []
    for note in notes:
        if note.startswith(prefix):
            _, _, reason = note[len(prefix) :].partition(": ")
            reasons.append(reason)
    return reasons


def input_lag(next_offset: int | None, highwater: int | None) -> int | None:
    """Messages of one input partition not processed yet: the high watermark
    (as of the consumer's last fetch) minus the next offset the partition
    record expects (None: nothing read yet, so from offset 0). None when the
    consumer has no high watermark for it yet."""
    if highwater is None:
        return None
    return max(0, highwater - (next_offset or 0))


def readiness(
    *,
    joined: bool,
    rebalancing: bool,
    in_recovery: bool,
    recovered: bool,
    catalog_loaded: bool,
) -> list[str]:
    """What the worker still waits for before it serves (empty: ready)."""
    waiting = []
    if not joined:
        waiting.append("joining the consumer group")
    if rebalancing:
        waiting.append("a rebalance to finish")
    if in_recovery or not recovered:
        waiting.append("table recovery from the changelogs")
    if not catalog_loaded:
        waiting.append("the templates topic (first catalog)")
    return waiting


# Event-time lag: 1 ms to 60 s, then +Inf (replays and backfills land there).
EVENT_LAG_BUCKETS_SECONDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(slots=True)
class BulkHistogram:
    """A histogram fed a batch at a time: one bisect and one list increment
    per value. `bounds` are the upper bounds (inclusive, as Prometheus' `le`)
    in the values' own unit."""

    bounds: Sequence[int]
    counts: list[int] = field(default_factory=list)  # per bucket, the last one +Inf
    total: int = 0  # sum of the observed values
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe_lags(self, now: int, times: Iterable[int]) -> None:
        """Observe `now - t` for each t, negative lags (a producer clock ahead
        of ours) as 0. A batch's times sorted once, then one bisect per
        bound, not per value: this runs for every event applied (a batch's
        times come in event-time order, so the sort is nearly free)."""
        ts = sorted(times)
        n = len(ts)
        if not n:
            return
        counts = self.counts
        below = 0  # lags <= the previous bound
        for i, bound in enumerate(self.bounds):
            # lag <= bound  <=>  t >= now - bound (a clamped lag of 0 too)
            upto = n - bisect_left(ts, now - bound) if bound >= 0 else 0
            counts[i] += upto - below
            below = upto
        counts[-1] += n - below
        past = bisect_right(ts, now)  # the times with a lag of 0 or more
        self.total += past * now - sum(ts[:past])
        self.count += n

    def cumulative(self) -> list[int]:
        """Counts per upper bound, cumulative, the last one (+Inf) == count."""
        out, running = [], 0
        for n in self.counts:
            running += n
            out.append(running)
        return out


def micros_bounds(seconds: Iterable[float]) -> tuple[int, ...]:
    return tuple(round(s * MICROS_PER_SECOND) for s in seconds)


def event_lag_histogram() -> BulkHistogram:
    return BulkHistogram(micros_bounds(EVENT_LAG_BUCKETS_SECONDS))


def reward_outcome(reward_type: str) -> str:
    """reward_granted -> granted (the label of the reward metrics)."""
    return reward_type.removeprefix("reward_")
