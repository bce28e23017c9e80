"""One batch of one partition's input messages -> new state, outputs, offsets.

No Faust and no Kafka here: the agent (the imperative shell) hands in the
messages, the partition's record, a way to load users and what it knows of
the input partitions' high watermarks; it gets back everything to write and
send. Unit tests drive this with plain values.

What a batch does, in order:

1. **Accept** each message once, by offset. The partition record keeps the
   next offset expected from every input topic: a lower offset is a
   redelivery (already accepted) and is skipped; a higher one means messages
   were skipped on the way to us (faust drops queued messages at a rebalance
   and can commit past them), so the batch asks the shell to rewind the
   consumer to the expected offset and drops that topic's messages until the
   expected one arrives. Our offsets, stored with the state, are the truth;
   the consumer group's committed offsets only say where to start fetching.
2. **Merge in event time.** Claims, orders, refunds and ticks come from four
   co-partitioned topics that are fetched independently, so a user's order
   can be fetched before the claim that preceded it. Accepted events wait in
   the partition's pending buffer and are released in `(at, role, offset)`
   order once every other input has shown an event at least as late or is
   caught up with its high watermark (Kafka Streams' stream-time
   synchronisation). Caught up is not enough while traffic is live: an
   event produced a moment later on an idle input may still be earlier, so
   an event released past an input that is only caught up must wait
   `max_idle` seconds (Kafka Streams' `max.task.idle.ms`) from when the
   broker appended it, if its topic stamps append times
   (`message.timestamp.type=LogAppendTime`, as `taskstream topics create`
   makes the inputs), else from when it was accepted here. So a backlog
   (appended long ago) never waits, and an event appended late after an
   outage waits as long as a live one. `BatchResult.idle_until` tells the
   shell when to run the partition again with no new messages. A buffer
   over `max_pending` releases its head anyway.
   An input that arrives after a later event was applied (its producer was
   behind the others by more than the idle wait, or the buffer was full) is
   applied as soon as it arrives, and the batch records where: an
   `applied_late` event on the late-inputs topic, which the audit replays,
   so live and replay agree whatever the producers' skew. The wait only
   decides how often that happens.
   The buffer is in memory; the partition record keeps its offsets, and
   after a restart the shell fetches those again (`PartitionCache.load`).
3. **Apply** each released event through the engine (`app.engine.handle`),
   the same fold replay uses; a tick visits the users the deadline index
   says are due. Rewards are paid from this partition's buckets
   (`app.bucketing.PartitionBudget`). When a bucket cannot pay, the event's
   outcome is dropped, a refill request goes to the pool's master, and the
   partition *stalls*: the event stays at the head of the buffer, later ones
   wait behind it, until the master's answer arrives (a grant: apply it
   again; a refusal: the reward is rejected). Budget messages from the
   masters (the budget-grants topic, a fifth input) are applied the moment
   they are accepted, outside event-time order: they carry no event time and
   nothing they do depends on one.
4. Collect the users to write (one write per user per batch, however many
   of their events the batch held: Kafka Streams' record cache), the
   partition record, and the outputs with their deterministic ids.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import NamedTuple

from app.bucketing import AwaitingBudget, PartitionBudget, master_partition
from app.catalog import Catalog
from app.dead_letters import dead_letter_for
from app.deadlines import DeadlineIndex
from app.engine import Outcome, handle
from app.frozen import fast_init
from app.state import UserState
from schemas.codec import decode, decode_input, encode
from schemas.errors import SchemaError
from schemas.limits import check_message_size
from schemas.records import (
    REWARD_RECORDS,
    TO_BUCKET_RECORDS,
    AppliedLate,
    InputEvent,
    RewardEvent,
    Tick,
    ToBucket,
    ToMaster,
)
from streams.config import BUDGET_GRANTS, INPUT_TOPIC_BY_TYPE, INPUT_TOPICS

# Re-exported: the processor's callers and tests name roles from here.
from streams.config import BUDGET_REQUESTS as BUDGET_REQUESTS
from streams.config import CLAIMS as CLAIMS
from streams.config import DEAD_LETTERS as DEAD_LETTERS
from streams.config import LATE_INPUTS as LATE_INPUTS
from streams.config import ORDERS as ORDERS
from streams.config import REFUNDS as REFUNDS
from streams.config import REWARDS as REWARDS
from streams.config import TASK_EVENTS as TASK_EVENTS
from streams.config import TICKS as TICKS
from streams.partition_state import (
    Output,
    PartitionRecord,
    encode_partition,
    partition_key,
    user_writes,
)

log = logging.getLogger(__name__)

# Roles are the topics' short names (streams.config defines them once).
# Input roles, in the order they are applied when two events share an instant.
INPUT_ROLES = INPUT_TOPICS
RANK = {role: n for n, role in enumerate(INPUT_ROLES)}
ROLE_OF_TYPE = INPUT_TOPIC_BY_TYPE
# The fifth input: budget messages from the pools' masters (no event time).
BUDGET = BUDGET_GRANTS
_TO_BUCKET_TYPES = frozenset(cls.TYPE for cls in TO_BUCKET_RECORDS)
_REWARD_TYPES = frozenset(cls.TYPE for cls in REWARD_RECORDS)

DEFAULT_MAX_PENDING = 20_000
# Not a user's state (None is one: no state yet), for one-lookup `get`s.
_ABSENT = object()


@fast_init
@dataclass(frozen=True, slots=True)
class InMessage:
    """One fetched message (built once per message: with the native kernel
    its class call is compiled, app/frozen.py)."""

    role: str  # which input topic (one of INPUT_ROLES, or BUDGET)
    topic: str  # its full name, for dead letters
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # When the broker appended it (seconds since the epoch, the shell's clock's
    # scale), if its topic stamps append times; None if it stamps create times.
    appended_at: float | None = None

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


# What accepting by offset makes of a message (`offset_verdict`).
TAKE, REDELIVERED, GAP, DROPPED = "take", "redelivered", "gap", "dropped"


def offset_verdict(offset: int, expected: int | None, awaited: int | None) -> str:
    """Accept each message once, by offset, against the offset stored with the
    state (`expected`; None: anything goes) and the one a rewind waits for
    (`awaited`): DROPPED while a rewind waits for another offset, REDELIVERED
    below `expected`, GAP above it (something was skipped: rewind), else TAKE.
    Shared by the processor and the allocator."""
    if awaited is not None and offset != awaited:
        return DROPPED
    if expected is not None and offset < expected:
        return REDELIVERED
    if expected is not None and offset > expected:
        return GAP
    return TAKE


def gap_note(message: InMessage, expected: int) -> str:
    return (
        f"{message.topic}/{message.partition}: got offset {message.offset} "
        f"but {expected} was never processed; rewinding to {expected}"
    )


def decode_message(role: str, key: bytes | None, value: bytes | None) -> InputEvent:
    """An input message as an event, or SchemaError saying why it is unusable:
    not an input event, on the wrong topic, or not keyed by its user. Shared
    by the processor and the audit (which must judge every message alike)."""
    if value is None:
        raise SchemaError("empty message (no value)")
    event = decode_input(value)
    expected_role = ROLE_OF_TYPE[event.TYPE]
    if expected_role != role:
        raise SchemaError(f"a {event.TYPE} event does not belong on the {role} topic")
    if type(event) is not Tick:
        user_id: str = event.user_id  # type: ignore[union-attr]
        if key != user_id.encode():
            shown = key if key is None or len(key) <= 300 else key[:300] + b"..."
            raise SchemaError(
                f"message key {shown!r} is not the event's user_id {user_id!r} "
                "(inputs must be keyed by user_id so each user lives in one partition)"
            )
    return event


@fast_init
@dataclass(frozen=True, slots=True)
class Pending:
    """An accepted input waiting for its turn in event-time order."""

    at: int
    rank: int  # the input's role: claims < orders < refunds < ticks at equal times
    role: str
    offset: int
    key: bytes | None
    value: bytes
    event: InputEvent
    # The shell's clock (seconds) from which the idle wait counts: when the
    # broker appended it, or when it was accepted here, whichever is earlier.
    ready_from: float = 0.0


@dataclass(slots=True)
class PartitionCache:
    """In memory, rebuilt after every assignment: from the table (the tick
    index) and by fetching the held offsets again (the pending events)."""

    deadlines: DeadlineIndex = field(default_factory=DeadlineIndex)
    # (at, rank, offset, event), sorted latest first: the next event in
    # event-time order is the last, popped in O(1). A batch appends what it
    # accepts and sorts once before it releases (`_Batch.release`): timsort
    # merges the two sorted runs in C, cheaper than a heap push and pop per
    # event in Python (the keys are unique: the rank names the input).
    pending: list[tuple[int, int, int, Pending]] = field(default_factory=list)
    # False from a batch's start until its release has sorted `pending`: a
    # batch that raised in between left it unsorted (the shell drops the
    # cache then; a cache used again anyway is sorted by the next batch).
    pending_sorted: bool = True
    held: dict[str, set[int]] = field(default_factory=dict)  # role -> offsets in `pending`
    rewinding: dict[str, int] = field(default_factory=dict)  # role -> offset awaited
    # Held offsets (from the partition record) not yet fetched again.
    refetch: dict[str, set[int]] = field(default_factory=dict)
    # The pool whose answer the head of `pending` waits for (None: not stalled).
    stalled_on: str | None = None
    # The partition record as last written (the shell keeps it so a batch need
    # not decode it from the table: with many held offsets that is costly).
    record: PartitionRecord | None = None
    loaded: bool = False
    # Users as last written or read here, most recently used last, at most
    # `users_max` (0: none kept): a user seen in an earlier batch is neither
    # read from the table nor decoded again (Kafka Streams keeps a record
    # cache; Flink's heap backend keeps objects). The table stays the truth:
    # the shell drops the whole cache when a batch fails or the partition moves.
    # A plain dict kept in use order: a batch takes out the users it reads
    # (`take_user`) and puts every user it touched back at the end
    # (`keep_users`, one `update`), so no per-user reordering in Python.
    users: dict[str, UserState | None] = field(default_factory=dict)
    users_max: int = 0

    def take_user(self, user_id: str) -> object:
        """The cached state of a user (None: known to have none), or `_ABSENT`;
        taken out until the batch puts it back (`keep_users`)."""
        return self.users.pop(user_id, _ABSENT)

    def keep_users(self, states: Mapping[str, UserState | None]) -> None:
        users = self.users
        if not self.users_max:
            users.clear()
            return
        users.update(states)
        excess = len(users) - self.users_max
        if excess > 0:
            # Evict the least recently used in bulk, an eighth of the cache
            # at a time: finding a dict's oldest key walks past the slots its
            # earlier deletions left, so one walk per many evictions.
            for user_id in list(islice(users, excess + self.users_max // 8)):
                del users[user_id]

    def load(self, record: PartitionRecord) -> dict[str, int]:
        """Start from a stored record; return where each input must be fetched
        again from (its oldest held offset)."""
        self.pending = []
        self.held = {}
        self.stalled_on = None
        self.refetch = {role: set(offsets) for role, offsets in record.held.items() if offsets}
        self.rewinding = {role: min(offsets) for role, offsets in self.refetch.items()}
        self.loaded = True
        return dict(self.rewinding)


_NEVER = -math.inf


class ReleaseBounds(NamedTuple):
    """A sufficient condition for releasing the head of the buffer, from one
    look at every input (`_Batch._release_bounds`); a head outside it gets
    the full check, `_Batch._may_release`, which also notes when to look again.

    A head may go when every other input has read up to its event time, or
    is caught up (at its high watermark) and the head's idle wait is over,
    the watermark read after it. So it may go when every input has read to
    its time (`read_all`); or when every input not caught up has read to
    its time (`read_busy`) and its wait ends by `waited_by`, the earliest
    of the clock and of the caught-up inputs' watermark reads. The head's
    own input always has read to its time."""

    read_all: float
    read_busy: float
    waited_by: float

    def lets_pass(self, head: Pending, max_idle: float) -> bool:
        at = head.at
        return at <= self.read_all or (
            at <= self.read_busy and head.ready_from + max_idle <= self.waited_by
        )


@dataclass(slots=True)
class BatchStats:
    accepted: int = 0
    redelivered: int = 0
    dropped_for_rewind: int = 0
    applied: int = 0
    dead: int = 0
    forced: int = 0
    late: int = 0  # applied after a later event (each recorded: `applied_late`)
    outputs: int = 0
    budget_messages: int = 0  # from the masters, applied
    stalls: int = 0  # events that had to wait for a master's answer
    # Tallies for the worker's metrics (streams/monitor/metrics.py): one dict
    # increment where the processor already holds the value, so the shell
    # need not decode outputs to count them.
    applied_by_role: dict[str, int] = field(default_factory=dict)
    applied_at: list[int] = field(default_factory=list)  # event time of each applied event
    outputs_by_type: dict[str, int] = field(default_factory=dict)
    # (reward type, template_id, pool_id or "") -> [count, cents]
    rewards: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    # (budget message type, pool_id) -> count, received from or sent to the masters
    budget_by_type: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BatchResult:
    record: PartitionRecord
    user_writes: Mapping[str, UserState | None]  # None: delete the user's key
    outputs: tuple[Output, ...]
    rewinds: Mapping[str, int]  # role -> offset the consumer must fetch from again
    stats: BatchStats
    notes: tuple[str, ...]  # what the worker should log
    # The shell's clock at which the head of the buffer, held only by the
    # idle wait, may go: run the partition again then (None: nothing waits so).
    idle_until: float | None = None


class _Batch:
    """The working set of one batch: users loaded once, written once."""

    def __init__(
        self,
        record: PartitionRecord,
        catalog: Catalog,
        partitions: int,
        load_user: Callable[[str], UserState | None],
        cache: PartitionCache,
        now: float = 0.0,
        max_idle: float = 0.0,
    ) -> None:
        self.partition = record.partition
        self.now = now
        self.max_idle = max_idle
        self.idle_until: float | None = None
        self.catalog = catalog
        self.load_user = load_user
        self.cache = cache
        self.next_offset = dict(record.next_offset)
        self.max_at = dict(record.max_at)
        # The latest event applied in event-time order, as its (at, rank,
        # offset) heap key (None: none yet; the record names its role).
        top = record.max_applied
        self.max_key = None if top is None else (top[0], RANK[top[1]], top[2])
        self.late_behind = record.late_behind
        self.partitions = partitions
        self.pending = cache.pending
        # Its length as the last batch left it sorted (-1: left unsorted).
        self.pending_before = len(cache.pending) if cache.pending_sorted else -1
        cache.pending_sorted = False  # until `release` has sorted it
        # The clock reaches the buckets only to size grants (in the refill
        # requests, which record it); it decides nothing else.
        self.budget = PartitionBudget(self.partition, record.buckets, int(now * 1_000_000))
        self.users: dict[str, UserState | None] = {}
        self.changed: set[str] = set()
        self.outputs: list[Output] = []
        self.rewinds: dict[str, int] = {}
        self.stats = BatchStats()
        self.notes: list[str] = []

    # ----------------------------------------------------------- accept

    def accept(self, message: InMessage) -> None:
        role = message.role
        expected = self.next_offset.get(role)
        if expected == message.offset and not self.cache.rewinding:
            # The usual case, what `offset_verdict` calls TAKE, without its
            # checks: the offset stored next, and no rewind awaited.
            self.next_offset[role] = expected + 1
            self.stats.accepted += 1
            if role == BUDGET:
                self._apply_budget(message)
            else:
                self._hold(message)
            return
        if expected is None and role == BUDGET:
            # Our own topic, kept forever: its first message is at offset 0,
            # so a first message fetched before a rebalance and skipped is
            # noticed as a gap (the inputs may start later: retention).
            expected = 0
        verdict = offset_verdict(message.offset, expected, self.cache.rewinding.get(role))
        if verdict == DROPPED:
            self.stats.dropped_for_rewind += 1
            return
        self.cache.rewinding.pop(role, None)  # the awaited offset arrived (if any)
        if verdict == REDELIVERED:
            held = self.cache.refetch.get(role)
            if held and message.offset in held:  # held before a restart: take it again
                held.discard(message.offset)
                self._hold(message)
                return
            self.stats.redelivered += 1
            return
        if verdict == GAP:
            assert expected is not None  # a gap needs an expected offset
            self.rewinds[role] = expected
            self.cache.rewinding[role] = expected
            self.stats.dropped_for_rewind += 1
            self.notes.append(gap_note(message, expected))
            return
        self.next_offset[role] = message.offset + 1
        self.stats.accepted += 1
        if role == BUDGET:
            self._apply_budget(message)
        else:
            self._hold(message)

    def _apply_budget(self, message: InMessage) -> None:
        try:
            if message.value is None:
                raise SchemaError("empty message (no value)")
            check_message_size(message.value)  # the inputs' limit (docs/limits.md)
            record = decode(message.value)
            if record.TYPE not in _TO_BUCKET_TYPES:
                raise SchemaError(f"a {record.TYPE} event does not belong on the {BUDGET} topic")
            budget_message: ToBucket = record  # type: ignore[assignment]
            if budget_message.partition != self.partition:
                raise SchemaError(
                    f"addressed to partition {budget_message.partition}, read on {self.partition}"
                )
        except SchemaError as exc:
            self._dead(message.value or b"", message.source, str(exc), message.key)
            return
        self.budget.apply(budget_message)
        self.stats.budget_messages += 1
        self._tally_budget(budget_message.TYPE, budget_message.pool_id)
        self._send_budget()

    def _hold(self, message: InMessage) -> None:
        role = message.role
        try:
            event = decode_message(role, message.key, message.value)
        except SchemaError as exc:
            self._dead(message.value or b"", message.source, str(exc), message.key)
            return
        at = event.at
        max_at = self.max_at
        if role not in max_at or at > max_at[role]:
            max_at[role] = at
        offset = message.offset
        now = self.now
        appended_at = message.appended_at
        rank = RANK[role]
        pending = Pending(
            at,
            rank,
            role,
            offset,
            message.key,
            message.value or b"",
            event,
            now if appended_at is None or not appended_at < now else appended_at,
        )
        self.pending.append((at, rank, offset, pending))  # sorted in `release`
        held = self.cache.held
        if role in held:
            held[role].add(offset)
        else:
            held[role] = {offset}

    # ---------------------------------------------------------- release

    def release(
        self,
        highwater: Mapping[str, int | None],
        max_pending: int,
        highwater_seen: Mapping[str, float | None] | None = None,
    ) -> None:
        pending = self.pending
        held = self.cache.held
        cache = self.cache
        if len(pending) != self.pending_before:
            pending.sort(reverse=True)  # with what `_hold` appended
        cache.pending_sorted = True  # the pops below keep it so
        lets_pass = self._release_bounds(highwater, highwater_seen).lets_pass
        max_idle = self.max_idle
        stats = self.stats
        by_role = stats.applied_by_role
        applied_at = stats.applied_at
        while pending:
            if cache.stalled_on is not None:
                if self.budget.waiting_on(cache.stalled_on):
                    break  # nothing passes a stalled event, however full the buffer
                cache.stalled_on = None
            head = pending[-1][3]
            if not lets_pass(head, max_idle) and not self._may_release(
                head, highwater, highwater_seen
            ):
                if len(pending) <= max_pending:
                    break
                stats.forced += 1
            stalled_on = self._apply(head)
            if stalled_on is not None:
                cache.stalled_on = stalled_on
                stats.stalls += 1
                continue  # loops back to the check above: applied again once answered
            pending.pop()
            self._note_order(head)
            role = head.role
            held[role].discard(head.offset)
            by_role[role] = by_role[role] + 1 if role in by_role else 1
            applied_at.append(head.at)
        if stats.forced:
            self.notes.append(
                f"pending buffer over {max_pending} events: released {stats.forced} "
                "ahead of a lagging input (event-time order not guaranteed for them)"
            )

    def _release_bounds(
        self,
        highwater: Mapping[str, int | None],
        highwater_seen: Mapping[str, float | None] | None,
    ) -> ReleaseBounds:
        """What `_may_release` would say for most heads, worked out once per
        batch: neither the inputs' progress nor the clock changes while a
        batch releases, and in a backlog the per-input checks of every
        event cost more than the event's own decoding."""
        never = ReleaseBounds(_NEVER, _NEVER, _NEVER)
        if any(self.cache.refetch.values()):
            return never
        read_all = read_busy = math.inf
        waited_by = math.inf
        for role in INPUT_ROLES:
            read = self.max_at.get(role, _NEVER)
            read_all = min(read_all, read)
            if not self._caught_up(role, highwater):
                read_busy = min(read_busy, read)
                continue
            limit = self.now
            if highwater_seen is not None:
                seen = highwater_seen.get(role)
                limit = _NEVER if seen is None else min(limit, seen)
            waited_by = min(waited_by, limit)
        return ReleaseBounds(read_all, read_busy, waited_by)

    def _caught_up(self, role: str, highwater: Mapping[str, int | None]) -> bool:
        """Read to its high watermark (known), and not waiting for a rewind."""
        if role in self.cache.rewinding:
            return False
        hw = highwater.get(role)
        return hw is not None and self.next_offset.get(role, 0) >= hw

    def _may_release(
        self,
        head: Pending,
        highwater: Mapping[str, int | None],
        highwater_seen: Mapping[str, float | None] | None,
    ) -> bool:
        if any(self.cache.refetch.values()):
            return False  # events held before a restart are still on their way back
        for role in INPUT_ROLES:
            if role == head.role:
                continue
            if self.max_at.get(role, head.at - 1) >= head.at:
                continue
            if not self._caught_up(role, highwater):
                if highwater.get(role) is None and role not in self.cache.rewinding:
                    # No fetch has answered for this input yet (just assigned).
                    # If it is quiet, the answer brings its high watermark and
                    # no record, so no batch of this partition would come to
                    # look again: run it again after the next fetch instead
                    # (held forever otherwise: seen after a rebalance with one
                    # event per batch, every input of a partition read to its end).
                    self.idle_until = self.now
                return False
            # Caught up, yet behind: what a live producer sends next on this
            # input may be earlier than the head. Wait a while for it.
            ready_at = head.ready_from + self.max_idle
            if self.now < ready_at:
                self.idle_until = ready_at
                return False
            # ... and only with a high watermark read after the wait was over:
            # one read before it (the last fetch before a broker restart, or
            # before this worker froze or reconnected) does not cover what was
            # appended meanwhile, and a backlog appended at the restart would
            # pass its idle wait at once.
            if highwater_seen is not None:
                seen = highwater_seen.get(role)
                if seen is None or seen < ready_at:
                    self.idle_until = self.now  # look again after the next fetch
                    return False
        return True

    def _note_order(self, applied: Pending) -> None:
        """Keep the latest event applied in event-time order; record one
        applied behind it. Live, an input can reach the worker after a later
        event of another input was applied (a producer behind the others, an
        input passed once its idle wait was over, a full buffer): it is
        applied at once, and which events it came behind is timing, so it
        becomes an `applied_late` event that the audit replays (DESIGN §3:
        every nondeterministic decision is recorded)."""
        key = (applied.at, applied.rank, applied.offset)
        top = self.max_key
        if top is None or key > top:
            self.max_key = key
            self.late_behind = 0
            return
        self.late_behind += 1
        self.stats.late += 1
        late = AppliedLate(
            late_event_id(applied.role, self.partition, applied.offset),
            applied.role,
            self.partition,
            applied.offset,
            applied.at,
            INPUT_ROLES[top[1]],
            top[2],
            top[0],
            self.late_behind,
        )
        self.outputs.append(Output(LATE_INPUTS, None, encode(late), self.partition))

    # ------------------------------------------------------------ apply

    def _apply(self, pending: Pending) -> str | None:
        """Apply one event; the pool it must wait for, or None when done."""
        event = pending.event
        if type(event) is Tick:
            # Expiry never pays or takes back a reward: a tick cannot stall.
            self.stats.applied += 1
            for user_id in self.cache.deadlines.pop_due(event.at):
                state = self._user(user_id)
                if state is None or state.next_deadline is None or state.next_deadline > event.at:
                    continue  # a stale index entry
                self._handle(user_id, state, event, pending)
            return None
        user_id = event.user_id  # type: ignore[union-attr]
        stalled_on = self._handle(user_id, self._user(user_id), event, pending)
        if stalled_on is None:
            self.stats.applied += 1
        return stalled_on

    def _handle(
        self, user_id: str, state: UserState | None, event: InputEvent, pending: Pending
    ) -> str | None:
        budget = self.budget
        budget.begin(event.at)
        try:
            outcome = handle(state, event, self.catalog, budget)
        except AwaitingBudget as stall:
            budget.rollback(stall)
            self._send_budget()
            return stall.pool_id
        except Exception as exc:  # a bug or an inconsistent catalog: never stop the partition
            budget.rollback_all()
            log.exception("engine failed on %s/%d@%d", pending.role, self.partition, pending.offset)
            self._dead(
                pending.value,
                f"{pending.role}/{self.partition}@{pending.offset}",
                f"engine error: {exc!r}",
                pending.key,
            )
            return None
        budget.commit()
        self._record(user_id, state, outcome)
        if budget.outbox:  # most events send the masters nothing: no call for them
            self._send_budget()
        return None

    def _send_budget(self) -> None:
        """Queue the buckets' messages for their pools' masters."""
        if not self.budget.outbox:
            return
        for message in self.budget.take_outbox():
            self.outputs.append(self._to_master(message))

    def _to_master(self, message: ToMaster) -> Output:
        pool_id = message.pool_id
        self._tally_budget(message.TYPE, pool_id)
        return Output(
            BUDGET_REQUESTS,
            pool_id.encode(),
            encode(message),
            master_partition(pool_id, self.partitions),
        )

    def _record(self, user_id: str, old: UserState | None, outcome: Outcome) -> None:
        new = outcome.state
        if new is not old:
            self.users[user_id] = new
            self.changed.add(user_id)
            deadline = None if new is None else new.next_deadline
            # Most changes keep the deadline: no index call for them.
            if deadline is not None and (old is None or deadline != old.next_deadline):
                self.cache.deadlines.update(
                    user_id, None if old is None else old.next_deadline, deadline
                )
        events = outcome.events
        if not events:
            return
        key = user_id.encode()
        by_type = self.stats.outputs_by_type
        for output in events:
            kind = output.TYPE
            by_type[kind] = by_type.get(kind, 0) + 1
            if kind in _REWARD_TYPES:
                role = REWARDS
                self._tally_reward(output)  # type: ignore[arg-type]
            else:
                role = TASK_EVENTS
            self.outputs.append(Output(role, key, encode(output)))

    def _tally_reward(self, reward: RewardEvent) -> None:
        tally_key = (reward.TYPE, reward.template_id, reward.pool_id or "")
        tally = self.stats.rewards.get(tally_key)
        if tally is None:
            tally = self.stats.rewards[tally_key] = [0, 0]
        tally[0] += 1
        tally[1] += reward.amount_cents

    def _tally_budget(self, kind: str, pool_id: str) -> None:
        by_type = self.stats.budget_by_type
        by_type[kind, pool_id] = by_type.get((kind, pool_id), 0) + 1

    def _user(self, user_id: str) -> UserState | None:
        users = self.users
        state = users.get(user_id, _ABSENT)
        if state is not _ABSENT:
            return state  # type: ignore[return-value]
        state = self.cache.take_user(user_id)
        if state is _ABSENT:
            state = self.load_user(user_id)
        users[user_id] = state  # type: ignore[assignment]
        return state  # type: ignore[return-value]

    def _dead(self, payload: bytes, source: str, reason: str, key: bytes | None) -> None:
        self.stats.dead += 1
        self.stats.dead_reasons.append(reason)
        self.notes.append(f"dead letter {source}: {reason}")
        self.outputs.append(
            Output(DEAD_LETTERS, key, encode(dead_letter_for(payload, source, reason)))
        )

    # ----------------------------------------------------------- result

    def result(self, seq: int) -> BatchResult:
        record = PartitionRecord(
            self.partition,
            seq,
            self.next_offset,
            self.max_at,
            _held_offsets(self.cache.held, self.cache.refetch),
            dict(sorted(self.budget.buckets.items())),
            None if (top := self.max_key) is None else (top[0], INPUT_ROLES[top[1]], top[2]),
            self.late_behind,
        )
        self.stats.outputs = len(self.outputs)
        self.cache.keep_users(self.users)
        return BatchResult(
            record,
            {user_id: self.users[user_id] for user_id in sorted(self.changed)},
            tuple(self.outputs),
            self.rewinds,
            self.stats,
            tuple(self.notes),
            self.idle_until,
        )


