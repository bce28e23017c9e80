"""Progressive bucketing: a pool's budget split between one master and one
sub-bucket per stream partition, refilled a little at a time. Pure values and
functions; the stream agents, the replay tool and the tests all drive them.

Why (DESIGN §2): a hot pool kept under one key serialises every deduction of
every partition. Each partition instead pays rewards out of its own bucket,
in the same commit as the task change, and asks the pool's master for more
before it runs dry. The master never splits the stock up front: grants start
small, follow each partition's consumption and shrink as the master drains;
when one reward costs more than a partition's fair share of what is left,
the master recalls every bucket and the pool goes *central* (each waiting
reward gets exactly its cost from the master), so budget is never stranded
in fragments: the article's 300 cents over 10 buckets pay three 100-cent
rewards, wherever the users hash.

Messages (schemas.records, "budget events"):

    bucket -> master : refill_requested, bucket_returned   (pool_command from operators)
    master -> bucket : bucket_granted, refill_denied, bucket_recalled

Each direction numbers its messages per (pool, partition) with `seq`; the
receiver ignores a seq it has already applied, so at-least-once delivery
changes nothing.

Conservation, at every instant (units: cents, or items for an items pool):

    issued + master + sum(bucket balances) + in flight == total

where a bucket's balance = received - returned - issued (its own counters),
the master holds total - sum(granted) + sum(returns it read), and in flight
is what one side sent and the other has not applied yet. `issued` is net of
revocations: a revoked reward's units go back to the bucket that paid it.

Grant sizing (the progressive part), for a request from partition p:

    rate  = used / span                 units per µs of event time the bucket
                                        paid since its last grant
    want  = rate * lease_us             enough for `lease_us` of event time
    want  = max(want, used * lease_us / wall_span)
                                        and of the worker's clock (0: unknown)
    want  = clamp(want, initial, growth * previous grant to p)
    cap   = ceil(master * drain / partitions)
    grant = max(need, min(want, cap))   need = what the waiting reward lacks

`initial` = max(1, total // (partitions * initial_divisor)); so a first grant
is a small slice, a busy partition's grants double at most per refill (slow
start, like Leaf's adaptive step), and as the master drains every grant
shrinks with it (each may take at most `drain` of an equal share of what is
left). A bucket asks again (a top-up, units 0) when its balance falls under
half its last grant, so a steady partition rarely waits.

Going central: a waiting reward whose shortfall exceeds `cap` or the
master itself starts a recall round: every bucket returns all it holds; when
all have answered, the pool is central: buckets keep nothing at rest
(a revocation's units go straight back), each waiting reward is granted
exactly its shortfall, and a reward is refused (`refill_denied`) only when
the master - which by then holds everything not issued - cannot pay it.
With that refusal the master tells every bucket the pool is dry for
rewards above what it still holds (an unasked `refill_denied`), so later
ones are refused where they are earned, without a round trip each; budget
coming back (a revoked reward's return) re-opens them (an unasked, empty
`bucket_granted`).
`pools open` makes a central or closed pool progressive again; `pools close`
recalls everything and refuses every later request; `pools central` recalls
everything and runs the pool central from then on.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from app import ids
from app.frozen import fast_init
from schemas.records import (
    BucketGranted,
    BucketRecalled,
    BucketReturned,
    PoolCommand,
    RefillDenied,
    RefillRequested,
    ToBucket,
    ToMaster,
)

OPEN, CENTRAL, CLOSED = "open", "central", "closed"
OPEN_COMMAND, CLOSE_COMMAND, CENTRAL_COMMAND = "open", "close", "central"


@fast_init
@dataclass(frozen=True, slots=True)
class Allocation:
    """The grant-sizing parameters (see the module docstring)."""

    lease_us: int = 2_000_000  # a grant should last this much event time
    initial_divisor: int = 64  # first grant: total / (partitions * this)
    growth: int = 2  # a grant is at most this times the partition's previous one
    drain: float = 0.5  # a grant takes at most this share of an equal split of the master

    def initial(self, total: int, partitions: int) -> int:
        return max(1, total // (partitions * self.initial_divisor))


DEFAULT_ALLOCATION = Allocation()


def _msg_id(kind: str, pool_id: str, partition: int, seq: int) -> str:
    return ids.event_id(kind, pool_id, str(partition), seq)


# ===================================================================== bucket


@fast_init
@dataclass(frozen=True, slots=True)
class Bucket:
    """One pool's sub-bucket in one partition (kept in the partition's record)."""

    pool_id: str
    partition: int
    received: int = 0  # units granted to and applied here, ever
    returned: int = 0  # units sent back to the master, ever
    issued: int = 0  # units paid out here, net of revocations
    in_seq: int = 0  # the master's last message applied here
    out_seq: int = 0  # this bucket's last message to the master
    waiting: int = 0  # seq of the request not answered yet (0: none)
    denied: int = 0  # a refusal for this many units, not yet turned into rejections
    used: int = 0  # units paid since the last grant (for the rate)
    lease_at: int = -1  # event time of the last grant applied (-1: none yet)
    last_at: int = 0  # latest event time this bucket paid at
    last_grant: int = 0  # size of the last non-zero grant (top-up threshold)
    mode: str = OPEN
    refuse_from: int = 0  # the pool is dry for rewards of this many units or more (0: ask)
    # The worker's clock (µs) when the last grant was applied (-1: none, or
    # no clock, as in a replay): with `used`, its paying rate in real time.
    lease_wall: int = -1

    @property
    def balance(self) -> int:
        return self.received - self.returned - self.issued

    def with_issued(self, issued: int, used: int, last_at: int) -> Bucket:
        """`replace(self, issued=..., used=..., last_at=...)` as one direct
        constructor call, beside the fields it lists: this runs for every
        reward paid from a pool, and `dataclasses.replace` looks up all
        sixteen fields by name each time (2.2 % of a worker's GIL samples
        on the peer benchmark's log)."""
        return Bucket(
            self.pool_id,
            self.partition,
            self.received,
            self.returned,
            issued,
            self.in_seq,
            self.out_seq,
            self.waiting,
            self.denied,
            used,
            self.lease_at,
            last_at,
            self.last_grant,
            self.mode,
            self.refuse_from,
            self.lease_wall,
        )


def new_bucket(pool_id: str, partition: int) -> Bucket:
    return Bucket(pool_id, partition)


def _request(bucket: Bucket, units: int, at: int, now: int) -> tuple[Bucket, RefillRequested]:
    seq = bucket.out_seq + 1
    span = max(0, at - bucket.lease_at) if bucket.lease_at >= 0 else 0
    # 0 says "no clock" (a replay), or a clock that went back (a host behind
    # the one the grant arrived on): unknown, never "fast". A grant half used
    # up in the batch it arrived in (one reading of the clock per batch) went
    # fast: at least 1 µs.
    known = bucket.lease_wall >= 0 and now >= bucket.lease_wall and now > 0
    wall_span = max(1, now - bucket.lease_wall) if known else 0
    message = RefillRequested(
        _msg_id("refill_requested", bucket.pool_id, bucket.partition, seq),
        bucket.pool_id,
        bucket.partition,
        seq,
        units,
        bucket.balance,
        bucket.used,
        span,
        at,
        wall_span,
    )
    return replace(bucket, out_seq=seq, waiting=seq), message


def _return(bucket: Bucket, units: int, round_: int) -> tuple[Bucket, BucketReturned]:
    seq = bucket.out_seq + 1
    message = BucketReturned(
        _msg_id("bucket_returned", bucket.pool_id, bucket.partition, seq),
        bucket.pool_id,
        bucket.partition,
        seq,
        units,
        round_,
    )
    return replace(bucket, out_seq=seq, returned=bucket.returned + units), message


# What a debit can come to.
PAID, WAIT, REJECT = "paid", "wait", "reject"


def debit(
    bucket: Bucket, units: int, at: int, now: int = 0
) -> tuple[Bucket, str, tuple[RefillRequested, ...]]:
    """Pay `units` here if the balance allows; otherwise WAIT for the master
    (asking it, unless a request is already out), or REJECT when the master
    has refused at least this many units for the event being applied, has
    said the pool is dry for this size, or has closed the pool. `now` is the
    worker's clock in µs (0: none), reported with a request."""
    if units <= bucket.balance:
        paid = _paid(bucket, units, at)
        if paid.mode == OPEN and not paid.waiting and paid.balance < paid.last_grant // 2:
            paid, top_up = _request(paid, 0, at, now)
            return paid, PAID, (top_up,)
        return paid, PAID, ()
    if bucket.denied and units >= bucket.denied:
        return bucket, REJECT, ()
    if (bucket.refuse_from and units >= bucket.refuse_from) or bucket.mode == CLOSED:
        return bucket, REJECT, ()  # refused here: no round trip per reward once dry
    if bucket.waiting:
        return bucket, WAIT, ()
    asked, request = _request(bucket, units, at, now)
    return asked, WAIT, (request,)


def credit(bucket: Bucket, units: int) -> Bucket:
    """A revoked reward's units come back to the bucket that paid them."""
    return bucket.with_issued(bucket.issued - units, bucket.used, bucket.last_at)


def _paid(bucket: Bucket, units: int, at: int) -> Bucket:
    return bucket.with_issued(bucket.issued + units, bucket.used + units, max(bucket.last_at, at))


def end_event(bucket: Bucket) -> tuple[Bucket, tuple[BucketReturned, ...]]:
    """After an event was applied in full: a refusal only ever covers the
    event it arrived for, and a central or closed pool keeps nothing in its
    buckets at rest (a revocation's units go straight back to the master)."""
    if bucket.denied:
        bucket = replace(bucket, denied=0)
    if bucket.mode != OPEN and bucket.balance > 0 and not bucket.waiting:
        bucket, back = _return(bucket, bucket.balance, 0)
        return bucket, (back,)
    return bucket, ()


def apply_to_bucket(
    bucket: Bucket, message: ToBucket, now: int = 0
) -> tuple[Bucket, tuple[BucketReturned, ...]]:
    """Apply one message from the master (a duplicate changes nothing); `now`
    is the worker's clock in µs (0: none)."""
    if message.seq <= bucket.in_seq:
        return bucket, ()
    if type(message) is BucketGranted:
        answered = message.request_seq == bucket.waiting
        bucket = replace(
            bucket,
            in_seq=message.seq,
            received=bucket.received + message.units,
            mode=message.mode,
        )
        if message.units:
            bucket = replace(
                bucket,
                used=0,
                lease_at=bucket.last_at,
                last_grant=message.units,
                lease_wall=now if now > 0 else -1,
            )
        if message.request_seq == 0:  # unasked: the pool opened, or budget came back
            bucket = replace(bucket, refuse_from=0)
        if answered:
            bucket = replace(bucket, waiting=0)
        return bucket, ()
    if type(message) is RefillDenied:
        if message.request_seq == 0:  # unasked: the pool is dry for this size
            return replace(bucket, in_seq=message.seq, refuse_from=message.units), ()
        answered = message.request_seq == bucket.waiting
        bucket = replace(bucket, in_seq=message.seq, denied=message.units)
        if answered:
            bucket = replace(bucket, waiting=0)
        return bucket, ()
    assert type(message) is BucketRecalled
    bucket = replace(bucket, in_seq=message.seq, mode=message.mode)
    bucket, back = _return(bucket, bucket.balance, message.round)
    return bucket, (back,)


# ===================================================================== master


@fast_init
@dataclass(frozen=True, slots=True)
class Waiting:
    """A request the master will answer when its recall round is over."""

    partition: int
    request_seq: int
    units: int
    balance: int
    used: int
    span_us: int
    wall_span_us: int = 0


@fast_init
@dataclass(frozen=True, slots=True)
class Master:
    """One pool's master bucket, owned by the allocator."""

    pool_id: str
    total: int
    partitions: int
    master: int
    mode: str = OPEN
    granted: tuple[int, ...] = ()  # per partition, ever
    returned: tuple[int, ...] = ()  # per partition, ever (as read here)
    in_seq: tuple[int, ...] = ()  # last bucket message read, per partition
    out_seq: tuple[int, ...] = ()  # last message sent, per partition
    last_grant: tuple[int, ...] = ()  # last non-zero grant, per partition
    round: int = 0  # the current (or last) recall round
    awaiting: frozenset[int] = frozenset()  # partitions yet to answer the round
    queue: tuple[Waiting, ...] = ()  # requests held while a round runs
    # Counters for operators (pools status) and the benchmark.
    requests: int = 0
    grants: int = 0
    denials: int = 0
    rounds: int = 0
    commands: tuple[str, ...] = field(default=())  # command event ids applied (dedup)
    floor: int = 0  # buckets were told: dry for rewards of this many units or more (0: not)

    @property
    def in_round(self) -> bool:
        return bool(self.awaiting)


def new_master(pool_id: str, total: int, partitions: int) -> Master:
    zeros = (0,) * partitions
    return Master(pool_id, total, partitions, total, OPEN, zeros, zeros, zeros, zeros, zeros)


def _set(values: tuple[int, ...], index: int, value: int) -> tuple[int, ...]:
    return (*values[:index], value, *values[index + 1 :])


def _send(master: Master, partition: int) -> tuple[Master, int]:
    seq = master.out_seq[partition] + 1
    return replace(master, out_seq=_set(master.out_seq, partition, seq)), seq


def _grant(
    master: Master, partition: int, units: int, request_seq: int
) -> tuple[Master, BucketGranted]:
    master, seq = _send(master, partition)
    master = replace(
        master,
        master=master.master - units,
        granted=_set(master.granted, partition, master.granted[partition] + units),
        grants=master.grants + 1,
    )
    if units:
        master = replace(master, last_grant=_set(master.last_grant, partition, units))
    message = BucketGranted(
        _msg_id("bucket_granted", master.pool_id, partition, seq),
        master.pool_id,
        partition,
        seq,
        units,
        request_seq,
        master.mode,
    )
    return master, message


def _deny(master: Master, waiting: Waiting) -> tuple[Master, RefillDenied]:
    master, seq = _send(master, waiting.partition)
    message = RefillDenied(
        _msg_id("refill_denied", master.pool_id, waiting.partition, seq),
        master.pool_id,
        waiting.partition,
        seq,
        waiting.units,
        waiting.request_seq,
    )
    return replace(master, denials=master.denials + 1), message


def _broadcast(
    master: Master, make: Callable[[Master, int, int], ToBucket]
) -> tuple[Master, list[ToBucket]]:
    """One message to every partition's bucket: `make(master, partition, seq)`."""
    out: list[ToBucket] = []
    for partition in range(master.partitions):
        master, seq = _send(master, partition)
        out.append(make(master, partition, seq))
    return master, out


def _start_round(master: Master, mode: str) -> tuple[Master, list[ToBucket]]:
    """Recall every bucket; requests wait in the queue until all have answered."""
    round_ = master.round + 1
    master = replace(
        master,
        mode=mode,
        round=round_,
        awaiting=frozenset(range(master.partitions)),
        rounds=master.rounds + 1,
    )
    return _broadcast(
        master,
        lambda m, partition, seq: BucketRecalled(
            _msg_id("bucket_recalled", m.pool_id, partition, seq),
            m.pool_id,
            partition,
            seq,
            round_,
            mode,
        ),
    )


def grant_size(master: Master, waiting: Waiting, params: Allocation) -> int:
    """How much to grant a progressive (open) pool's request (module docstring)."""
    need = max(0, waiting.units - waiting.balance)
    initial = params.initial(master.total, master.partitions)
    previous = master.last_grant[waiting.partition]
    if waiting.span_us > 0:
        want = waiting.used * params.lease_us // waiting.span_us
    else:
        want = waiting.used * params.growth  # no event time passed: grow by the factor
    if waiting.wall_span_us > 0:
        # Enough for a lease of the worker's own time as well: a backlog
        # worked off races through event time, and a grant sized for 2 s of
        # it lasts one fetch; every refill would then stall the partition.
        want = max(want, waiting.used * params.lease_us // waiting.wall_span_us)
    want = min(max(want, initial), params.growth * max(previous, initial))
    return min(max(need, min(want, _fair_cap(master, params))), master.master)


def _fair_cap(master: Master, params: Allocation) -> int:
    """The most one grant may take: `drain` of an equal share of the master."""
    return -(-int(master.master * params.drain) // master.partitions)


def _serve(master: Master, waiting: Waiting, params: Allocation) -> tuple[Master, list[ToBucket]]:
    """Answer one request (no round running)."""
    need = max(0, waiting.units - waiting.balance)
    if master.mode == OPEN:
        if need > _fair_cap(master, params):
            # The shortfall is more than a fair share of what is left:
            # fragments are forming. Collect everything, serve from the centre.
            master, recalls = _start_round(master, CENTRAL)
            return replace(master, queue=(*master.queue, waiting)), recalls
        size = grant_size(master, waiting, params)  # >= need: need <= cap <= master
        master, granted = _grant(master, waiting.partition, size, waiting.request_seq)
        return master, [granted]
    if waiting.units == 0:  # a top-up: central and closed pools keep nothing in buckets
        master, granted = _grant(master, waiting.partition, 0, waiting.request_seq)
        return master, [granted]
    if master.mode == CENTRAL and need <= master.master:
        master, granted = _grant(master, waiting.partition, need, waiting.request_seq)
        return master, [granted]
    master, denial = _deny(master, waiting)
    if master.mode == CENTRAL and (master.floor == 0 or master.floor > master.master + 1):
        master, dry = _announce_dry(master)
        return master, [denial, *dry]
    return master, [denial]


def _announce_dry(master: Master, floor: int | None = None) -> tuple[Master, list[ToBucket]]:
    """Tell every bucket the pool cannot pay more than the master holds, so a
    dry pool refuses where the reward is earned instead of a round trip each.
    Budget that comes back (a revoked reward) takes it back (`_announce_open`);
    a closed pool announces a floor of 1 (nothing is paid)."""
    floor = master.master + 1 if floor is None else floor
    return _broadcast(
        replace(master, floor=floor),
        lambda m, partition, seq: RefillDenied(
            _msg_id("refill_denied", m.pool_id, partition, seq),
            m.pool_id,
            partition,
            seq,
            floor,
            0,
        ),
    )


def _announce_open(master: Master) -> tuple[Master, list[ToBucket]]:
    """Budget came back to a pool announced dry: every bucket asks again."""
    master = replace(master, floor=0)
    out: list[ToBucket] = []
    for partition in range(master.partitions):
        master, granted = _grant(master, partition, 0, 0)
        out.append(granted)
    return master, out


def _end_round(master: Master, params: Allocation) -> tuple[Master, list[ToBucket]]:
    """Every bucket answered: serve the held requests in order. Each asker
    returned what it held, so its whole cost is now the shortfall."""
    queue = master.queue
    master = replace(master, queue=())
    out: list[ToBucket] = []
    for waiting in queue:
        if master.in_round:  # a request re-opened a round: hold the rest again
            master = replace(master, queue=(*master.queue, waiting))
            continue
        emptied = replace(waiting, balance=0)
        master, sent = _serve(master, emptied, params)
        out += sent
    if master.in_round:
        return master, out
    # A command that came during the round decides what the buckets hear now:
    # the recalls told them "central" or "closed", which may be stale.
    if master.mode == OPEN:  # `pools open` during the round
        master, warm = _open_buckets(master, params, reopened=True)
        out += warm
    elif master.mode == CLOSED:  # refuse locally, even if the recall said "central"
        master, closed = _announce_dry(master, floor=1)
        out += closed
    return master, out


def allocate(
    master: Master, message: ToMaster, params: Allocation = DEFAULT_ALLOCATION
) -> tuple[Master, list[ToBucket]]:
    """Apply one message to the pool's master; return what to send to buckets."""
    if type(message) is PoolCommand:
        return _command(master, message, params)
    partition = message.partition  # type: ignore[union-attr]
    if not 0 <= partition < master.partitions:
        raise ValueError(
            f"pool {master.pool_id}: message from partition {partition}, "
            f"but the pool has {master.partitions} partitions"
        )
    if message.seq <= master.in_seq[partition]:  # type: ignore[union-attr]
        return master, []  # a duplicate
    master = replace(master, in_seq=_set(master.in_seq, partition, message.seq))  # type: ignore[union-attr]
    if type(message) is BucketReturned:
        master = replace(
            master,
            master=master.master + message.units,
            returned=_set(master.returned, partition, master.returned[partition] + message.units),
        )
        if message.round == master.round and partition in master.awaiting:
            master = replace(master, awaiting=master.awaiting - {partition})
            if not master.awaiting:
                return _end_round(master, params)
        if master.floor and message.units and master.mode == CENTRAL:
            return _announce_open(master)
        return master, []
    assert type(message) is RefillRequested
    master = replace(master, requests=master.requests + 1)
    waiting = Waiting(
        partition,
        message.seq,
        message.units,
        message.balance,
        message.used,
        message.span_us,
        message.wall_span_us,
    )
    if master.in_round:
        return replace(master, queue=(*master.queue, waiting)), []
    return _serve(master, waiting, params)


def _command(
    master: Master, command: PoolCommand, params: Allocation
) -> tuple[Master, list[ToBucket]]:
    if command.event_id in master.commands:
        return master, []
    master = replace(master, commands=(*master.commands[-31:], command.event_id))
    if command.command == CENTRAL_COMMAND:
        # Every deduction at the master from now on (until `open`): what a
        # pool about to run dry, or a benchmark of the hot spot, asks for.
        if master.mode != OPEN or master.in_round:
            return master, []
        return _start_round(master, CENTRAL)
    if command.command == CLOSE_COMMAND:
        if master.mode == CLOSED and not master.in_round:
            return master, []
        if master.in_round:  # let the running round finish; it drains everything
            return replace(master, mode=CLOSED), []
        return _start_round(master, CLOSED)
    if command.command != OPEN_COMMAND:
        raise ValueError(f"pool {master.pool_id}: unknown command {command.command!r}")
    reopened = master.mode != OPEN or master.floor > 0
    master = replace(master, mode=OPEN, floor=0)
    if master.in_round:
        return master, []  # the buckets hear of it when the round ends
    return _open_buckets(master, params, reopened)


def _open_buckets(
    master: Master, params: Allocation, reopened: bool
) -> tuple[Master, list[ToBucket]]:
    """Warm every bucket with a first slice so the first rewards need not
    wait; a re-opened pool's buckets also learn it is progressive again (an
    unasked grant clears a dry floor and a closed or central mode)."""
    out: list[ToBucket] = []
    initial = params.initial(master.total, master.partitions)
    for partition in range(master.partitions):
        size = min(initial, _fair_cap(master, params), master.master)
        if size or reopened:
            master, granted = _grant(master, partition, size, 0)
            out.append(granted)
    return master, out


# ============================================================ conservation


@fast_init
@dataclass(frozen=True, slots=True)
class PoolBalanceSheet:
    """Where every unit of a pool is: the conservation check, in numbers."""

    pool_id: str
    total: int
    master: int
    buckets: Mapping[int, int]  # partition -> balance
    issued: int
    grants_in_flight: int  # granted by the master, not yet applied by a bucket
    returns_in_flight: int  # sent back by a bucket, not yet read by the master

    @property
    def in_flight(self) -> int:
        return self.grants_in_flight + self.returns_in_flight

    @property
    def accounted(self) -> int:
        return self.issued + self.master + sum(self.buckets.values()) + self.in_flight

    @property
    def balanced(self) -> bool:
        return self.accounted == self.total and 0 <= self.issued <= self.total


def balance_sheet(master: Master, buckets: Sequence[Bucket]) -> PoolBalanceSheet:
    """Combine the master's and the buckets' own counters (one bucket per
    partition at most; a partition never heard of holds nothing)."""
    by_partition = {b.partition: b for b in buckets}
    grants_in_flight = returns_in_flight = 0
    for partition in range(master.partitions):
        bucket = by_partition.get(partition)
        received = 0 if bucket is None else bucket.received
        returned = 0 if bucket is None else bucket.returned
        grants_in_flight += master.granted[partition] - received
        returns_in_flight += returned - master.returned[partition]
    return PoolBalanceSheet(
        master.pool_id,
        master.total,
        master.master,
        {p: b.balance for p, b in sorted(by_partition.items())},
        sum(b.issued for b in buckets),
        grants_in_flight,
        returns_in_flight,
    )


def master_partition(pool_id: str, partitions: int) -> int:
    """Which partition of the allocator's topic owns a pool's master (stable
    across processes and languages: CRC-32 of the pool id)."""
    return zlib.crc32(pool_id.encode()) % partitions


# ================================================= the engine's Budget, bucketed


class AwaitingBudget(Exception):
    """The event being applied needs budget its bucket does not hold yet: apply
    it again once the master has answered (its request is already out)."""

    def __init__(self, pool_id: str) -> None:
        super().__init__(pool_id)
        self.pool_id = pool_id


class PartitionBudget:
    """`app.budget.Budget` over one partition's buckets, one event at a time.

    `begin(at)` before the engine applies an event, then exactly one of
    `commit()` (the event's outcome is kept) or `rollback(stall)` (the engine
    raised `AwaitingBudget`: the outcome is dropped, every bucket is as
    before the event except that the request for the missing budget stays
    sent). `outbox` collects the messages to the masters, in order.
    """

    __slots__ = (
        "_at",
        "_now",
        "_snapshot",
        "_staged",
        "_touched",
        "_unsettled",
        "buckets",
        "outbox",
        "partition",
    )

    def __init__(self, partition: int, buckets: Mapping[str, Bucket], now: int = 0) -> None:
        self.partition = partition
        self._now = now  # the worker's clock in µs for this batch (0: none, as in a replay)
        self.buckets: dict[str, Bucket] = dict(buckets)
        self.outbox: list[ToMaster] = []
        self._snapshot: dict[str, Bucket] = {}
        self._staged: list[RefillRequested] = []
        self._touched: set[str] = set()
        self._at = 0
        # Some bucket may hold a refusal or a central grant to settle after the
        # next event (set by messages from the masters and by rollbacks).
        self._unsettled = True

    def bucket(self, pool_id: str) -> Bucket:
        found = self.buckets.get(pool_id)
        return new_bucket(pool_id, self.partition) if found is None else found

    def waiting_on(self, pool_id: str) -> bool:
        """Still no answer to the request a stalled event waits for?"""
        return bool(self.bucket(pool_id).waiting)

    def begin(self, at: int) -> None:
        # Called for every event, most of which touch no pool: reuse, do not allocate.
        self._at = at
        if self._snapshot:
            self._snapshot.clear()
        if self._staged:
            self._staged.clear()
        if self._touched:
            self._touched.clear()

    def _touch(self, pool_id: str) -> Bucket:
        bucket = self.bucket(pool_id)
        if pool_id not in self._touched:
            self._touched.add(pool_id)
            self._snapshot[pool_id] = bucket
        return bucket

    def try_debit(self, pool_id: str, units: int, reward_id: str = "") -> bool:
        bucket, verdict, requests = debit(self._touch(pool_id), units, self._at, self._now)
        self.buckets[pool_id] = bucket
        self._staged.extend(requests)
        if verdict == PAID:
            return True
        if verdict == REJECT:
            return False
        raise AwaitingBudget(pool_id)

    def credit(self, pool_id: str, units: int) -> None:
        self.buckets[pool_id] = credit(self._touch(pool_id), units)

    def commit(self) -> None:
        if self._staged:
            self.outbox.extend(self._staged)
        if self._touched or self._unsettled:  # else `_at_rest` has nothing to do
            self._at_rest()

    def _at_rest(self) -> None:
        """After an event: `end_event` for the buckets it touched and for any
        other that holds what only that event could use (a refusal, or a
        central grant that arrived for a pool its retry then did not need)."""
        if not self._touched and not self._unsettled:
            return  # the common case: an event that did not touch any pool
        for pool_id, bucket in sorted(self.buckets.items()):
            if (
                pool_id in self._touched
                or bucket.denied
                or (bucket.mode != OPEN and bucket.balance > 0 and not bucket.waiting)
            ):
                bucket, returns = end_event(bucket)
                self.buckets[pool_id] = bucket
                self.outbox.extend(returns)
        self._touched = set()
        self._unsettled = any(
            b.denied or (b.mode != OPEN and b.balance > 0) for b in self.buckets.values()
        )

    def rollback(self, stall: AwaitingBudget) -> None:
        stalled = self.buckets[stall.pool_id]
        for pool_id, before in self._snapshot.items():
            self.buckets[pool_id] = before
        # Keep the stalled pool's request: it is what the retry waits for.
        request = next(
            (r for r in self._staged if r.pool_id == stall.pool_id and r.seq == stalled.waiting),
            None,
        )
        if request is not None:
            before = self._snapshot[stall.pool_id]
            self.buckets[stall.pool_id] = replace(
                before, out_seq=stalled.out_seq, waiting=stalled.waiting
            )
            self.outbox.append(request)
        self._touched = set()
        self._unsettled = True

    def rollback_all(self) -> None:
        """The engine failed on the event (it becomes a dead letter): forget
        everything it did; what was granted or refused for it is at rest now."""
        for pool_id, before in self._snapshot.items():
            self.buckets[pool_id] = before
        self._staged = []
        self._touched = set()
        self._at_rest()

    def apply(self, message: ToBucket) -> None:
        """A message from a master (between events)."""
        bucket, returns = apply_to_bucket(self.bucket(message.pool_id), message, self._now)
        self.buckets[message.pool_id] = bucket
        self.outbox.extend(returns)
        self._unsettled = True

    def take_outbox(self) -> list[ToMaster]:
        out, self.outbox = self.outbox, []
        return out
