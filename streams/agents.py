"""The agent: decode -> load -> decide/evolve -> store -> emit, a batch at a time.

One agent (concurrency 1) reads the four co-partitioned input topics and
the buckets' budget messages (budget-grants, docs/bucketing.md). Each
batch faust hands it is split by partition; for each partition the pure
`streams.processor.process_batch` decides everything, and this shell:

1. writes the redo record (the whole batch as one changelog message),
2. writes the users and the partition record (one write per key per batch),
3. sends the outputs and waits until the broker has them,
4. rewinds the consumer where the processor found skipped offsets.

Only then does faust ack the batch's messages. After a crash the redo record
is re-applied and its outputs re-sent when the partition is next loaded, so
every accepted input has its effect exactly once in the state and at least
once (same ids, same bytes) in the output topics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from typing import Any, cast

import faust
from faust.types import TP

from app.state import UserState
from streams import faust_fixes, metrics, table_commit
from streams.app import (
    ROLE_OF_TOPIC,
    app,
    catalog_feed,
    inputs_channel,
    output_topics,
    settings,
    state,
)
from streams.config import INPUT_TOPICS
from streams.freeze import FreezeWatch
from streams.partition_state import (
    USER_PREFIX,
    PartitionRecord,
    decode_partition,
    decode_user,
    next_deadline_of_record,
    partition_key,
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

log = logging.getLogger("taskstream.worker")

# Per-partition caches (derived, rebuilt on load); dropped when a partition moves.
_caches: dict[int, PartitionCache] = {}
# Partitions whose buffer head waits out the idle wait (TASKSTREAM_MAX_IDLE_MS):
# partition -> the monotonic time the timer should run it, and an event of
# the partition (table reads and writes go to the current event's
# partition). Derived from the buffer: a restart fetches the held events
# again and re-waits.
_idle_due: dict[int, tuple[float, faust.EventT[bytes]]] = {}
# The timer runs a partition only once it has had no batch for this long:
# while messages flow, the next batch releases what is due (without it a
# live soak ran a timer step per partition nearly every tick, doubling the
# commits: 677 "timer overlapping" warnings in 9 minutes).
QUIET_BEFORE_TIMER = 0.1
# Batches and idle releases take turns: both run the same partition steps.
_steps = asyncio.Lock()
MAX_IDLE = settings.max_idle_ms / 1000

# A frozen worker (SIGSTOP, a suspended host) must not process its stale
# buffer before its consumer knows whether it still owns its partitions
# (streams/freeze.py): two heartbeats, then a fresh fetch and idle wait.
freeze_watch = FreezeWatch(
    freeze_after=max(1.0, settings.session_timeout / 2),
    hold_for=2 * max(1, settings.session_timeout // 5) + 1.0 + MAX_IDLE,
)


@app.timer(0.2)  # type: ignore[untyped-decorator]
async def beat() -> None:
    _check_for_freeze()


def _check_for_freeze() -> float:
    """Seconds to hold processing back now (0: go on)."""
    now = time.monotonic()
    frozen_for = freeze_watch.beat(now)
    if frozen_for is not None:
        metrics.observe_freeze()
        log.warning(
            "this worker was frozen for %.1f s (SIGSTOP? a suspended host?): it processes "
            "nothing for %.1f s, until its consumer knows whether it still owns its partitions",
            frozen_for,
            freeze_watch.hold_for,
        )
    return freeze_watch.hold(now)


async def _wait_out_a_freeze() -> None:
    hold = _check_for_freeze()
    if hold > 0:
        await asyncio.sleep(hold)


# Counters for the progress line.
totals = {
    "batches": 0,
    "accepted": 0,
    "applied": 0,
    "outputs": 0,
    "dead": 0,
    "redelivered": 0,
    "stale": 0,
    "stalls": 0,  # events that waited for a pool's master
    "budget_messages": 0,  # grants, refusals and recalls applied to buckets
}


@app.agent(inputs_channel, concurrency=1)
async def process_inputs(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
    """Every claim, order, refund and tick, in event-time order per partition."""
    await wait_for_catalog()
    # take_events is on faust's Stream, not on its StreamT interface.
    batches = cast(Any, stream).take_events(settings.batch_max, within=settings.batch_window)
    async for events in batches:
        await _wait_out_a_freeze()  # then run_batch skips events of an old generation
        async with _steps:
            await run_batch(events)
        yield None


async def wait_for_catalog() -> None:
    started = time.monotonic()
    while not await asyncio.to_thread(catalog_feed.wait_ready, 1.0):
        log.info("waiting for the templates topic (%.0f s)", time.monotonic() - started)


@app.task  # type: ignore[untyped-decorator]
async def start_catalog_feed() -> None:
    catalog_feed.start()


async def run_batch(events: Sequence[faust.EventT[bytes]]) -> None:
    by_partition: dict[int, list[faust.EventT[bytes]]] = {}
    stale = 0
    for event in events:
        if from_an_earlier_assignment(event):
            stale += 1
            continue
        by_partition.setdefault(event.message.partition, []).append(event)
    if stale:
        # Fetched before a rebalance and left in take_events' buffer: their
        # partition may now be another worker's or still recovering here.
        # Skipping is safe: the processor fetches any offset it never accepted
        # again (offset gap -> rewind) once the partition is processed.
        totals["stale"] += stale
        metrics.observe_stale(stale)
        log.info("skipped %d event(s) fetched before the last rebalance", stale)
    await table_commit.run_by_partition(by_partition, _run_partition, _forget)


@app.timer(0.05)  # type: ignore[untyped-decorator]
async def release_idle_waits() -> None:
    """Run partitions whose buffered events have waited out the idle wait
    and got no new message since (a batch would release them otherwise)."""
    if not _idle_due or app.rebalancing or app.in_recovery or _check_for_freeze() > 0:
        return  # (after a rebalance, revoked partitions were forgotten)
    now = time.monotonic()
    async with _steps:
        due = {p: [event] for p, (at, event) in _idle_due.items() if at <= now}
        for partition, (event,) in list(due.items()):
            if from_an_earlier_assignment(event) or partition not in _caches:
                _idle_due.pop(partition, None)  # moved away, or reloaded: a batch will come
                del due[partition]
        if due:
            await table_commit.run_by_partition(due, _release_only, _forget)


async def _release_only(
    partition: int, events: Sequence[faust.EventT[bytes]]
) -> list[Awaitable[Any]]:
    """A partition step with no new message: only the buffer's release."""
    return await _run_partition(partition, events, messages_too=False)


