"""A progress line every few seconds: what the worker did and how far behind it is.

Operators read lag here first; it is also how a stalled consumer shows up
(events/s at 0 while lag stays above 0). Every figure is read from the
worker's Prometheus counters (streams.metrics), so the line and /metrics
never disagree.
"""

from __future__ import annotations

import logging

from streams import metrics
from streams.app import app, settings

log = logging.getLogger("taskstream.progress")

PROGRESS_INTERVAL_SECONDS = float(settings.progress_seconds)


class _Progress:
    def __init__(self) -> None:
        self.last_messages = 0

    def line(self) -> str:
        total = metrics.counter_total
        messages = total(metrics.INPUT_MESSAGES)
        rate = (messages - self.last_messages) / PROGRESS_INTERVAL_SECONDS
        self.last_messages = messages
        lags = metrics.input_lags()
        behind = {f"{role}/{partition}": lag for (role, partition), lag in lags.items() if lag}
        consumer = app.consumer
        return (
            f"progress: {rate:.0f} messages/s, {messages} messages total "
            f"({total(metrics.INPUT_MESSAGES, outcome='accepted')} accepted, "
            f"{total(metrics.INPUT_MESSAGES, outcome='redelivered')} redelivered), "
            f"{total(metrics.INPUT_EVENTS)} applied, {total(metrics.OUTPUT_EVENTS)} outputs, "
            f"{total(metrics.DEAD_LETTERS)} dead letters, "
            f"budget: {total(metrics.STALLS)} stalls, "
            f"{total(metrics.BUDGET_MESSAGES, direction='received')} messages in, "
            f"{total(metrics.ALLOCATOR_MESSAGES, kind='requests')} requests at masters, "
            f"lag {sum(lags.values())} "
            f"({', '.join(f'{tp}={lag}' for tp, lag in sorted(behind.items())) or 'none'}), "
            f"assigned {len(consumer.assignment())}, "
            f"paused {len(getattr(consumer, '_paused_partitions', ()))}"
        )


_progress = _Progress()


@app.timer(PROGRESS_INTERVAL_SECONDS)  # type: ignore[untyped-decorator]
async def report_progress() -> None:
    log.info("%s", _progress.line())
