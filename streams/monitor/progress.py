"""A progress line every few seconds: what the worker did and how far behind it is.

Operators read lag here first; it is also how a stalled consumer shows up
(events/s at 0 while lag stays above 0). Every figure is read from the
worker's Prometheus counters (streams.monitor.metrics), so the line and /metrics
never disagree.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import TP

from streams.agents import metrics, worker
from streams.app import app, settings
from streams.monitor.metrics import counter_total

log = logging.getLogger("taskstream.progress")

PROGRESS_INTERVAL_SECONDS = float(settings.progress_seconds)


class _Progress:
    def __init__(self) -> None:
        self.last_messages = 0

    def line(self) -> str:
        total = counter_total
        messages = total(metrics.input_messages)
        rate = (messages - self.last_messages) / PROGRESS_INTERVAL_SECONDS
        self.last_messages = messages
        lags = metrics.input_lags()
        behind = {f"{role}/{partition}": lag for (role, partition), lag in lags.items() if lag}
        consumer = app.consumer
        return (
            f"progress: {rate:.0f} messages/s, {messages} messages total "
            f"({total(metrics.input_messages, outcome='accepted')} accepted, "
            f"{total(metrics.input_messages, outcome='redelivered')} redelivered), "
            f"{total(metrics.input_events)} applied ({total(metrics.applied_late)} late), "
            f"{total(metrics.output_events)} outputs, "
            f"{total(metrics.dead_letters)} dead letters, "
            f"budget: {total(metrics.stalls)} stalls, "
            f"{total(metrics.budget_messages, direction='received')} messages in, "
            f"{total(metrics.allocator_messages, kind='requests')} requests at masters, "
            f"lag {sum(lags.values())} "
            f"({', '.join(f'{tp}={lag}' for tp, lag in sorted(behind.items())) or 'none'}), "
            f"assigned {len(consumer.assignment())}, "
            f"paused {len(getattr(consumer, '_paused_partitions', ()))}"
        )


def stall_details(tps: list[Any]) -> str:
    """Where each of these input partitions stands in faust and in aiokafka:
    what an operator (or a bug report) needs when lag stays while nothing is
    processed. Reads private state of both libraries, so it never raises."""
    consumer: Any = app.consumer
    parts = []
    for tp in tps:
        try:
            aio = consumer._thread._ensure_consumer()
            state = aio._subscription.subscription.assignment.state_value(tp)
            fetched = aio._fetcher._records.get(tp)
            parts.append(
                f"{tp.topic}/{tp.partition}: active={tp in (consumer._active_partitions or ())} "
                f"paused={tp in consumer._paused_partitions} "
                f"buffered={tp in consumer._buffered_partitions} "
                f"aiokafka paused={state.paused} position={state.position} "
                f"highwater={state.highwater} undrained={fetched!r} "
                f"worker: batch running={worker.lock.locked()} held back={tp in worker.held_back} "
                f"watched={worker.lost_fetches.since.get(tp)}"
            )
        except Exception as exc:  # diagnostics only
            parts.append(f"{tp.topic}/{tp.partition}: ({exc!r})")
    return "; ".join(parts)


class _StallWatch:
    """Input partitions with lag whose lag has not moved for a while."""

    def __init__(self, after: int = 3) -> None:
        self.after = after
        self.seen: dict[tuple[str, int], tuple[int, int]] = {}  # -> (lag, times seen)

    def stalled(self, lags: dict[tuple[str, int], int]) -> list[tuple[str, int]]:
        seen: dict[tuple[str, int], tuple[int, int]] = {}
        for key, lag in lags.items():
            if not lag:
                continue
            before, times = self.seen.get(key, (-1, 0))
            seen[key] = (lag, times + 1 if lag == before else 1)
        self.seen = seen
        return sorted(key for key, (_, times) in seen.items() if times == self.after)


_progress = _Progress()
_stalls = _StallWatch()


@app.timer(PROGRESS_INTERVAL_SECONDS)  # type: ignore[untyped-decorator]
async def report_progress() -> None:
    log.info("%s", _progress.line())
    stalled = _stalls.stalled(metrics.input_lags())
    if stalled and not (app.rebalancing or app.in_recovery):
        tps = [TP(settings.topic(role), partition) for role, partition in stalled]
        log.warning(
            "input partition(s) with messages waiting and no progress for %d progress "
            "intervals: %s",
            _stalls.after,
            stall_details(tps),
        )
