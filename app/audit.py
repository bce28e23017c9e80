"""The audit's core: replay what the workers read, compare with what they wrote.

Pure: the shell (`taskstream.audit`) reads the topics and hands in values.

1. **Replay.** Every input message is judged as the processor judges it
   (`streams.processor.decode_message`: unusable ones become the same dead
   letters) and applied in the processor's order: per partition by
   `(at, role rank, offset)`, each partition with its own users and tick
   index, so a tick expires exactly the users of its partition.
2. **Budget decisions are facts from the log.** Which partition's bucket
   held the last units of a pool when it ran dry is timing, not a function
   of the inputs (docs/bucketing.md), so the replay does not re-decide it:
   `RecordedBudget` answers each reward's debit with what the workers
   decided for that reward id (granted from this pool, or rejected), as
   recorded in the reward topic. A reward the log has no decision for is
   decided by the pool's remaining units, and shows up as missing. Whether
   the recorded decisions were legitimate is the budget reconciliation's job
   (`reconcile`).
3. **So is the merge order, where it left event time.** An input that
   reached a worker after a later event of its partition had been applied
   was applied as it came, and the worker recorded where
   (`applied_late`, on the late-inputs topic): the replay applies it at
   that place, not at its event time.
4. **Compare** by `event_id`, per output topic: expected but not written
   (missing), written but not expected (extra), written with other content
   (different). Identical copies of one event are at-least-once delivery,
   counted, not findings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.catalog import Catalog, Pool
from app.dead_letters import dead_letter_for
from app.engine import Outcome
from app.replayer import Replayer
from schemas.codec import to_wire
from schemas.errors import SchemaError
from schemas.records import (
    REWARD_RECORDS,
    AppliedLate,
    BucketGranted,
    BucketRecalled,
    BucketReturned,
    InputEvent,
    PoolCommand,
    Record,
    RefillDenied,
    RefillRequested,
    RewardGranted,
    RewardRejected,
    RewardRevoked,
    Tick,
)

# Output topics (short names, as in streams.config).
TASK_EVENTS, REWARDS, DEAD_LETTERS = "task-events", "rewards", "dead-letters"
OUTPUT_TOPICS = (TASK_EVENTS, REWARDS, DEAD_LETTERS)
_REWARD_TYPES = frozenset(cls.TYPE for cls in REWARD_RECORDS)

# Findings.
MISSING, EXTRA, DIFFERENT = "missing", "extra", "different"


def units_of(pools: Mapping[str, Pool], pool_id: str, amount_cents: int) -> int:
    """What one reward costs its pool: its amount, or one item."""
    pool = pools.get(pool_id)
    return 1 if pool is not None and pool.unit == "items" else amount_cents


# ------------------------------------------------------------ decisions


@dataclass(frozen=True, slots=True)
class Decision:
    """What the workers decided for one reward id."""

    granted: bool
    pool_id: str | None
    units: int
    # A lottery grant names its prize: only the debit of that prize's cost
    # from that pool is the recorded one (the draw tried the prizes above it
    # first). Other rewards are matched by pool alone, so an altered amount
    # shows up as a different event, not as a refusal.
    exact: bool


def decisions_from(rewards: Iterable[Record], catalog: Catalog) -> dict[str, Decision]:
    """reward id -> the decision recorded for it (its grant or its rejection)."""
    decisions: dict[str, Decision] = {}
    for record in rewards:
        if isinstance(record, RewardGranted):
            decisions[record.reward_id] = _granted(record, catalog)
        elif isinstance(record, RewardRejected):
            decisions.setdefault(record.reward_id, Decision(False, record.pool_id, 0, False))
    return decisions


def _granted(record: RewardGranted, catalog: Catalog) -> Decision:
    if record.pool_id is None:
        return Decision(True, None, 0, False)
    if record.prize_id is None:
        return Decision(True, record.pool_id, 0, False)
    # A prize's cost comes from the catalog, not from the record, so a record
    # whose amount was altered still matches its prize (and shows as different).
    template = catalog.templates.get(record.template_id)
    prizes = () if template is None else template.reward.prizes
    amount = next(
        (p.amount_cents for p in prizes if p.prize_id == record.prize_id), record.amount_cents
    )
    return Decision(True, record.pool_id, units_of(catalog.pools, record.pool_id, amount), True)


class RecordedBudget:
    """A `Budget` that answers each debit with the recorded decision.

    Tracks each pool's remaining units as the replay pays and takes back, to
    decide rewards the log holds no decision for. (An overdraft in the log,
    a pool paying beyond its total, is the pool reconciliation's finding:
    `issued <= total`, from the reward topic itself.)
    """

    __slots__ = ("_decisions", "remaining", "undecided")

    def __init__(self, pools: Iterable[Pool], decisions: Mapping[str, Decision]) -> None:
        self._decisions = decisions
        self.remaining: dict[str, int] = {p.pool_id: p.total for p in pools}
        self.undecided: list[str] = []  # reward ids the log had no decision for

    def try_debit(self, pool_id: str, units: int, reward_id: str) -> bool:
        decision = self._decisions.get(reward_id)
        left = self.remaining.get(pool_id, 0)
        if decision is None:
            self.undecided.append(reward_id)
            paid = units <= left
        else:
            paid = (
                decision.granted
                and decision.pool_id == pool_id
                and (not decision.exact or decision.units == units)
            )
        if paid:
            self.remaining[pool_id] = left - units
        return paid

    def credit(self, pool_id: str, units: int) -> None:
        self.remaining[pool_id] = self.remaining.get(pool_id, 0) + units


# --------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class InputMessage:
    """One message of an input topic, as read."""

    role: str  # claims | orders | refunds | ticks
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    source: str  # "<full topic>/<partition>@<offset>", as dead letters name it


@dataclass(frozen=True, slots=True)
class Applied:
    """One input event applied to one user (what explain prints)."""

    message: InputMessage
    event: InputEvent
    user_id: str
    outcome: Outcome


@dataclass(slots=True)
class Expected:
    outputs: list[tuple[str, Record]] = field(default_factory=list)  # (topic, record)
    events: int = 0
    dead_letters: int = 0
    applied_late: int = 0  # inputs placed where the workers recorded they applied them
    replayers: dict[int, Replayer] = field(default_factory=dict)  # partition -> its users


DecodeMessage = Callable[[str, bytes | None, bytes | None], InputEvent]
RANK = {"claims": 0, "orders": 1, "refunds": 2, "ticks": 3}
# An input message by (role, partition, offset).
MessageRef = tuple[str, int, int]


def late_from(records: Iterable[Record]) -> dict[MessageRef, AppliedLate]:
    """The workers' `applied_late` decisions by the input message they place
    (a re-sent batch repeats one: the same message, the same place)."""
    return {(r.topic, r.partition, r.offset): r for r in records if isinstance(r, AppliedLate)}


def _order_key(
    message: InputMessage, event: InputEvent, late: Mapping[MessageRef, AppliedLate]
) -> tuple[int, int, int, int, int]:
    """Where a message goes in the replay: by `(at, role, offset)` per
    partition, or, applied late, right after the event its record names
    (and after the ones applied late behind that event before it)."""
    placed = late.get((message.role, message.partition, message.offset))
    if placed is None:
        return (event.at, RANK[message.role], message.partition, message.offset, 0)
    return (
        placed.after_at,
        RANK[placed.after_topic],
        message.partition,
        placed.after_offset,
        placed.seq,
    )


def replay_inputs(
    messages: Iterable[InputMessage],
    catalog: Catalog,
    budget: RecordedBudget,
    decode_message: DecodeMessage,
    *,
    late: Mapping[MessageRef, AppliedLate] | None = None,
    on_applied: Callable[[Applied], object] | None = None,
) -> Expected:
    """Apply every input message in the processor's order (with `late`, the
    workers' recorded merge decisions); collect the outputs."""
    expected = Expected()
    late = late or {}
    queue: list[tuple[tuple[int, int, int, int, int], InputMessage, InputEvent]] = []
    for message in messages:
        try:
            event = decode_message(message.role, message.key, message.value)
        except SchemaError as exc:
            letter = dead_letter_for(message.value or b"", message.source, str(exc))
            expected.outputs.append((DEAD_LETTERS, letter))
            expected.dead_letters += 1
            continue
        key = _order_key(message, event, late)
        expected.applied_late += key[4] > 0
        queue.append((key, message, event))
    queue.sort(key=lambda item: item[0])
    for _, message, event in queue:
        expected.events += 1
        replayer = expected.replayers.get(message.partition)
        if replayer is None:
            replayer = expected.replayers[message.partition] = Replayer(catalog, budget)
        for user_id, outcome in _apply(replayer, message, event, expected):
            for output in outcome.events:
                topic = REWARDS if output.TYPE in _REWARD_TYPES else TASK_EVENTS
                expected.outputs.append((topic, output))
            if on_applied is not None:
                on_applied(Applied(message, event, user_id, outcome))
    return expected