def _forget(partition: int) -> None:
    _caches.pop(partition, None)
    _idle_due.pop(partition, None)


async def _run_partition(
    partition: int, events: Sequence[faust.EventT[bytes]], messages_too: bool = True
) -> list[Awaitable[Any]]:
    cache = _caches.get(partition)
    deliveries: list[Awaitable[Any]] = []
    if cache is None:
        cache, deliveries = await _load_partition(partition)
    started = time.perf_counter()
    record = cache.record if cache.record is not None else _read_record(partition)
    if not cache.loaded:
        for role, offset in cache.load(record).items():
            await faust_fixes.rewind(app.consumer, TP(settings.topic(role), partition), offset)
        _caches[partition] = cache
    messages = [
        InMessage(
            ROLE_OF_TOPIC[e.message.topic],
            e.message.topic,
            partition,
            e.message.offset,
            e.message.key,
            e.message.value,
        )
        for e in (events if messages_too else ())
    ]
    highwater = _highwaters(partition)
    now = time.monotonic()
    result = process_batch(
        record,
        messages,
        catalog=catalog_feed.catalog,
        partitions=settings.partitions,
        load_user=_load_user,
        cache=cache,
        highwater=highwater,
        max_pending=settings.max_pending,
        now=now,
        max_idle=MAX_IDLE,
    )
    if result.idle_until is None:
        _idle_due.pop(partition, None)
    else:
        _idle_due[partition] = (max(result.idle_until, now + QUIET_BEFORE_TIMER), events[-1])
    written = await _commit(partition, result)
    if written is not None:
        deliveries += written
        cache.record = result.record
    _remember_positions(partition, result.record)
    for role, offset in result.rewinds.items():
        await faust_fixes.rewind(app.consumer, TP(settings.topic(role), partition), offset)
    for note in result.notes:
        log.warning("partition %d: %s", partition, note)
    stats = result.stats
    totals["batches"] += 1
    totals["accepted"] += stats.accepted
    totals["applied"] += stats.applied
    totals["outputs"] += stats.outputs
    totals["dead"] += stats.dead
    totals["redelivered"] += stats.redelivered
    totals["stalls"] += stats.stalls
    totals["budget_messages"] += stats.budget_messages
    metrics.observe_batch(partition, result, time.perf_counter() - started)
    return deliveries


