"""faust's aiokafka transport for this app: batch delivery and its repairs.

Registered as the `taskstream://` broker scheme (`register()`); the app's
broker URLs use it, so nothing else in the process changes. Each override
below names the faust code it replaces; tests/stream/test_kafka_transport.py
fails when the pinned faust or aiokafka changes under any of them.

Batch delivery
--------------
faust hands every fetched record to the conductor one at a time: a faust
Event, a stream queue hop and an ack per message, ~90 µs each on our
machines, more than the rest of the worker's work on an event. The
worker's inputs do not need any of it: the processor accepts messages by
offset against the offsets stored with its state and commits its own
positions (`streams.kafka.positions`). So `Consumer.getmany` hands the
records of the topics a `BatchSink` claims to the sink in one call per
fetch (a dict of partition -> records), and only the other topics' records
go the usual way (the leader topic). The sink runs in
faust's fetcher task: the next fetch waits until the batch is done (back
pressure), and a revoke waits for the batch in flight (`drain`).

Repairs (each found on a real broker; the symptom in the method's docstring)
-------
1. `ConsumerThread.seek_to_committed`: input partitions without a committed
   offset are reset to their beginning (aiokafka leaves them wherever the
   fetcher drifted).
2. `streams.kafka.recovery`: recovery seeks before it resumes the inputs.
3. `ConsumerThread._fetch_records`: only active partitions are fetched.
4. `Consumer._read_offset` is `RewindAwareReadOffsets`; `Consumer.seek`
   forgets our rewind.
5. `Consumer._commit`: the processor's positions for the input topics.
6. `Consumer._send_commit`: one commit in the consumer thread at a time, so
   a commit waiting for an unavailable coordinator cannot starve the fetches.
7. `streams.kafka.fair_fetch`: a fetch's records are handed out in turns
   over the partitions, not one partition's buffer after another.
8. `streams.kafka.watermark_stamps`: a partition's high watermark is
   stamped with when its fetch was sent, not when the response was handled
   (`ConsumerThread.on_start`).
9. `streams.kafka.fetch_sizes`: a fetch waits at the broker for 16 KiB or
   20 ms while records flow (aiokafka answers at the first byte), and as
   before once they stop.
10. `streams.kafka.follow_up`: a drain that hands out records also waits
   for the fetch sent at that drain, asked to answer at once, and hands out
   its records too: what was appended while the last batch ran, and marks
   read after the drained records arrived (`ConsumerThread.on_start`,
   `ConsumerThread._fetch_records`).
11. `streams.kafka.raw_records`: the sink's topics get aiokafka's parsed
   records (offset, timestamp, key, value, headers) without a
   `ConsumerRecord` made for each (`ConsumerThread.on_start`): a speed
   repair, ~1 µs of the consumer thread per record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

import aiokafka
import faust
from aiokafka.errors import ConsumerStoppedError
from faust.transport import drivers as faust_drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.kafka import fair_fetch, fetch_sizes, follow_up, raw_records, watermark_stamps
from streams.kafka.positions import CommitPositions
from streams.kafka.read_offsets import RewindAwareReadOffsets
from streams.kafka.recovery import Recovery

log = logging.getLogger(__name__)

SCHEME = "taskstream"


# How long a fetch waits for records at most while inputs are held back
# (`Consumer.hold_back`). faust's drain loop asks for up to 1 s, and a fetch
# asks only for the partitions active when it began: a `let_go` during it
# took effect only at the next one. Seen on the peer log: every orders
# partition held back at the first rewards, let go 70 ms later, then 1 s
# with nothing fetched (the fetch waited for the other inputs, read to their
# end), 1 of the run's ~7 s.
LET_GO_WITHIN_SECONDS = 0.05


class BatchSink(Protocol):
    """Takes the fetched records of some topics, a whole fetch at a time."""

    @property
    def topics(self) -> frozenset[str]: ...

    async def on_records(self, records: Mapping[TP, Sequence[Any]], generation: int) -> None:
        """aiokafka's records per partition (each with `offset`, `timestamp`,
        `timestamp_type`, `key`, `value`, `headers`: repair 11 hands out
        the parsed records, not ConsumerRecords), in offset order, fetched
        while the group was in `generation`."""

    async def drain(self) -> None:
        """Return once no batch is in flight (called before a revoke)."""


def fetched_before_a_rebalance(app: Any, generation: int) -> bool:
    """Whether a sink's fetch (or a retry scheduled) in `generation` may no
    longer be acted on: the group has moved to another generation, or is
    rebalancing or recovering now. Its partitions may be another worker's,
    or still recovering here."""
    return bool(app.rebalancing or app.in_recovery or generation != app.consumer_generation_id)


def skip_fetch(consumer: Any, records: Mapping[TP, Sequence[Any]]) -> int:
    """Leave a fetch unprocessed: each partition's first offset is noted as
    skipped, so it is fetched again once the rebalance is over
    (`Consumer.refetch_skipped`). Returns how many records were skipped."""
    skipped = 0
    for tp, tp_records in records.items():
        if tp_records:
            consumer.note_skipped(tp, tp_records[0].offset)
            skipped += len(tp_records)
    return skipped


class SinkGroup:
    """Several batch sinks as one: each takes its own topics' share of a
    fetch, in the order given (the worker and the pools' allocator share the
    consumer's fetches this way)."""

    def __init__(self, *sinks: BatchSink) -> None:
        self.sinks = sinks
        # Read for every partition of every fetch (`Consumer.getmany`).
        self.topics: frozenset[str] = frozenset().union(*(sink.topics for sink in sinks))

    async def on_records(self, records: Mapping[TP, Sequence[Any]], generation: int) -> None:
        for sink in self.sinks:
            topics = sink.topics
            share = {tp: batch for tp, batch in records.items() if tp.topic in topics}
            if share:
                await sink.on_records(share, generation)

    async def drain(self) -> None:
        for sink in self.sinks:
            await sink.drain()


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The thread that runs aiokafka's consumer, with repairs 1, 3, 8, 9, 10 and 11."""

    async def on_start(self) -> None:
        """Repairs 8, 10 and 11 on the fetcher, once faust has made and started
        aiokafka's consumer (its fetcher is made in `start`, and fetches
        nothing before the group assigns it partitions): the sink's records
        as parsed (11), marks stamped at send time (8), the follow-up fetch
        (10)."""
        await super().on_start()
        fetcher = self._ensure_consumer()._fetcher
        sink = self.consumer.batch_sink if isinstance(self.consumer, Consumer) else None
        if sink is not None:
            # Repair 11, first: the sink's buffers are made parsed-only
            # before the other wrappers learn that a response was handled.
            raw_records.install(fetcher, sink.topics)
        watermark_stamps.stamp_at_send(fetcher)
        follow_up.install(fetcher)  # repair 10

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start when it builds its fetcher; faust
        # passes constants (1 byte, 1,500 ms) and offers no setting for them.
        fetch_sizes.apply(consumer, fetch_sizes.QUIET)
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Repair 1. A worker restarted before its group committed some input
        partitions recovered its tables and then never processed the events
        waiting in them: faust drops the records of partitions it considers
        paused (aiokafka keeps fetching them, its position moves on), and
        aiokafka's `seek_to_committed` seeks only `if offset and offset > 0`.
        So every input partition whose committed offset is None or 0 is reset
        to its beginning, as `auto_offset_reset="earliest"` would on a fresh
        assignment; changelogs are left to faust's recovery."""
        consumer = self._ensure_consumer()
        changelogs = set(self.app.tables.changelog_topics)

        async def seek() -> Mapping[TP, int]:
            committed: Mapping[TP, int] = await consumer.seek_to_committed()
            uncommitted = [
                tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs
            ]
            if uncommitted:
                log.info(
                    "rewinding %d input partition(s) without a committed offset to their "
                    "beginning: %s",
                    len(uncommitted),
                    ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(uncommitted)),
                )
                await consumer.seek_to_beginning(*uncommitted)
            return committed

        result: Mapping[TP, int] = await self.call_thread(seek)
        return result

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP] | None,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        """Repair 3. faust passes its live set of active partitions (which the
        event loop thread mutates while this thread reads it) and drops the
        records of inactive partitions after aiokafka fetched them, moving
        aiokafka's position past records nobody saw. Here aiokafka's own pause
        state mirrors faust's set, from a snapshot, so inactive partitions are
        not fetched at all."""
        if not self.consumer.flow_active:
            return {}
        fetcher = consumer._fetcher
        if consumer._closed or fetcher._closed:
            raise ConsumerStoppedError()
        active = None
        if active_partitions is not None:
            active = set(active_partitions)
            _mirror_pause_state(consumer, active)
            if not active:
                return {}  # an empty set would mean "every partition" to aiokafka
        with fetcher._subscriptions.fetch_context():
            # Repair 7: the batch shared out in turns over the partitions.
            drained = await fair_fetch.fetched_records(fetcher, active, timeout, max_records)
            # Repair 10: with what was appended while the last batch ran.
            await follow_up.take_follow_up(fetcher, active, max_records, drained)
        # The next fetch request waits at the broker by whether records flow.
        fetch_sizes.apply(fetcher, fetch_sizes.sizes_after(bool(drained)))
        return drained