def _apply(
    replayer: Replayer, message: InputMessage, event: InputEvent, expected: Expected
) -> list[tuple[str, Outcome]]:
    """Apply one event as the processor does: a tick user by user, and an
    engine failure (a bug, or a catalog the core cannot handle) becomes a
    dead letter for that user's part, never a stop."""
    if not isinstance(event, Tick):
        try:
            return replayer.apply(event)
        except Exception as exc:
            _engine_error(message, exc, expected)
            return []
    touched: list[tuple[str, Outcome]] = []
    for user_id in replayer.due_users(event.at):
        try:
            outcome = replayer.tick_user(user_id, event)
        except Exception as exc:
            _engine_error(message, exc, expected)
            continue
        if outcome is not None:
            touched.append((user_id, outcome))
    return touched


def _engine_error(message: InputMessage, exc: Exception, expected: Expected) -> None:
    source = f"{message.role}/{message.partition}@{message.offset}"
    letter = dead_letter_for(message.value or b"", source, f"engine error: {exc!r}")
    expected.outputs.append((DEAD_LETTERS, letter))


# --------------------------------------------------------------- compare


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # missing | extra | different
    topic: str
    event_id: str
    expected: Mapping[str, Any] | None
    actual: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Comparison:
    findings: tuple[Finding, ...]
    expected: int  # distinct expected events
    actual: int  # distinct events found (by id)
    duplicates: int  # identical extra copies (at-least-once delivery)

    @property
    def agrees(self) -> bool:
        return not self.findings


