"""A progress line every few seconds: what the worker did and how far behind it is.

Operators read lag here first; it is also how a stalled consumer shows up
(events/s at 0 while lag stays above 0).
"""

from __future__ import annotations

import logging
from typing import Any

from streams.app import app, settings

log = logging.getLogger("taskstream.progress")

PROGRESS_INTERVAL_SECONDS = float(settings.progress_seconds)

_last: dict[str, float] = {"events": 0.0}


def _lag_by_partition(consumer: Any) -> dict[str, int]:
    """Per assigned input partition: the broker's high watermark (as of the
    last fetch response) minus the next offset this worker will hand to an
    agent. A partition never read counts from offset 0."""
    lags: dict[str, int] = {}
    for tp in consumer.assignment():
        if not tp.topic.startswith(settings.topic_prefix):
            continue  # changelogs and faust's own topics
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        read = consumer._read_offset.get(tp)
        next_offset = 0 if read is None else int(read) + 1
        lags[f"{tp.topic.removeprefix(settings.topic_prefix)}/{tp.partition}"] = max(
            0, int(highwater) - next_offset
        )
    return lags


@app.timer(PROGRESS_INTERVAL_SECONDS)  # type: ignore[untyped-decorator]
async def report_progress() -> None:
    monitor = app.monitor
    consumer = app.consumer
    events = float(monitor.events_total)
    rate = (events - _last["events"]) / PROGRESS_INTERVAL_SECONDS
    _last["events"] = events
    lags = _lag_by_partition(consumer)
    behind = {tp: lag for tp, lag in lags.items() if lag}
    from streams.agents import totals
    from streams.allocator_agent import totals as allocator_totals

    log.info(
        "progress: %.0f events/s, %d events total (%d applied, %d outputs, %d dead letters, "
        "%d redelivered), budget: %d stalls, %d messages in, %d requests at masters, "
        "lag %d (%s), assigned %d, paused %d, buffer-full %d, producer buffer %d",
        rate,
        int(events),
        totals["applied"],
        totals["outputs"],
        totals["dead"],
        totals["redelivered"],
        totals["stalls"],
        totals["budget_messages"],
        allocator_totals["requests"],
        sum(lags.values()),
        ", ".join(f"{tp}={lag}" for tp, lag in sorted(behind.items())) or "none",
        len(consumer.assignment()),
        len(getattr(consumer, "_paused_partitions", ())),
        len(getattr(consumer, "_buffered_partitions", ())),
        app.producer.buffer.size,
    )
