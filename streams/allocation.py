"""The allocator's batch step: budget requests in, masters and grants out.

Pure, like `streams.processor`: the allocator agent hands in one partition's
messages from the budget-requests topic, its record and a way to load a
pool's master; it gets back the masters to write, the messages for the
buckets, and the rewinds. Each pool's master lives in the partition
`app.bucketing.master_partition` names, in the `allocator` table:

    m:<pool_id>    the pool's `app.bucketing.Master`
    a:<partition>  the partition's `AllocatorRecord` (next offset, batch seq)
    r:<partition>  the redo record of the last batch (as the processor's)

Offsets are accepted exactly as the processor accepts its inputs (lower:
redelivered, skipped; higher: a gap, rewind); `seq` numbers in the
messages catch what a re-sent batch of a bucket repeats.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from app.bucketing import (
    DEFAULT_ALLOCATION,
    Allocation,
    Master,
    Waiting,
    allocate,
    master_partition,
    new_master,
)
from app.catalog import Pool
from app.dead_letters import dead_letter_for
from schemas.codec import decode, encode
from schemas.errors import SchemaError
from schemas.limits import check_message_size
from schemas.records import TO_MASTER_RECORDS, PoolCommand, ToMaster
from streams.partition_state import Output
from streams.processor import (
    BUDGET,
    BUDGET_REQUESTS,
    DEAD_LETTERS,
    DROPPED,
    GAP,
    REDELIVERED,
    InMessage,
    gap_note,
    offset_verdict,
)

log = logging.getLogger(__name__)

BUDGET_GRANTS = BUDGET  # what the allocator writes is the processors' fifth input
MASTER_PREFIX = b"m:"
_TO_MASTER_TYPES = frozenset(cls.TYPE for cls in TO_MASTER_RECORDS)
_FORMAT = 1
# 2: a queued request's 7th field (wall_span_us). Format 1 is still read; an
# older build refuses format 2 by its number, not with a TypeError.
_MASTER_FORMAT = 2
_MASTER_READABLE = (1, _MASTER_FORMAT)


def master_key(pool_id: str) -> bytes:
    return MASTER_PREFIX + pool_id.encode()


def allocator_key(partition: int) -> bytes:
    return b"a:%d" % partition


def allocator_redo_key(partition: int) -> bytes:
    return b"r:%d" % partition


@dataclass(frozen=True, slots=True)
class AllocatorRecord:
    partition: int
    seq: int = 0  # batches applied
    next_offset: int | None = None  # of the budget-requests partition


def encode_allocator(record: AllocatorRecord) -> bytes:
    return orjson.dumps([_FORMAT, record.partition, record.seq, record.next_offset])


def decode_allocator(raw: bytes) -> AllocatorRecord:
    version, partition, seq, next_offset = orjson.loads(raw)
    if version != _FORMAT:
        raise ValueError(f"not an allocator record of format {_FORMAT}")
    return AllocatorRecord(partition, seq, next_offset)


def encode_master(master: Master) -> bytes:
    return orjson.dumps(
        [
            _MASTER_FORMAT,
            master.pool_id,
            master.total,
            master.partitions,
            master.master,
            master.mode,
            master.granted,
            master.returned,
            master.in_seq,
            master.out_seq,
            master.last_grant,
            master.round,
            sorted(master.awaiting),
            [
                [w.partition, w.request_seq, w.units, w.balance, w.used, w.span_us, w.wall_span_us]
                for w in master.queue
            ],
            [master.requests, master.grants, master.denials, master.rounds],
            master.commands,
            master.floor,
        ]
    )


def decode_master(raw: bytes) -> Master:
    doc = orjson.loads(raw)
    if doc[0] not in _MASTER_READABLE:
        raise ValueError(f"not a master record of format {_MASTER_READABLE}")
    (_, pool_id, total, partitions, master, mode, granted, returned, in_seq, out_seq) = doc[:10]
    last_grant, round_, awaiting, queue, counters, commands = doc[10:16]
    floor = doc[16] if len(doc) > 16 else 0
    return Master(
        pool_id,
        total,
        partitions,
        master,
        mode,
        tuple(granted),
        tuple(returned),
        tuple(in_seq),
        tuple(out_seq),
        tuple(last_grant),
        round_,
        frozenset(awaiting),
        tuple(Waiting(*w) for w in queue),
        requests=counters[0],
        grants=counters[1],
        denials=counters[2],
        rounds=counters[3],
        commands=tuple(commands),
        floor=floor,
    )


@dataclass(slots=True)
class AllocationStats:
    accepted: int = 0
    redelivered: int = 0
    dropped_for_rewind: int = 0
    dead: int = 0
    grants: int = 0
    denials: int = 0
    recalls: int = 0


@dataclass(frozen=True, slots=True)
class AllocationResult:
    record: AllocatorRecord
    masters: Mapping[str, Master]  # the masters this batch changed
    outputs: tuple[Output, ...]
    rewind: int | None  # the offset the consumer must fetch from again
    waiting_for_pool: str | None  # a pool not in the catalog yet (the rewind waits for it)
    stats: AllocationStats
    notes: tuple[str, ...]


@dataclass(slots=True)
class AllocatorCache:
    """In memory only: the offset a rewind awaits (dropped on reassignment)."""

    rewinding: int | None = None


@dataclass(slots=True)
class _Step:
    record: AllocatorRecord
    pools: Mapping[str, Pool]
    partitions: int
    load_master: Callable[[str], Master | None]
    cache: AllocatorCache
    params: Allocation
    next_offset: int | None = None
    masters: dict[str, Master] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    outputs: list[Output] = field(default_factory=list)
    rewind: int | None = None
    waiting_for_pool: str | None = None
    stats: AllocationStats = field(default_factory=AllocationStats)
    notes: list[str] = field(default_factory=list)

    def accept(self, message: InMessage) -> None:
        expected = self.next_offset
        verdict = offset_verdict(message.offset, expected, self.cache.rewinding)
        if verdict == DROPPED:
            self.stats.dropped_for_rewind += 1
            return
        self.cache.rewinding = None  # the awaited offset arrived (if any)
        if verdict == REDELIVERED:
            self.stats.redelivered += 1
            return
        if verdict == GAP:
            assert expected is not None  # a gap needs an expected offset
            self.rewind = self.cache.rewinding = expected
            self.stats.dropped_for_rewind += 1
            self.notes.append(gap_note(message, expected))
            return
        try:
            budget_message = self._decode(message)
            master = self._master(budget_message.pool_id)
            if master is None and type(budget_message) is PoolCommand:
                raise SchemaError(
                    f"unknown pool {budget_message.pool_id!r} (not in the published pools)"
                )
        except (SchemaError, ValueError) as exc:
            self._accepted(message)
            self._dead(message, str(exc))
            return
        if master is None:
            # A bucket asks about a pool this worker's catalog does not have
            # yet: the templates topic has not reached it. Wait for it (the
            # message is fetched again) rather than refuse or drop.
            self.rewind = self.cache.rewinding = message.offset
            self.waiting_for_pool = budget_message.pool_id
            self.notes.append(
                f"pool {budget_message.pool_id!r} is not in this worker's catalog yet "
                f"({message.source}); waiting for the templates topic"
            )
            return
        self._accepted(message)
        try:
            self._allocate(master, budget_message)
        except ValueError as exc:
            self._dead(message, str(exc))

    def _accepted(self, message: InMessage) -> None:
        self.next_offset = message.offset + 1
        self.stats.accepted += 1

    def _decode(self, message: InMessage) -> ToMaster:
        if message.value is None:
            raise SchemaError("empty message (no value)")
        check_message_size(message.value)  # the inputs' limit (docs/limits.md)
        record = decode(message.value)
        if record.TYPE not in _TO_MASTER_TYPES:
            raise SchemaError(
                f"a {record.TYPE} event does not belong on the {BUDGET_REQUESTS} topic"
            )
        budget_message: ToMaster = record  # type: ignore[assignment]
        pool_id = budget_message.pool_id
        owner = master_partition(pool_id, self.partitions)
        if owner != message.partition:
            raise SchemaError(
                f"pool {pool_id!r} belongs to partition {owner}, read on {message.partition}"
            )
        return budget_message

    def _master(self, pool_id: str) -> Master | None:
        """The pool's master: changed in this batch, stored, or new (with the
        published total) on the first word of the pool; None if unknown."""
        master = self.masters.get(pool_id)
        if master is None:
            master = self.load_master(pool_id)
        if master is None and pool_id in self.pools:
            master = new_master(pool_id, self.pools[pool_id].total, self.partitions)
        return master

    def _allocate(self, master: Master, message: ToMaster) -> None:
        master, replies = allocate(master, message, self.params)
        self.masters[master.pool_id] = master
        self.changed.add(master.pool_id)
        for reply in replies:
            kind = reply.TYPE
            if kind == "bucket_granted":
                self.stats.grants += 1
            elif kind == "refill_denied":
                self.stats.denials += 1
            else:
                self.stats.recalls += 1
            self.outputs.append(
                Output(BUDGET_GRANTS, reply.pool_id.encode(), encode(reply), reply.partition)
            )

    def _dead(self, message: InMessage, reason: str) -> None:
        self.stats.dead += 1
        self.notes.append(f"dead letter {message.source}: {reason}")
        self.outputs.append(
            Output(
                DEAD_LETTERS,
                message.key,
                encode(dead_letter_for(message.value or b"", message.source, reason)),
            )
        )


def process_requests(
    record: AllocatorRecord,
    messages: Iterable[InMessage],
    *,
    pools: Mapping[str, Pool],
    partitions: int,
    load_master: Callable[[str], Master | None],
    cache: AllocatorCache,
    params: Allocation = DEFAULT_ALLOCATION,
) -> AllocationResult:
    """Apply one batch of one budget-requests partition (module docstring)."""
    # The topic is ours and kept forever: it starts at offset 0, so even a
    # first request skipped at a rebalance shows up as a gap.
    next_offset = 0 if record.next_offset is None else record.next_offset
    step = _Step(record, pools, partitions, load_master, cache, params, next_offset)
    for message in messages:
        step.accept(message)
    return AllocationResult(
        AllocatorRecord(record.partition, record.seq + 1, step.next_offset),
        {pool_id: step.masters[pool_id] for pool_id in sorted(step.changed)},
        tuple(step.outputs),
        step.rewind,
        step.waiting_for_pool,
        step.stats,
        tuple(step.notes),
    )


def allocation_writes(result: AllocationResult) -> list[tuple[bytes, bytes | None]]:
    """The table writes of a batch, the allocator record last."""
    writes: list[tuple[bytes, bytes | None]] = [
        (master_key(pool_id), encode_master(master)) for pool_id, master in result.masters.items()
    ]
    writes.append((allocator_key(result.record.partition), encode_allocator(result.record)))
    return writes
