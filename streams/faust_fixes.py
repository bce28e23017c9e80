"""Fixes for faust-streaming / aiokafka behaviour that would lose events for us.

Installed once, by `streams.app` at import. Each fix names the faulty code
path, the symptom we saw on a real broker, and why the fix is safe.

Uncommitted partitions skipped after recovery
---------------------------------------------
Symptom: a worker restarted (SIGKILL) before its group had committed an
offset for some input partitions recovered its tables, said "Worker ready",
and then never processed the events already waiting in those partitions
(their lag stayed, events/s fell to 0). Seen in roughly one run in two of
tests/integration/test_worker_recovery.py on a fresh checkout.

Cause, three steps:
1. During table recovery faust pauses input partitions only in its own
   bookkeeping (`Consumer._active_partitions`); aiokafka keeps fetching them.
2. `faust.transport.consumer.Consumer.getmany` silently drops records of
   partitions that are not active at that moment, but aiokafka has already
   advanced its fetch position past them.
3. After recovery faust calls `seek_to_committed` to rewind every input
   partition to its committed offset. aiokafka's `seek_to_committed` seeks
   only `if offset and offset > 0`: a partition whose committed offset is
   None (never committed) or 0 is not rewound, so the dropped records are
   never fetched again (until the next restart re-reads them).

Fix: after `seek_to_committed`, reset each input partition without a
committed offset (None or 0) to its beginning, as `auto_offset_reset =
"earliest"` (our setting) would on a fresh assignment. `seek_to_beginning`
also discards aiokafka's buffered records for the partition, so nothing
stale is returned. Changelog partitions are left alone: faust positions
them itself from the offsets stored with each table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)

_INSTALLED = False


async def _seek_to_committed_then_rewind_uncommitted(self: Any) -> Mapping[Any, int]:
    consumer = self._ensure_consumer()
    changelogs = set(self.app.tables.changelog_topics)

    async def seek() -> Mapping[Any, int]:
        committed: Mapping[Any, int] = await consumer.seek_to_committed()
        uncommitted = [
            tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs
        ]
        if uncommitted:
            log.info(
                "rewinding %d input partition(s) without a committed offset to their beginning: %s",
                len(uncommitted),
                ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(uncommitted)),
            )
            await consumer.seek_to_beginning(*uncommitted)
        return committed

    result: Mapping[Any, int] = await self.call_thread(seek)
    return result


def install() -> None:
    """Replace the faulty method once; fail loudly if faust changed shape."""
    global _INSTALLED
    if _INSTALLED:
        return
    thread_class = faust_aiokafka.AIOKafkaConsumerThread
    if not hasattr(thread_class, "seek_to_committed"):
        raise RuntimeError(
            "faust's AIOKafkaConsumerThread has no seek_to_committed: "
            "re-check streams/faust_fixes.py against the installed faust-streaming"
        )
    thread_class.seek_to_committed = _seek_to_committed_then_rewind_uncommitted
    _INSTALLED = True
