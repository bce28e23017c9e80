"""The worker: each fetch of the inputs -> decode, load, decide, evolve, store, emit.

faust's consumer hands the `Worker` every fetch of the four co-partitioned
input topics and the buckets' budget-grants topic at once
(`streams.kafka.transport`, batch delivery): no faust Event, stream queue
or ack per message. For each partition of a fetch the pure
`streams.processor.process_batch` decides everything, and this shell:

1. writes the redo record (the whole batch as one changelog record), the
   changed users and the partition record: changelog records through
   librdkafka, one RocksDB write batch (`PartitionStateStore`);
2. sends the outputs through the same producer;
3. takes the next fetch while librdkafka delivers; before the steps of a
   fetch that comes SETTLE_SECONDS after the oldest batch not acknowledged
   (or finds a partition's redo slots used, or the group rebalancing), or
   once no fetch has come for SETTLE_SECONDS, waits until the brokers have
   every record sent so far (`settle`);
4. only then records the batches' positions for the group's commits and
   the changelog offsets as the local copy's recovery point;
5. rewinds the consumer where the processor found skipped offsets.

After a crash the redo records of the last batches (each in its own slot)
are re-applied and their outputs re-sent when the partition is next
loaded, so every accepted input has its effect
exactly once in the state and at least once (same ids, same bytes) in the
output topics.

Runtime state (partition caches, idle waits, the freeze watch) lives on the
Worker, built from `Settings`; a restart rebuilds it from the table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from faust.types import TP

from app.catalog import Catalog
from app.state import UserState
from streams.config import (
    BUDGET_REQUESTS,
    DEAD_LETTERS,
    INPUT_TOPICS,
    LATE_INPUTS,
    REWARDS,
    TASK_EVENTS,
    Settings,
)
from streams.freeze import FreezeWatch
from streams.kafka.producer import BatchProducer
from streams.kafka.transport import Consumer, fetched_before_a_rebalance, skip_fetch
from streams.monitor.metrics import WorkerMetrics
from streams.partition_state import (
    REDO_SLOTS,
    USER_PREFIX,
    Output,
    PartitionRecord,
    Redo,
    decode_partition,
    decode_user,
    encode_redo,
    last_batch_again,
    next_deadline_of_record,
    partition_key,
    redo_batches,
    redo_key,
    user_key,
)
from streams.processor import (
    BatchResult,
    InMessage,
    PartitionCache,
    process_batch,
    rebuild_deadlines,
    writes_for,
)
from streams.worker.lost_fetches import LostFetchWatch
from streams.worker.state_store import PartitionStateStore, deliver, step_each
from streams.worker.wakeup import Wakeup

log = logging.getLogger("taskstream.worker")

# An input partition stops being fetched while the partition's buffer holds
# this many of its events (Kafka Streams' buffered.records.per.partition),
# and is fetched again below half of it. In a backlog one input is often far
# ahead of another in event time; without this its events pile up in memory
# until the other catches up (RSS 772 MiB on the peer benchmark's log).
BUFFER_PER_INPUT = 1000
# How long an input partition's waiting messages may go without reaching the
# processor before it fetches them again (streams/worker/lost_fetches.py):
# well above a batch or a budget round trip, well below any test's patience.
LOST_FETCH_SECONDS = 10.0
# How long a batch's records may go unacknowledged while later fetches are
# processed (`Worker.settle`). Its inputs are committed only after, so this
# delays commits, never outputs (librdkafka sends them within linger.ms).
SETTLE_SECONDS = 0.05
# The timer loop's shortest sleep (a due time already past, but held: a
# freeze, a rebalance) and its longest (nothing due: it notices the app
# stopping at least this often).
LOOK_AT_LEAST_SECONDS = 0.01
LOOK_AT_MOST_SECONDS = 1.0

# aiokafka's ConsumerRecord.timestamp_type of a topic that stamps append times.
LOG_APPEND_TIME = 1


class Worker:
    """The processor's shell; faust's consumer calls `on_records` per fetch."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        store: PartitionStateStore,
        producer: BatchProducer,
        catalog: Callable[[], Catalog],
        role_of_topic: Mapping[str, str],
        metrics: WorkerMetrics,
    ) -> None:
        self.app = app
        self.settings = settings
        self.store = store
        self.producer = producer
        self.metrics = metrics
        self._catalog = catalog
        self.role_of_topic = dict(role_of_topic)
        self.topics = frozenset(role_of_topic)
        self.output_topics = {role: settings.topic(role) for role in _OUTPUT_ROLES}
        self.max_idle = settings.max_idle_ms / 1000
        # Per partition, derived and rebuilt on load; dropped when it moves.
        self.caches: dict[int, PartitionCache] = {}
        # Partition -> the time (time.time()) the idle timer should run it: its
        # buffer head waits out TASKSTREAM_MAX_IDLE_MS. A restart fetches the
        # held events again and re-waits.
        self.idle_due: dict[int, float] = {}
        # Input partitions whose waiting messages never reach the processor.
        self.lost_fetches: LostFetchWatch[TP] = LostFetchWatch(quiet_for=LOST_FETCH_SECONDS)
        # Fetches and idle releases take turns: both run partition steps.
        self.lock = asyncio.Lock()
        # Batches whose records the brokers have not acknowledged yet (the
        # next fetch is taken meanwhile; `settle` waits), since when, and how
        # many redo slots each partition's hold.
        self.unsettled: list[tuple[int, BatchResult]] = []
        self.unsettled_since = 0.0
        self.last_unsettled_at = 0.0
        self.unsettled_slots: dict[int, int] = {}
        # Set when a batch leaves something due later (an idle wait, batches
        # to settle): wakes the timer loop (`next_look`).
        self.due_changed = Wakeup()
        # A frozen worker (SIGSTOP, a suspended host) must not process its
        # stale buffer before its consumer knows whether it still owns its
        # partitions (streams/freeze.py): two heartbeats, then a fresh fetch.
        heartbeat = max(1, settings.session_timeout // 5)
        self.freeze_watch = FreezeWatch(
            freeze_after=max(1.0, settings.session_timeout / 2),
            hold_for=2 * heartbeat + 1.0 + self.max_idle,
        )

    @property
    def consumer(self) -> Consumer:
        consumer: Consumer = self.app.consumer
        return consumer

    @property
    def held_back(self) -> set[TP]:
        """Input partitions not fetched for now (BUFFER_PER_INPUT): the
        consumer's record of its `hold_back`s, which it also needs."""
        return self.consumer.held_back

    # ----------------------------------------------------------- the sink

    async def on_records(self, records: Mapping[TP, Sequence[Any]], generation: int) -> None:
        await self.wait_out_a_freeze()
        async with self.lock:
            if fetched_before_a_rebalance(self.app, generation):
                # Skipping is safe: the processor fetches again any offset it
                # never accepted.
                stale = skip_fetch(self.consumer, records)
                self.metrics.observe_stale(stale)
                log.info("skipped %d message(s) fetched before the last rebalance", stale)
                return
            by_partition: dict[int, list[InMessage]] = {}
            role_of_topic = self.role_of_topic
            for tp, tp_records in records.items():
                role, topic, partition = role_of_topic[tp.topic], tp.topic, tp.partition
                # Each record's append time by the broker (seconds), if its
                # topic stamps them: the idle wait counts from it
                # (streams.processor). Inline, not a call per record: this
                # loop runs for every message fetched.
                by_partition.setdefault(partition, []).extend(
                    [
                        InMessage(
                            role,
                            topic,
                            partition,
                            r.offset,
                            r.key,
                            r.value,
                            r.timestamp / 1000.0
                            if r.timestamp_type == LOG_APPEND_TIME and r.timestamp is not None
                            else None,
                        )
                        for r in tp_records
                    ]
                )
            try:
                await self._run(by_partition)
            finally:
                if by_partition:
                    # The timer loop's next look may be sooner now (also if
                    # a later partition's step failed). Only a fetch wakes
                    # it: its own runs are followed by a look at the due
                    # times anyway, and a partition asking to be looked at
                    # again "after the next fetch" (`idle_until` = now) woke
                    # it at once, again and again, without the event loop
                    # ever running the fetch it waited for (seen in the
                    # fault suite under load).
                    self.due_changed.set()

    async def drain(self) -> None:
        async with self.lock:
            await self.settle()  # before a revoke: nothing of ours left unacknowledged

    # ------------------------------------------------------- the idle wait

    async def release_idle_waits(self) -> None:
        """Run partitions whose buffered events have waited out the idle wait
        and got no new message since (a fetch would release them otherwise)."""
        if not self.idle_due or self.app.rebalancing or self.app.in_recovery:
            return
        if self.check_for_freeze() > 0:
            return
        now = time.time()
        async with self.lock:
            if self.app.rebalancing or self.app.in_recovery:
                return
            due = [p for p, at in self.idle_due.items() if at <= now]
            for partition in due:
                if partition not in self.caches:
                    del self.idle_due[partition]  # moved away, or reloaded: a fetch will come
            runs: dict[int, list[InMessage]] = {p: [] for p in due if p in self.caches}
            if runs:
                await self._run(runs)

    def seconds_to_next_look(self) -> float | None:
        """How long until the earliest idle wait ends or the unsettled
        batches are due to settle (`settle_if_due`); None: neither."""
        delays = []
        if self.idle_due:
            delays.append(min(self.idle_due.values()) - time.time())
        settle_at = self._settle_due_at()
        if settle_at is not None:
            delays.append(settle_at - time.monotonic())
        return min(delays) if delays else None

    async def timer_round(self) -> None:
        """One round of the timer loop (streams/agents.py): sleep until
        something is due, release the idle waits that ended, settle."""
        await self.next_look()
        if self.app.should_stop:  # faust closes the tables next: touch nothing
            return
        await self.release_idle_waits()
        await self.settle_if_due()

    async def next_look(self) -> None:
        """Sleep until the timer loop has something to look at: an idle wait
        or a settle due (at the earliest in LOOK_AT_LEAST_SECONDS, so a due
        time held back by a freeze or a rebalance is not looked at in a busy
        loop), a batch that set a new one, or LOOK_AT_MOST_SECONDS."""
        delay = self.seconds_to_next_look()
        if delay is None:
            delay = LOOK_AT_MOST_SECONDS
        await self.due_changed.wait(min(max(delay, LOOK_AT_LEAST_SECONDS), LOOK_AT_MOST_SECONDS))

    # ------------------------------------------------- lost fetches

    async def refetch_lost_inputs(self) -> None:
        """Fetch again input partitions whose waiting messages have not
        reached the processor for a while (streams/worker/lost_fetches.py)."""
        if self._busy_elsewhere():
            return
        async with self.lock:
            if self._busy_elsewhere():
                return
            rewound = await self.consumer.refetch_skipped(self._awaited_offsets())
            if rewound:
                log.info("fetching again %d partition(s) skipped in the last rebalance", rewound)
            next_offsets, highwaters = self._input_positions()
            due = self.lost_fetches.due(
                time.monotonic(), next_offsets, highwaters, exempt=self.held_back
            )
            for tp, offset in due:
                waiting = (highwaters[tp] or 0) - offset
                self.metrics.observe_refetch()
                log.warning(
                    "%s[%d]: %d message(s) from offset %d have waited %.0f s without reaching "
                    "the processor (a fetch lost in a rebalance?); fetching them again",
                    tp.topic,
                    tp.partition,
                    waiting,
                    offset,
                    self.lost_fetches.quiet_for,
                )
                await self.consumer.rewind(tp, offset)

    def _awaited_offsets(self) -> dict[TP, int]:
        """Per input partition, the earliest offset the processor still needs
        fetched again: a rewind's awaited offset, or the oldest event held
        before the partition was loaded and not fetched back yet."""
        topic = self.settings.topic
        awaited: dict[TP, int] = {}
        for partition, cache in self.caches.items():
            for role, offset in cache.rewinding.items():
                awaited[TP(topic(role), partition)] = offset
            for role, offsets in cache.refetch.items():
                if offsets:
                    tp = TP(topic(role), partition)
                    awaited[tp] = min(min(offsets), awaited.get(tp, min(offsets)))
        return awaited

    def _busy_elsewhere(self) -> bool:
        app = self.app
        return bool(app.rebalancing or app.in_recovery or self.check_for_freeze() > 0)

    def _input_positions(self) -> tuple[dict[TP, int], dict[TP, int | None]]:
        """Per assigned input partition: where the processor expects its next
        message (an awaited rewind or a held event still to come back first),
        and the high watermark."""
        consumer = self.consumer
        next_offsets: dict[TP, int] = {}
        highwaters: dict[TP, int | None] = {}
        records: dict[int, PartitionRecord] = {}
        for tp in consumer.assignment():
            role = self.role_of_topic.get(tp.topic)
            if role is None:
                continue
            cache = self.caches.get(tp.partition)
            record = records.get(tp.partition)
            if record is None:
                record = cache.record if cache is not None else None
                if record is None:
                    record = self._read_record(tp.partition)
                    self.metrics.observe_stored_record(tp.partition, record)
                records[tp.partition] = record
            offset = record.next_offset.get(role)
            awaited = cache.rewinding.get(role) if cache is not None else None
            refetch = cache.refetch.get(role) if cache is not None else None
            if refetch:  # held before the load, not fetched back yet: never skip them
                awaited = min(refetch) if awaited is None else min(awaited, min(refetch))
            if awaited is not None:
                offset = awaited if offset is None else min(offset, awaited)
            if offset is None:
                continue  # never processed here: the group's committed offset decides
            next_offsets[tp] = offset
            highwaters[tp] = consumer.highwater(tp)
        return next_offsets, highwaters

    # ------------------------------------------------------------ freezing

    def check_for_freeze(self) -> float:
        """Seconds to hold processing back now (0: go on)."""
        now = time.monotonic()
        frozen_for = self.freeze_watch.beat(now)
        if frozen_for is not None:
            self.metrics.observe_freeze()
            log.warning(
                "this worker was frozen for %.1f s (SIGSTOP? a suspended host?): it processes "
                "nothing for %.1f s, until its consumer knows whether it still owns its partitions",
                frozen_for,
                self.freeze_watch.hold_for,
            )
        return self.freeze_watch.hold(now)

    async def wait_out_a_freeze(self) -> None:
        hold = self.check_for_freeze()
        if hold > 0:
            await asyncio.sleep(hold)

    # -------------------------------------------------------- the batches

    async def _run(self, by_partition: Mapping[int, list[InMessage]]) -> None:
        """Settle earlier batches if due, then each partition's step.

        The wait comes before the steps, not after: it then covers the
        records of earlier fetches, which librdkafka delivered while this
        fetch came in (measured on the peer log: 51 waits of ~25 ms and up
        to 575 ms when the wait also covered the batch just sent, 20 % of a
        backlog run)."""
        if self._settle_due(by_partition):
            await self.settle()

        async def step(partition: int) -> BatchResult:
            return await self._step(partition, by_partition[partition])

        done = await step_each(by_partition, step, self.forget)
        if not done:
            return
        now = time.monotonic()
        if not self.unsettled:
            self.unsettled_since = now
        if any(self._changed(result) for _, result in done):
            # Only a step that changed something puts the timer's settle
            # off: a partition looked at again every 10 ms while its head
            # waits for the next fetch kept putting it off. A step that
            # changed nothing is still settled: its input positions (all
            # redeliveries after a new owner took over, say) are what the
            # group's commits need.
            self.last_unsettled_at = now
        self.unsettled.extend(done)

    def _settle_due(self, partitions: Iterable[int]) -> bool:
        """Before a step: SETTLE_SECONDS passed since the oldest batch not
        acknowledged, a partition about to step holds REDO_SLOTS - 1 redo
        slots (its next batch needs a free one, and one stays spare), or
        the group rebalances."""
        if not self.unsettled:
            return False
        slots = self.unsettled_slots
        return (
            time.monotonic() - self.unsettled_since >= SETTLE_SECONDS
            or any(slots.get(partition, 0) >= REDO_SLOTS - 1 for partition in partitions)
            or bool(self.app.rebalancing)
        )

    def _settle_due_at(self) -> float | None:
        """When (monotonic) the timer settles the unsettled batches: once no
        fetch has come for SETTLE_SECONDS after the last of them; None:
        nothing to settle."""
        return self.last_unsettled_at + SETTLE_SECONDS if self.unsettled else None

    async def settle_if_due(self) -> None:
        """The timer's part: settle batches once no fetch has come for
        SETTLE_SECONDS (a fetch would settle them before its steps)."""
        settle_at = self._settle_due_at()
        if settle_at is None or time.monotonic() < settle_at:
            return
        async with self.lock:
            if not self.unsettled:
                return
            try:
                await self.settle()
            except Exception:  # the partitions are forgotten: reloaded and re-sent on next use
                log.exception("delivery failed; the batches' partitions will be written again")

    async def settle(self) -> None:
        """Wait until the brokers have every record sent, then record the
        batches' input positions for the group's commits (never before: a
        commit must not pass an input whose effects could still be lost)
        and act on their rewinds and back pressure. Why not at each fetch:
        live, the wait was half of the worker's time (BENCHMARKS.md
        "stream"), while librdkafka delivers in its own threads anyway."""
        if not self.unsettled:
            return
        batches, self.unsettled = self.unsettled, []
        self.unsettled_slots.clear()
        await deliver(self.producer, self.store, self.forget, {p for p, _ in batches})
        positions = self.consumer.commit_positions
        for partition, result in batches:
            for role, position in result.record.fetch_positions().items():
                positions.record(TP(self.settings.topic(role), partition), position)
            for role, offset in result.rewinds.items():
                await self.consumer.rewind(TP(self.settings.topic(role), partition), offset)
            self._hold_back_or_let_go(partition)

    def _hold_back_or_let_go(self, partition: int) -> None:
        """Back pressure: an input whose events wait in the buffer is not
        fetched further until they go. Its waiting events are all later than
        the buffer's head (which is the earliest), so holding it back never
        holds the head; one still to be fetched again after a restart or a
        rewind is never held back."""
        cache = self.caches.get(partition)
        if cache is None:
            return
        hold, let_go = set(), set()
        for role in INPUT_TOPICS:
            tp = TP(self.settings.topic(role), partition)
            waiting = len(cache.held.get(role, ()))
            if tp in self.held_back:
                if waiting <= BUFFER_PER_INPUT // 2:
                    let_go.add(tp)
            elif (
                waiting >= BUFFER_PER_INPUT
                and not cache.refetch.get(role)
                and role not in cache.rewinding
            ):
                hold.add(tp)
        if hold:
            self.consumer.hold_back(hold)
        if let_go:
            self.consumer.let_go(let_go)

    async def _step(self, partition: int, messages: list[InMessage]) -> BatchResult:
        cache = self.caches.get(partition)
        if cache is None:
            cache = self._load(partition)
        started = time.perf_counter()
        record = cache.record if cache.record is not None else self._read_record(partition)
        if not cache.loaded:
            for role, offset in cache.load(record).items():
                await self.consumer.rewind(TP(self.settings.topic(role), partition), offset)
            self.caches[partition] = cache
        highwater, highwater_seen = self._marks(partition)
        now = time.time()  # the scale of the brokers' append times
        result = process_batch(
            record,
            messages,
            catalog=self._catalog(),
            partitions=self.settings.partitions,
            load_user=lambda user_id: self._load_user(partition, user_id),
            cache=cache,
            highwater=highwater,
            highwater_seen=highwater_seen,
            max_pending=self.settings.max_pending,
            now=now,
            max_idle=self.max_idle,
        )
        if result.idle_until is None:
            self.idle_due.pop(partition, None)
        else:
            self.idle_due[partition] = result.idle_until
        if self._changed(result):
            self._write(partition, result)
            cache.record = result.record
        for note in result.notes:
            log.warning("partition %d: %s", partition, note)
        self.metrics.observe_batch(partition, result, time.perf_counter() - started)
        return result

    @staticmethod
    def _changed(result: BatchResult) -> bool:
        stats = result.stats
        # Only redeliveries or messages dropped for a rewind: nothing to write.
        return bool(stats.accepted or stats.applied or result.outputs or result.rewinds)

    def _write(self, partition: int, result: BatchResult) -> None:
        """The redo record first, then the users and the partition record,
        then the outputs (all handed to the producer; awaited in `_run`)."""
        writes = writes_for(result)
        seq = result.record.seq
        redo = encode_redo(Redo(seq, tuple(writes), result.outputs))
        self.store.write(partition, [(redo_key(partition, seq % REDO_SLOTS), redo), *writes])
        self.unsettled_slots[partition] = self.unsettled_slots.get(partition, 0) + 1
        self._send(result.outputs)

    def _send(self, outputs: Iterable[Output]) -> None:
        self.producer.send_outputs(outputs, self.output_topics)

    # ------------------------------------------------------------ loading

    def _load(self, partition: int) -> PartitionCache:
        """After an assignment or a failed batch: write the last batches again
        (`last_batch_again`, oldest first: each may be unacknowledged), and
        rebuild the tick index from the users stored here."""
        started = time.monotonic()
        stored_seq = self._read_record(partition).seq
        for key, raw_redo, redo in redo_batches(lambda k: self.store.get(partition, k), partition):
            if redo.seq > stored_seq:
                log.warning(
                    "partition %d: batch %d was cut short by a crash; re-applying its %d write(s)",
                    partition,
                    redo.seq,
                    len(redo.writes),
                )
            self.store.write(partition, last_batch_again(key, raw_redo, redo))
            self._send(redo.outputs)  # they may not have arrived
        deadlines = rebuild_deadlines(self._stored_deadlines(partition))
        log.info(
            "partition %d loaded: %d user(s) with a deadline, %.2f s",
            partition,
            len(deadlines),
            time.monotonic() - started,
        )
        return PartitionCache(deadlines=deadlines, users_max=self.settings.user_cache)

    def _stored_deadlines(self, partition: int) -> Iterable[tuple[str, int | None]]:
        for key, value in self.store.items_from(partition, USER_PREFIX):
            yield key[len(USER_PREFIX) :].decode(), next_deadline_of_record(value)

    def _read_record(self, partition: int) -> PartitionRecord:
        raw = self.store.get(partition, partition_key(partition))
        return PartitionRecord(partition) if raw is None else decode_partition(raw)

    def _load_user(self, partition: int, user_id: str) -> UserState | None:
        return decode_user(self.store.get(partition, user_key(user_id)))

    def _marks(self, partition: int) -> tuple[dict[str, int | None], dict[str, float | None]]:
        """Each input's high watermark and when the fetch that brought it
        was sent (this clock's scale), read as pairs (`Consumer.read_mark`:
        a mark read apart from its time could be paired with a later one).
        None until a fetch has reported one: the processor then holds
        events back.

        Never asks the broker from here: that goes through the consumer
        thread, which a rebalance can block while it waits for this batch."""
        consumer = self.consumer
        marks: dict[str, int | None] = {}
        seen: dict[str, float | None] = {}
        for role in INPUT_TOPICS:
            try:
                marks[role], seen[role] = consumer.read_mark(
                    TP(self.settings.topic(role), partition)
                )
            except Exception:  # not assigned (any more)
                marks[role] = seen[role] = None
        return marks, seen

    # ---------------------------------------------------------- rebalance

    def forget(self, partition: int) -> None:
        self.caches.pop(partition, None)
        self.idle_due.pop(partition, None)
        held_back = {tp for tp in self.held_back if tp.partition == partition}
        if held_back:
            self.consumer.let_go(held_back)

    def on_revoked(self, revoked: Iterable[TP]) -> None:
        revoked = list(revoked)
        for tp in revoked:
            if tp.topic in self.role_of_topic:
                self.forget(tp.partition)
        self.consumer.commit_positions.forget(revoked)


_OUTPUT_ROLES = (TASK_EVENTS, REWARDS, DEAD_LETTERS, BUDGET_REQUESTS, LATE_INPUTS)