def _remember_positions(partition: int, record: PartitionRecord) -> None:
    """Where a new owner must fetch each input from: what faust commits (fix 5)."""
    for role, position in record.fetch_positions().items():
        faust_fixes.commit_positions[TP(settings.topic(role), partition)] = position


def from_an_earlier_assignment(event: faust.EventT[bytes]) -> bool:
    if app.rebalancing or app.in_recovery:
        return True
    generation = event.message.generation_id
    return generation is not None and generation != app.consumer_generation_id


def _read_record(partition: int) -> PartitionRecord:
    raw = state.get(partition_key(partition))
    return PartitionRecord(partition) if raw is None else decode_partition(raw)


def _load_user(user_id: str) -> UserState | None:
    return decode_user(state.get(user_key(user_id)))


async def _commit(partition: int, result: BatchResult) -> list[Awaitable[Any]] | None:
    """Write the batch (redo record first) and start sending its outputs;
    None when there was nothing to write."""
    stats = result.stats
    if not (stats.accepted or stats.applied or result.outputs or result.rewinds):
        return None  # only redeliveries or messages dropped for a rewind: nothing changed
    return await table_commit.commit_batch(
        state,
        output_topics,
        redo_key(partition),
        result.record.seq,
        writes_for(result),
        result.outputs,
    )


async def _load_partition(partition: int) -> tuple[PartitionCache, list[Awaitable[Any]]]:
    """After an assignment: finish the last batch if a crash cut it short, and
    rebuild the tick index from the users stored here."""
    started = time.monotonic()
    raw_record = state.get(partition_key(partition))
    seq = -1 if raw_record is None else decode_partition(raw_record).seq
    deliveries = await table_commit.finish_cut_batch(
        state, output_topics, redo_key(partition), seq, f"partition {partition}"
    )
    deadlines = rebuild_deadlines(_stored_deadlines(partition))
    log.info(
        "partition %d loaded: %d user(s) with a deadline, %.2f s",
        partition,
        len(deadlines),
        time.monotonic() - started,
    )
    return PartitionCache(deadlines=deadlines), deliveries


def _stored_deadlines(partition: int) -> Iterable[tuple[str, int | None]]:
    store: Any = state.data
    if hasattr(store, "_db_for_partition"):  # RocksDB: this partition's database
        db = store._db_for_partition(partition)
        for key, value in db.items(from_key=USER_PREFIX):
            if not key.startswith(USER_PREFIX):
                break
            yield key[len(USER_PREFIX) :].decode(), next_deadline_of_record(value)
    else:  # the memory store (tests): every key of the table
        for key, value in list(store.items()):
            if key.startswith(USER_PREFIX):
                yield key[len(USER_PREFIX) :].decode(), next_deadline_of_record(value)


def _highwaters(partition: int) -> dict[str, int | None]:
    """Each input's high watermark as of the consumer's last fetch (None until
    a fetch has reported one: the processor then holds events back).

    Never asks the broker from here: that goes through the consumer thread,
    which a rebalance can block while it waits for this very agent.
    """
    consumer = app.consumer
    marks: dict[str, int | None] = {}
    for role in INPUT_TOPICS:
        try:
            marks[role] = consumer.highwater(TP(settings.topic(role), partition))
        except Exception:  # not assigned (any more)
            marks[role] = None
    return marks


@app.timer(settings.commit_interval)  # type: ignore[untyped-decorator]
async def commit_processor_positions() -> None:
    """The group's committed offsets follow the table (faust_fixes fix 5)."""
    await faust_fixes.commit_moved_positions(app)


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _forget_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    for tp in revoked:
        if tp.topic in ROLE_OF_TOPIC:
            _forget(tp.partition)
    faust_fixes.forget_positions(revoked)
