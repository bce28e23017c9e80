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

Fix 1: after `seek_to_committed`, reset each input partition without a
committed offset (None or 0) to its beginning, as `auto_offset_reset =
"earliest"` (our setting) would on a fresh assignment. `seek_to_beginning`
also discards aiokafka's buffered records for the partition, so nothing
stale is returned. Changelog partitions are left alone: faust positions
them itself from the offsets stored with each table.

Events delivered out of order around recovery
---------------------------------------------
Symptom: after a SIGKILL mid-burst, the restarted worker processed some
events of a partition *after* later ones of the same partition (offsets
jumped ahead, then back), so a per-partition "already applied" check took
the earlier ones for duplicates. Same root as faust-streaming issue 216.

Cause: `Recovery._resume_streams` makes the input partitions active first
and only then awaits `perform_seek()`. While that seek travels to the
consumer thread, the fetcher hands the agents records from wherever
aiokafka's position had drifted (step 2 above); the seek then rewinds.

Fix 2: `_resume_streams` seeks first and activates the input partitions
after, so the first record an agent sees is at the committed offset.

Fix 3: each fetch first mirrors faust's set of active partitions onto
aiokafka's own pause state, and fetches from a snapshot of that set (faust
passes its live set, which the event loop thread mutates while the
consumer thread reads it). Inactive partitions are then not fetched at
all, so nothing is fetched only to be dropped, and aiokafka's position
never drifts past records no agent has seen.

Events skipped at a rebalance
----------------------------
`Recovery._resume_streams` ends with `app.flow_control.resume()`, which
clears every agent's stream queue; records already handed to a queue are
dropped, and `Consumer._drain_messages` may record the hole with `_add_gap`
and commit past it. We do not try to stop faust from doing that: the
processor (streams/processor.py) keeps the next offset it expects from each
input partition in the table, next to the state, notices any record that
arrives ahead of it, and calls `rewind` below to fetch the skipped ones
again. The committed offsets only say where to start fetching; the table's
offsets say what was processed.

Records fetched before a rewind hide the rewound ones (fix 4)
-------------------------------------------------------------
Symptom: a worker that took over a partition rewound an input to the
offsets its table held back, then received nothing more from it: lag 0,
0 events applied, for minutes (tests/integration/test_stream_processor.py,
the SIGKILL run, before this fix).

Cause: `Consumer._drain_messages` iterates a batch aiokafka fetched before
our seek and, after each record it hands on, sets the partition's read
offset to that record's offset; it drops every later record whose offset is
below the read offset. So the stale records that follow a rewind raise the
read offset again, and the records the seek fetches (from the rewound
offset up) are all dropped as "already read".

The opposite hole: a rewind *forward* (to held offsets above where the
consumer is) made the drain loop drop the stale records below the awaited
one; nobody acked them, so faust's committed offset stayed below them for
good (the group showed lag on a fully processed partition).