def late_event_id(role: str, partition: int, offset: int) -> str:
    """The `applied_late` event of one input message (one per message: it is
    applied once; a re-sent batch repeats the same id)."""
    return f"late-{role}-{partition}-{offset}"


def _held_offsets(
    pending: Mapping[str, set[int]], refetch: Mapping[str, set[int]]
) -> dict[str, tuple[int, ...]]:
    """What the record must keep: the pending offsets, and held offsets not yet
    fetched again since a restart."""
    held: dict[str, tuple[int, ...]] = {}
    for role in pending.keys() | refetch.keys():
        offsets = pending.get(role, set()) | refetch.get(role, set())
        if offsets:
            held[role] = tuple(sorted(offsets))
    return held


def process_batch(
    record: PartitionRecord,
    messages: Iterable[InMessage],
    *,
    catalog: Catalog,
    partitions: int,
    load_user: Callable[[str], UserState | None],
    cache: PartitionCache,
    highwater: Mapping[str, int | None],
    highwater_seen: Mapping[str, float | None] | None = None,
    max_pending: int = DEFAULT_MAX_PENDING,
    now: float = 0.0,
    max_idle: float = 0.0,
) -> BatchResult:
    """Accept, merge and apply one batch of one partition (see the module docstring).

    `messages` must be in offset order per topic (as a consumer delivers
    them); `highwater` is each input role's high watermark for this
    partition (None: unknown, which holds back events that might need it),
    and `highwater_seen` when the consumer last read it (the shell's clock;
    None: not tracked, as in a replay, where the log is complete).
    `now` is the shell's clock in seconds since the epoch (the scale of
    the messages' `appended_at`) and
    `max_idle` how long an event waits for an input that is caught up but
    behind it (0: not at all). `cache` is updated in place; drop it if this
    call raises.
    """
    batch = _Batch(record, catalog, partitions, load_user, cache, now, max_idle)
    for message in messages:
        batch.accept(message)
    batch.release(highwater, max_pending, highwater_seen)
    return batch.result(record.seq + 1)


def rebuild_deadlines(records: Iterable[tuple[str, int | None]]) -> DeadlineIndex:
    """The tick index of a partition from (user_id, next_deadline) pairs."""
    index = DeadlineIndex()
    for user_id, deadline in records:
        index.update(user_id, None, deadline)
    return index


def writes_for(result: BatchResult) -> list[tuple[bytes, bytes | None]]:
    """The table writes of a batch, the partition record last (None deletes a key)."""
    writes = user_writes(result.user_writes)
    writes.append((partition_key(result.record.partition), encode_partition(result.record)))
    return writes