def _mirror_pause_state(consumer: Any, active: set[TP]) -> None:
    """Pause in aiokafka every assigned partition faust considers inactive,
    resume the active ones. Runs in the consumer thread."""
    paused = consumer.paused()
    to_pause = [tp for tp in consumer.assignment() if tp not in active and tp not in paused]
    to_resume = [tp for tp in paused if tp in active]
    if to_pause:
        consumer.pause(*to_pause)
    if to_resume:
        consumer.resume(*to_resume)


class Consumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with batch delivery and repairs 4, 5 and 6."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = RewindAwareReadOffsets()  # repair 4
        self.commit_positions = CommitPositions()  # repair 5
        self._skipped: dict[TP, int] = {}  # tp -> first offset skipped in a rebalance
        self._commit_lock = asyncio.Lock()  # held while a commit is in the thread (repair 6)
        # Paused by `hold_back`, not yet let go: the one record of it (the
        # worker reads it too), so a fetch knows to wait briefly.
        self.held_back: set[TP] = set()

    @property
    def batch_sink(self) -> BatchSink | None:
        """The app's sink (`BatchApp.batch_sink`), if it has one."""
        sink: BatchSink | None = getattr(self.app, "batch_sink", None)
        return sink

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def read_mark(self, tp: TP) -> tuple[int | None, float | None]:
        """`tp`'s high watermark and when (time.time(), seconds) the fetch
        that brought it was sent, read as one pair (repair 8): the broker
        read the mark after that. (None, None) before the first fetch.
        Raises if `tp` is not assigned (as aiokafka's `highwater` does)."""
        subscription = self._thread._ensure_consumer()._subscription
        if not subscription.is_assigned(tp):
            raise KeyError(f"{tp.topic}[{tp.partition}] is not assigned")
        state = subscription.subscription.assignment.state_value(tp)
        return watermark_stamps.read_mark(state)

    # ------------------------------------------------------ batch delivery

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """faust's `Consumer.getmany`, handing the sink's topics over whole."""
        sink = self.batch_sink
        if self.held_back:
            timeout = min(timeout, LET_GO_WITHIN_SECONDS)
        records, active = await self._wait_next_records(timeout)
        generation = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return
        if not self.flow_active:
            try:  # as faust does: the flow stopped during the fetch
                await self.perform_seek()
            except Exception as exc:
                log.warning("exception performing seek when flow not active %r", exc)
            return
        batched: dict[TP, list[Any]] = {}
        others: dict[TP, list[Any]] = {}
        recovery = getattr(self.app.tables, "recovery", None)
        bulk = recovery if isinstance(recovery, Recovery) else None
        for tp, tp_records in records.items():
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                continue
            if sink is not None and tp.topic in sink.topics:
                batched[tp] = tp_records
            elif bulk is not None and bulk.takes(tp):
                self._restore(tp, tp_records, bulk)
            else:
                others[tp] = tp_records
        if batched and sink is not None:
            await sink.on_records(batched, generation)
        if not others:
            return
        to_message = self._to_message
        for tp, record in self.scheduler.iterate(others):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                break
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            yield tp, to_message(tp, record)

    def _restore(self, tp: TP, records: list[Any], recovery: Recovery) -> None:
        """A changelog fetch to the recovery in one call (`Recovery.restore`),
        past the records faust's drain loop would drop (below the read
        offset), and the read offset moved as the drain loop moves it."""
        read_offset = self._read_offset.get(tp)
        if read_offset is not None and records and records[0].offset < read_offset:
            records = [r for r in records if r.offset >= read_offset]
        if records:
            recovery.restore(tp, records)
            self._read_offset[tp] = records[-1].offset
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.held_back -= revoked
        if self.batch_sink is not None:
            await self.batch_sink.drain()  # no batch writes a partition being revoked
        await super().on_partitions_revoked(revoked)

    # ---------------------------------------------- skipped in a rebalance

    def note_skipped(self, tp: TP, offset: int) -> None:
        """Records of `tp` from `offset` on were fetched but not processed:
        they arrived while the group rebalanced (`refetch_skipped`)."""
        earlier = self._skipped.get(tp)
        self._skipped[tp] = offset if earlier is None else min(earlier, offset)

    async def refetch_skipped(self, awaited: Mapping[TP, int] | None = None) -> int:
        """Fetch again, once the rebalance is over, what was skipped during it
        in partitions still assigned here. faust seeks every partition to its
        committed offset near the end of a rebalance, but a fetch can still
        complete after that seek and before the rebalance ends: skipping its
        records moved aiokafka's position past them, and with no later
        message in that partition no batch runs there: what was never
        processed is never fetched again, and what was (before the
        rebalance) never has its position committed (seen in the pools
        test: 3 partitions' committed offsets stuck for minutes).

        `awaited`: offsets the processor still waits for (a partition loaded
        after the rebalance is fetched again from its oldest held event).
        Such a partition is fetched again from the earlier of the two: a
        rewind to the skipped offset alone moved the fetch past the held
        events, the processor dropped everything while it waited for the
        first of them, and the partition held its buffer for good (the
        third-worker test, one event per batch). Returns how many
        partitions were rewound."""
        if not self._skipped or self.app.rebalancing or self.app.in_recovery:
            return 0
        skipped, self._skipped = self._skipped, {}
        assigned = self.assignment()
        waits = awaited or {}
        again = {
            tp: min(offset, waits.get(tp, offset))
            for tp, offset in skipped.items()
            if tp in assigned
        }
        for tp, offset in sorted(again.items()):
            await self.rewind(tp, offset)
        return len(again)

    # -------------------------------------------------------- back pressure

    def hold_back(self, tps: set[TP]) -> None:
        """Stop fetching these partitions (their records wait in the worker's
        buffer for another input); `let_go` fetches them again."""
        self.pause_partitions(tps)
        self.held_back |= tps

    def let_go(self, tps: set[TP]) -> None:
        assigned = self.assignment()
        self.resume_partitions({tp for tp in tps if tp in assigned})
        self._paused_partitions.difference_update(tps)  # revoked meanwhile: forgotten
        self.held_back -= tps

    # ------------------------------------------------------------ repair 4

    async def seek(self, partition: TP, offset: int) -> None:
        """faust's `Consumer.seek`; a seek of faust's own supersedes our rewind."""
        read_offsets = self._read_offset
        if isinstance(read_offsets, RewindAwareReadOffsets):
            read_offsets.forget(partition)
        await super().seek(partition, offset)

    async def rewind(self, tp: TP, offset: int) -> None:
        """Fetch `tp` again from `offset` (the processor found it skipped, or
        held it before a restart). Seeks aiokafka directly (faust's `seek`
        would set the read offset to `offset` and forget the mark), then lets
        the read offsets await the record at `offset`."""
        await self._seek(tp, offset)
        read_offsets = self._read_offset
        assert isinstance(read_offsets, RewindAwareReadOffsets)  # set in __init__
        read_offsets.rewind(tp, offset)
        log.warning("rewound %s[%d] to offset %d", tp.topic, tp.partition, offset)

    # ------------------------------------------------------------ repair 5

    async def _commit(self, offsets: Mapping[Any, int]) -> bool:
        """`ThreadDelegateConsumer._commit`, sending the processor's positions
        for the input topics (`streams.kafka.positions`)."""
        owned: frozenset[str] = getattr(self.app, "own_positions", frozenset())
        send = self.commit_positions.to_send(offsets, self.assignment(), owned)
        return bool(send) and await self._send_commit(send)

    async def commit_moved_positions(self) -> int:
        """Commit the processor's positions that moved since the last commit.

        faust commits only when its agents acked something new, which the
        batch-delivered inputs never are: the worker calls this on a timer so
        the group's offsets always catch up with the table. Returns how many
        partitions were committed."""
        if self.app.rebalancing or self.app.in_recovery:
            return 0
        send = self.commit_positions.moved(self.assignment())
        if not send:
            return 0
        return len(send) if await self._send_commit(send) else 0

    async def _send_commit(self, offsets: dict[Any, int]) -> bool:
        """Repair 6: one commit in the consumer thread at a time. Every call
        into that thread (fetches included) waits for one of its method
        queue's two workers (mode's MethodQueue), and aiokafka's commit waits
        without a time limit for a coordinator that can take it. With two of
        three brokers gone (the offsets topic short of min.insync.replicas)
        faust's commit timer and ours each held a worker, and the fetches
        starved: the worker read nothing, so it never reached the writes
        that say why it waits. A commit asked for while one is in flight is
        skipped (its positions stay due and go with the next one), except
        the last ones, before partitions are revoked or the worker stops:
        those wait their turn on this loop, holding no thread worker."""
        lock = self._commit_lock
        if lock.locked() and not (self.app.rebalancing or self.should_stop):
            return False
        async with lock:
            done = bool(await self._thread.commit(offsets))
        if done:
            self.commit_positions.sent(offsets)
        return done


class BatchApp(faust.App):
    """A faust App whose consumer hands some topics to `batch_sink`. Set the
    sink before the worker starts (its module does, at import)."""

    batch_sink: BatchSink | None = None
    # Topics whose committed offsets are the processors' own positions
    # (`Consumer.commit_positions`, repair 5), never faust's acked offsets.
    own_positions: frozenset[str] = frozenset()


class Transport(faust_aiokafka.Transport):
    """faust's aiokafka transport with this app's consumer."""

    Consumer = Consumer


def register() -> str:
    """Make `taskstream://` this transport in faust's registry; returns the
    scheme for the app's broker URLs."""
    faust_drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
    return SCHEME