Fix 4: faust's read offsets live in `RewindAwareReadOffsets`. `rewind`
seeks and marks the awaited record; until that record itself is handed on,
the partition reads as having no read offset (every record passes the drain
loop's filter and is acked after the agent has seen it) and the drain
loop's updates are ignored. The processor drops the stale records as not
awaited. A revoke or faust's own seek clears the mark.

Committed offsets beyond what the table holds (fix 5)
-----------------------------------------------------
Symptom: after a third worker joined and left, three partitions stopped
for good: the group had committed their input topics to the end, while the
table's partition record still expected offset 645 of `orders`. Their new
owner sought to the committed offsets, fetched nothing, and so never ran
the processor that would have noticed the hole (test_a_third_worker_joins
_and_leaves, before this fix). faust commits whatever its agents acked,
and acked records are not always processed ones: `take_events` acks every
buffered event, including those skipped as fetched before a rebalance.

Fix 5: for the input topics the broker is sent the processor's own position
instead (`commit_positions`: per partition and topic, the oldest held
offset, else the next offset to accept), for every assigned input partition
the agent has processed; partitions it has not processed are not committed
at all. The committed offset is then never past anything the table has not
durably taken (faust flushes the producer, changelog included, before it
commits). faust's own bookkeeping is left untouched. faust calls its commit
only when it has newly acked offsets it can commit, which after a rewind can
stop happening for a partition; so the worker also commits the positions
that moved on its own timer (`commit_moved_positions`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import ConsumerStoppedError
from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
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


async def _resume_streams_after_seeking(self: Any, generation_id: int = 0) -> None:
    """faust's `Recovery._resume_streams`, with the seek moved before the
    input partitions become active (fix 2); otherwise unchanged."""
    app = self.app
    consumer = app.consumer
    await app.on_rebalance_complete.send()
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    else:
        self.log.info("Resuming streams with empty assignment")
    self.completed.set()
    self.log.info("Resuming flow...")
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


def _mirror_pause_state(consumer: Any, active: set[Any]) -> None:
    """Pause in aiokafka every assigned partition faust considers inactive,
    resume the active ones (fix 3). Runs in the consumer thread."""
    paused = consumer.paused()
    to_pause = [tp for tp in consumer.assignment() if tp not in active and tp not in paused]
    to_resume = [tp for tp in paused if tp in active]
    if to_pause:
        consumer.pause(*to_pause)
    if to_resume:
        consumer.resume(*to_resume)


async def _fetch_records_of_active_partitions(
    self: Any,
    consumer: Any,
    active_partitions: set[Any] | None,
    timeout: float | None = None,
    max_records: int | None = None,
) -> Any:
    """faust's `AIOKafkaConsumerThread._fetch_records` with fix 3."""
    if not self.consumer.flow_active:
        return {}
    fetcher = consumer._fetcher
    if consumer._closed or fetcher._closed:
        raise ConsumerStoppedError()
    active = None
    if active_partitions is not None:
        active = set(active_partitions)  # snapshot: the event loop thread mutates it
        _mirror_pause_state(consumer, active)
        if not active:
            # An empty set would mean "every partition" to aiokafka.
            return {}
    with fetcher._subscriptions.fetch_context():
        return await fetcher.fetched_records(active, timeout=timeout, max_records=max_records)


class RewindAwareReadOffsets(defaultdict[Any, int | None]):
    """faust's `Consumer._read_offset` (tp -> last offset handed on), which
    ignores the drain loop's updates while a rewind awaits its record (fix 4)."""

    def __init__(self) -> None:
        super().__init__(lambda: None)
        self.awaiting: dict[Any, int] = {}

    def rewind(self, tp: Any, offset: int) -> None:
        self.awaiting[tp] = offset
        super().__setitem__(tp, offset - 1 if offset > 0 else None)

    def forget(self, tp: Any) -> None:
        self.awaiting.pop(tp, None)

    def __getitem__(self, tp: Any) -> int | None:
        if tp in self.awaiting:
            # Let every record through until the awaited one: stale records
            # below it must still reach the agent, or faust never acks them
            # and its committed offset sticks below the hole for good.
            return None
        return super().__getitem__(tp)

    def __setitem__(self, tp: Any, value: int | None) -> None:
        awaited = self.awaiting.get(tp)
        if awaited is not None:
            if value != awaited:
                return  # a record fetched before the rewind
            del self.awaiting[tp]
        super().__setitem__(tp, value)

    def __delitem__(self, tp: Any) -> None:
        self.awaiting.pop(tp, None)
        super().__delitem__(tp)

    def pop(self, tp: Any, *default: Any) -> Any:
        self.awaiting.pop(tp, None)
        return super().pop(tp, *default)


_original_consumer_init = faust_consumer.Consumer.__init__


def _consumer_init_with_rewind_aware_offsets(self: Any, *args: Any, **kwargs: Any) -> None:
    """faust's `Consumer.__init__`, then fix 4's read offsets."""
    _original_consumer_init(self, *args, **kwargs)
    self._read_offset = RewindAwareReadOffsets()


_original_consumer_seek = faust_consumer.Consumer.seek


async def _seek_forgetting_rewinds(self: Any, partition: Any, offset: int) -> None:
    """faust's `Consumer.seek`; a seek of faust's own supersedes our rewind."""
    read_offsets = self._read_offset
    if isinstance(read_offsets, RewindAwareReadOffsets):
        read_offsets.forget(partition)
    await _original_consumer_seek(self, partition, offset)


# (topic, partition) -> the offset a new owner must fetch from, as the
# agent's processor last stored it (fix 5). Only input topics appear here.
commit_positions: dict[Any, int] = {}
input_topic_names: set[str] = set()
# What the broker was last sent, so the timer commits only what moved.
_last_sent: dict[Any, int] = {}


def forget_positions(tps: Any) -> None:
    for tp in tps:
        commit_positions.pop(tp, None)
        _last_sent.pop(tp, None)


def _offsets_to_send(offsets: Mapping[Any, int], assignment: Any) -> dict[Any, int]:
    """faust's offsets for other topics; ours for every assigned input partition."""
    send = {tp: o for tp, o in offsets.items() if tp.topic not in input_topic_names}
    for tp, position in commit_positions.items():
        if tp in assignment:
            send[tp] = position
    return send


async def _send(consumer: Any, offsets: dict[Any, int]) -> bool:
    done = bool(await consumer._thread.commit(offsets))
    if done:
        _last_sent.update(offsets)
    return done


async def _commit_processor_positions(self: Any, offsets: Mapping[Any, int]) -> bool:
    """`ThreadDelegateConsumer._commit` with fix 5."""
    send = _offsets_to_send(offsets, self.assignment())
    return bool(send) and await _send(self, send)


async def commit_moved_positions(app: Any) -> int:
    """Commit the processor's positions that moved since the last commit.

    faust commits only when its agents acked something new it can commit,
    and after a rewind its acked list can stop yielding anything for good;
    the worker calls this on a timer so the group's offsets always catch up
    with the table. Returns how many partitions were committed.
    """
    if app.rebalancing or app.in_recovery:
        return 0
    assignment = app.consumer.assignment()
    send = {
        tp: position
        for tp, position in commit_positions.items()
        if tp in assignment and _last_sent.get(tp) != position
    }
    if not send:
        return 0
    await app.producer.flush()  # the changelog holds the table before the group moves
    return len(send) if await _send(app.consumer, send) else 0


_PATCHES = (
    (faust_consumer.Consumer, "__init__", _consumer_init_with_rewind_aware_offsets),
    (faust_consumer.Consumer, "seek", _seek_forgetting_rewinds),
    (faust_consumer.ThreadDelegateConsumer, "_commit", _commit_processor_positions),
    (
        faust_aiokafka.AIOKafkaConsumerThread,
        "seek_to_committed",
        _seek_to_committed_then_rewind_uncommitted,
    ),
    (faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records", _fetch_records_of_active_partitions),
    (faust_recovery.Recovery, "_resume_streams", _resume_streams_after_seeking),
)


def install() -> None:
    """Apply the fixes once; fail loudly if faust changed shape."""
    global _INSTALLED
    if _INSTALLED:
        return
    for owner, name, replacement in _PATCHES:
        if not callable(getattr(owner, name, None)):
            raise RuntimeError(
                f"faust's {owner.__name__} has no {name}: re-check streams/faust_fixes.py "
                "against the installed faust-streaming"
            )
        setattr(owner, name, replacement)
    _INSTALLED = True


async def rewind(consumer: Any, tp: Any, offset: int) -> None:
    """Fetch `tp` again from `offset` (the processor found it skipped, or held
    it before a restart).

    Seeks aiokafka directly (faust's `seek` would set the read offset to
    `offset` and forget the mark), then lets the read offsets await the record
    at `offset` (fix 4).
    """
    await consumer._seek(tp, offset)
    read_offsets = consumer._read_offset
    if not isinstance(read_offsets, RewindAwareReadOffsets):
        raise RuntimeError("streams.faust_fixes.install() must run before the consumer is created")
    read_offsets.rewind(tp, offset)
    log.warning("rewound %s[%d] to offset %d", tp.topic, tp.partition, offset)