def compare(
    expected: Iterable[tuple[str, Record]], actual: Iterable[tuple[str, Mapping[str, Any]]]
) -> Comparison:
    """Expected records vs what the topics hold (wire dicts), by (topic, event_id)."""
    wanted: dict[tuple[str, str], Mapping[str, Any]] = {}
    for topic, record in expected:
        wanted[(topic, _event_id(record))] = to_wire(record)
    found: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    duplicates = 0
    for topic, doc in actual:
        copies = found.setdefault((topic, str(doc.get("event_id"))), [])
        if doc in copies:
            duplicates += 1
        else:
            copies.append(doc)
    findings: list[Finding] = []
    for key, doc in wanted.items():
        if key not in found:
            findings.append(Finding(MISSING, key[0], key[1], doc, None))
            continue
        findings.extend(
            Finding(DIFFERENT, key[0], key[1], doc, copy) for copy in found[key] if copy != doc
        )
    for key, copies in found.items():
        if key not in wanted:
            findings.extend(Finding(EXTRA, key[0], key[1], None, copy) for copy in copies)
    findings.sort(key=lambda f: (f.topic, f.kind, f.event_id))
    return Comparison(tuple(findings), len(wanted), len(found), duplicates)


def _event_id(record: Record) -> str:
    return str(getattr(record, "event_id"))  # noqa: B009  (every record has one)


# ------------------------------------------------------------- reconcile


@dataclass(frozen=True, slots=True)
class PoolAudit:
    """One pool, from the reward topic and the budget topics."""

    pool_id: str
    unit: str
    total: int
    granted: int  # rewards granted (count)
    revoked: int  # rewards taken back (count)
    rejected: int  # rewards refused for budget (count)
    issued: int  # units paid and not taken back
    revoked_units: int
    to_buckets: int  # units the master granted to buckets
    from_buckets: int  # units buckets returned
    refill_requests: int
    denials: int  # refill_denied messages
    recalls: int
    commands: tuple[str, ...]
    burn_down: tuple[tuple[int, int], ...]  # (at, issued so far), in event time
    dry_at: int | None  # the first refusal's event time
    problems: tuple[str, ...]
    # The refill_denied messages split: answers to a bucket's request (what
    # `pools status` counts as the master's refusals), and the unasked
    # "dry for rewards of N or more" notices it broadcast to every bucket.
    refused_requests: int = 0
    dry_notices: int = 0

    @property
    def granted_units(self) -> int:
        return self.issued + self.revoked_units

    @property
    def at_master(self) -> int:
        return self.total - self.to_buckets + self.from_buckets

    @property
    def in_buckets(self) -> int:
        return self.to_buckets - self.from_buckets - self.issued


def reconcile(
    pools: Mapping[str, Pool],
    rewards: Iterable[Record],
    budget_messages: Iterable[Record],
    partition_of_user: Callable[[str], int],
) -> list[PoolAudit]:
    """Per pool: what was paid, where the rest is, and whether it adds up.

    `rewards` and `budget_messages` are distinct records (duplicates removed).
    Checks: 0 <= issued <= total; the master never grants more than it has;
    no partition's buckets paid more than they received; a reward refused
    for budget only once the master had refused a refill (announced the pool
    dry) or the pool was closed.
    """
    audits = []
    reward_list = sorted(rewards, key=lambda r: (getattr(r, "at", 0), _event_id(r)))
    messages = list(budget_messages)
    for pool_id in sorted(pools):
        pool = pools[pool_id]
        audits.append(_pool_audit(pool, reward_list, messages, partition_of_user))
    return audits


def _unjustified_refusals(
    refusals: Sequence[tuple[int, int]], denied: Mapping[int, list[int]], closed: bool
) -> list[int]:
    """The partitions of refusals no master answer explains. A bucket refuses
    a reward only after its master refused it a refill of at most that
    reward's cost (asked, or unasked when the master announces the pool dry:
    its units are the floor from which rewards are refused), or after the
    pool was closed."""
    if closed:
        return []
    return [
        partition
        for partition, units in refusals
        if not any(floor <= units for floor in denied.get(partition, ()))
    ]


def _pool_audit(
    pool: Pool,
    rewards: Sequence[Record],
    messages: Sequence[Record],
    partition_of_user: Callable[[str], int],
) -> PoolAudit:
    pid = pool.pool_id
    pools = {pid: pool}
    granted = revoked = rejected = issued = revoked_units = 0
    paid_by_partition: dict[int, int] = {}
    burn_down: list[tuple[int, int]] = []
    dry_at: int | None = None
    refusals: list[tuple[int, int]] = []  # (partition, units) of each rejected reward
    for record in rewards:
        if getattr(record, "pool_id", None) != pid:
            continue
        assert isinstance(record, RewardGranted | RewardRevoked | RewardRejected)
        units = units_of(pools, pid, record.amount_cents)
        if isinstance(record, RewardRejected):
            rejected += 1
            dry_at = record.at if dry_at is None else dry_at
            refusals.append((partition_of_user(record.user_id), units))
            continue
        sign = 1 if isinstance(record, RewardGranted) else -1
        if sign > 0:
            granted += 1
        else:
            revoked += 1
            revoked_units += units
        issued += sign * units
        partition = partition_of_user(record.user_id)
        paid_by_partition[partition] = paid_by_partition.get(partition, 0) + sign * units
        burn_down.append((record.at, issued))
    to_buckets = from_buckets = requests = denials = recalls = 0
    refused_requests = dry_notices = 0
    received_by_partition: dict[int, int] = {}
    denied_by_partition: dict[int, list[int]] = {}
    commands: list[str] = []
    for message in messages:
        if getattr(message, "pool_id", None) != pid:
            continue
        if isinstance(message, BucketGranted):
            to_buckets += message.units
            received_by_partition[message.partition] = (
                received_by_partition.get(message.partition, 0) + message.units
            )
        elif isinstance(message, BucketReturned):
            from_buckets += message.units
            received_by_partition[message.partition] = (
                received_by_partition.get(message.partition, 0) - message.units
            )
        elif isinstance(message, RefillRequested):
            requests += 1
        elif isinstance(message, RefillDenied):
            denials += 1
            if message.request_seq:
                refused_requests += 1
            else:
                dry_notices += 1
            denied_by_partition.setdefault(message.partition, []).append(message.units)
        elif isinstance(message, BucketRecalled):
            recalls += 1
        elif isinstance(message, PoolCommand):
            commands.append(message.command)
    problems: list[str] = []
    if not 0 <= issued <= pool.total:
        problems.append(f"issued {issued} is outside 0..{pool.total}")
    if to_buckets - from_buckets > pool.total:
        problems.append(
            f"the master granted {to_buckets - from_buckets} net to buckets, "
            f"more than the pool's total {pool.total}"
        )
    for partition in sorted(paid_by_partition.keys() | received_by_partition.keys()):
        paid = paid_by_partition.get(partition, 0)
        held = received_by_partition.get(partition, 0)
        if paid > held:
            problems.append(
                f"partition {partition} paid {paid} but its bucket received only {held} net"
            )
    unjustified = _unjustified_refusals(refusals, denied_by_partition, "close" in commands)
    if unjustified:
        problems.append(
            f"{len(unjustified)} reward(s) refused for budget in partition(s) "
            f"{sorted(set(unjustified))} although the master never refused that partition "
            "a refill of at most their cost (nor was the pool closed)"
        )
    return PoolAudit(
        pid, pool.unit, pool.total, granted, revoked, rejected, issued, revoked_units,
        to_buckets, from_buckets, requests, denials, recalls, tuple(commands),
        tuple(burn_down), dry_at, tuple(problems), refused_requests, dry_notices,
    )  # fmt: skip
