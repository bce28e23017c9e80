"""Versioned records for every event of the wire contract (DESIGN §4).

Frozen, slotted dataclasses: cheap to build, safe to share. Each field's
metadata names its wire kind (see `schemas.fields`); decoding, encoding and
the JSON Schema files are generated from these declarations. Instants are
epoch microseconds (int) inside, RFC 3339 UTC strings on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from app.frozen import fast_init
from schemas.fields import Kind


def _f(kind: Kind) -> Any:
    return field(metadata={"kind": kind})


class Record:
    """Base of every wire record: its `type` string and current `v`."""

    __slots__ = ()
    TYPE: ClassVar[str]
    V: ClassVar[int] = 1
    DESCRIPTION: ClassVar[str] = ""


# ------------------------------------------------------------------- inputs


@fast_init
@dataclass(frozen=True, slots=True)
class TaskClaim(Record):
    TYPE: ClassVar[str] = "task_claim"
    DESCRIPTION: ClassVar[str] = "A user asks to claim a task of a template."
    event_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    user_tags: tuple[str, ...] = _f(Kind.TAGS)


@fast_init
@dataclass(frozen=True, slots=True)
class OrderPaid(Record):
    TYPE: ClassVar[str] = "order_paid"
    DESCRIPTION: ClassVar[str] = "An order was paid (amount in integer cents)."
    event_id: str = _f(Kind.ID)
    order_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    amount_cents: int = _f(Kind.CENTS)
    channel: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)


@fast_init
@dataclass(frozen=True, slots=True)
class OrderRefunded(Record):
    TYPE: ClassVar[str] = "order_refunded"
    DESCRIPTION: ClassVar[str] = "Part or all of a paid order was refunded."
    event_id: str = _f(Kind.ID)
    refund_id: str = _f(Kind.ID)
    order_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    amount_cents: int = _f(Kind.CENTS)
    at: int = _f(Kind.TIME)


@fast_init
@dataclass(frozen=True, slots=True)
class Tick(Record):
    TYPE: ClassVar[str] = "tick"
    DESCRIPTION: ClassVar[str] = "Time passes (broadcast to every partition)."
    event_id: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)


# -------------------------------------------------------------- task events


@fast_init
@dataclass(frozen=True, slots=True)
class TaskClaimed(Record):
    TYPE: ClassVar[str] = "task_claimed"
    DESCRIPTION: ClassVar[str] = "A task instance was created for the user."
    event_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    task_id: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    caused_by: str = _f(Kind.ID)
    progress: int = _f(Kind.COUNT)
    target: int = _f(Kind.COUNT)
    deadline: int = _f(Kind.TIME)


@fast_init
@dataclass(frozen=True, slots=True)
class ClaimRejected(Record):
    TYPE: ClassVar[str] = "claim_rejected"
    DESCRIPTION: ClassVar[str] = "A claim was refused; task_id is null (no instance exists)."
    event_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    task_id: str | None = _f(Kind.OPT_ID)
    at: int = _f(Kind.TIME)
    caused_by: str = _f(Kind.ID)
    reason: str = _f(Kind.ID)


@fast_init
@dataclass(frozen=True, slots=True)
class TaskAdvanced(Record):
    TYPE: ClassVar[str] = "task_advanced"
    DESCRIPTION: ClassVar[str] = "A qualifying order raised the task's progress."
    event_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    task_id: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    caused_by: str = _f(Kind.ID)
    progress: int = _f(Kind.COUNT)
    target: int = _f(Kind.COUNT)
    order_id: str = _f(Kind.ID)


@fast_init
@dataclass(frozen=True, slots=True)
class TaskCompleted(Record):
    TYPE: ClassVar[str] = "task_completed"
    DESCRIPTION: ClassVar[str] = "The task's progress reached its target."
    event_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    task_id: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    caused_by: str = _f(Kind.ID)
    progress: int = _f(Kind.COUNT)
    target: int = _f(Kind.COUNT)
    order_id: str = _f(Kind.ID)


@fast_init
@dataclass(frozen=True, slots=True)
class TaskExpired(Record):
    TYPE: ClassVar[str] = "task_expired"
    DESCRIPTION: ClassVar[str] = "An unfinished task passed its deadline."
    event_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    task_id: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    caused_by: str = _f(Kind.ID)
    progress: int = _f(Kind.COUNT)
    target: int = _f(Kind.COUNT)
    deadline: int = _f(Kind.TIME)


@fast_init
@dataclass(frozen=True, slots=True)
class TaskRolledBack(Record):
    TYPE: ClassVar[str] = "task_rolled_back"
    DESCRIPTION: ClassVar[str] = (
        "A refund took back an order's contribution; status is the task's status after it."
    )
    event_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    task_id: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    caused_by: str = _f(Kind.ID)
    progress: int = _f(Kind.COUNT)
    target: int = _f(Kind.COUNT)
    order_id: str = _f(Kind.ID)
    refund_id: str = _f(Kind.ID)
    status: str = _f(Kind.ID)


# ------------------------------------------------------------ reward events


@fast_init
@dataclass(frozen=True, slots=True)
class RewardGranted(Record):
    TYPE: ClassVar[str] = "reward_granted"
    DESCRIPTION: ClassVar[str] = "A reward was paid from its pool (pool_id null: unbudgeted)."
    event_id: str = _f(Kind.ID)
    reward_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    task_id: str = _f(Kind.ID)
    amount_cents: int = _f(Kind.CENTS)
    prize_id: str | None = _f(Kind.OPT_ID)
    pool_id: str | None = _f(Kind.OPT_ID)
    reason: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    caused_by: str = _f(Kind.ID)


@fast_init
@dataclass(frozen=True, slots=True)
class RewardRevoked(Record):
    TYPE: ClassVar[str] = "reward_revoked"
    DESCRIPTION: ClassVar[str] = "A granted reward was clawed back; its amount returns to the pool."
    event_id: str = _f(Kind.ID)
    reward_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    task_id: str = _f(Kind.ID)
    amount_cents: int = _f(Kind.CENTS)
    prize_id: str | None = _f(Kind.OPT_ID)
    pool_id: str | None = _f(Kind.OPT_ID)
    reason: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    caused_by: str = _f(Kind.ID)


@fast_init
@dataclass(frozen=True, slots=True)
class RewardRejected(Record):
    TYPE: ClassVar[str] = "reward_rejected"
    DESCRIPTION: ClassVar[str] = "A reward the pool could not pay; final, never retried."
    event_id: str = _f(Kind.ID)
    reward_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    task_id: str = _f(Kind.ID)
    amount_cents: int = _f(Kind.CENTS)
    prize_id: str | None = _f(Kind.OPT_ID)
    pool_id: str | None = _f(Kind.OPT_ID)
    reason: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    caused_by: str = _f(Kind.ID)


# ------------------------------------------------------------ budget events
#
# Progressive bucketing (docs/bucketing.md): buckets (one per pool and stream
# partition) talk to the master allocator (one per pool) through two topics.
# `seq` numbers each direction's messages per (pool, partition) so either
# side drops a duplicate; `mode` tells a bucket how the pool is run now.


@fast_init
@dataclass(frozen=True, slots=True)
class RefillRequested(Record):
    TYPE: ClassVar[str] = "refill_requested"
    V: ClassVar[int] = 2
    DESCRIPTION: ClassVar[str] = (
        "A bucket asks its pool's master for budget: units > 0 when a reward waits "
        "for it (units is that reward's cost), 0 for a top-up before it runs dry."
    )
    event_id: str = _f(Kind.ID)
    pool_id: str = _f(Kind.ID)
    partition: int = _f(Kind.COUNT)
    seq: int = _f(Kind.COUNT)
    units: int = _f(Kind.COUNT)
    balance: int = _f(Kind.COUNT)  # what the bucket holds when it asks
    used: int = _f(Kind.COUNT)  # units it paid since its last grant
    span_us: int = _f(Kind.COUNT)  # event time those payments took
    at: int = _f(Kind.TIME)
    # v2: the worker's own clock over those payments (0: unknown, as in a
    # replay). Recorded here, so the master's answer is a fold of the log.
    wall_span_us: int = _f(Kind.COUNT)


@fast_init
@dataclass(frozen=True, slots=True)
class BucketReturned(Record):
    TYPE: ClassVar[str] = "bucket_returned"
    DESCRIPTION: ClassVar[str] = (
        "A bucket gives units back to its pool's master: all it held, answering a "
        "recall (round > 0), or budget a revoked reward freed while the pool is central."
    )
    event_id: str = _f(Kind.ID)
    pool_id: str = _f(Kind.ID)
    partition: int = _f(Kind.COUNT)
    seq: int = _f(Kind.COUNT)
    units: int = _f(Kind.COUNT)
    round: int = _f(Kind.COUNT)


@fast_init
@dataclass(frozen=True, slots=True)
class PoolCommand(Record):
    TYPE: ClassVar[str] = "pool_command"
    DESCRIPTION: ClassVar[str] = (
        "An operator opens a pool (buckets get first grants), closes it (every "
        "bucket is drained back to the master and no more rewards are paid), or "
        "makes it central (drained, then every reward is paid by the master)."
    )
    event_id: str = _f(Kind.ID)
    pool_id: str = _f(Kind.ID)
    command: str = _f(Kind.ID)  # "open" | "close" | "central"
    at: int = _f(Kind.TIME)


@fast_init
@dataclass(frozen=True, slots=True)
class BucketGranted(Record):
    TYPE: ClassVar[str] = "bucket_granted"
    DESCRIPTION: ClassVar[str] = (
        "The master moves units to one bucket (request_seq 0: unasked, when a pool opens)."
    )
    event_id: str = _f(Kind.ID)
    pool_id: str = _f(Kind.ID)
    partition: int = _f(Kind.COUNT)
    seq: int = _f(Kind.COUNT)
    units: int = _f(Kind.COUNT)
    request_seq: int = _f(Kind.COUNT)
    mode: str = _f(Kind.ID)  # "open" | "central" | "closed"


@fast_init
@dataclass(frozen=True, slots=True)
class RefillDenied(Record):
    TYPE: ClassVar[str] = "refill_denied"
    DESCRIPTION: ClassVar[str] = (
        "The whole pool cannot pay `units`: the waiting reward (and any other of at "
        "least that cost in the same event) is rejected."
    )
    event_id: str = _f(Kind.ID)
    pool_id: str = _f(Kind.ID)
    partition: int = _f(Kind.COUNT)
    seq: int = _f(Kind.COUNT)
    units: int = _f(Kind.COUNT)
    request_seq: int = _f(Kind.COUNT)


@fast_init
@dataclass(frozen=True, slots=True)
class BucketRecalled(Record):
    TYPE: ClassVar[str] = "bucket_recalled"
    DESCRIPTION: ClassVar[str] = (
        "The master asks one bucket for everything it holds (answered by bucket_returned)."
    )
    event_id: str = _f(Kind.ID)
    pool_id: str = _f(Kind.ID)
    partition: int = _f(Kind.COUNT)
    seq: int = _f(Kind.COUNT)
    round: int = _f(Kind.COUNT)
    mode: str = _f(Kind.ID)


# ------------------------------------------------------------- merge order
#
# The processor applies a partition's four inputs in event time (`at`, then
# claims < orders < refunds < ticks, then offset). An input that reaches it
# after it has applied a later event (a producer behind another, a quiet
# input passed after the idle wait, a full buffer) is applied as it comes:
# that choice is timing, so the worker records it and the audit replays it.


@fast_init
@dataclass(frozen=True, slots=True)
class AppliedLate(Record):
    TYPE: ClassVar[str] = "applied_late"
    DESCRIPTION: ClassVar[str] = (
        "An input event the worker applied after a later one of its partition (it "
        "reached the worker after that one was applied): applied right after the "
        "event named by after_*, the seq-th such event behind it. The audit replays "
        "this order instead of event time."
    )
    event_id: str = _f(Kind.ID)
    topic: str = _f(Kind.ID)  # the input's short topic name: claims | orders | refunds | ticks
    partition: int = _f(Kind.COUNT)
    offset: int = _f(Kind.COUNT)
    at: int = _f(Kind.TIME)
    # The latest event in event-time order applied before it on this partition.
    after_topic: str = _f(Kind.ID)
    after_offset: int = _f(Kind.COUNT)
    after_at: int = _f(Kind.TIME)
    seq: int = _f(Kind.COUNT)  # 1 for the first event applied late behind that one, 2...


# -------------------------------------------------------------- dead letter


@fast_init
@dataclass(frozen=True, slots=True)
class DeadLetter(Record):
    TYPE: ClassVar[str] = "dead_letter"
    DESCRIPTION: ClassVar[str] = (
        "Input that could not be processed: why, where it was read, and the original "
        "payload (as text when it is UTF-8, otherwise base64)."
    )
    event_id: str = _f(Kind.ID)
    reason: str = _f(Kind.ID)
    source: str = _f(Kind.ID)
    payload: str | None = _f(Kind.OPT_TEXT)
    payload_b64: str | None = _f(Kind.OPT_TEXT)


InputEvent = TaskClaim | OrderPaid | OrderRefunded | Tick
TaskEvent = (
    TaskClaimed | ClaimRejected | TaskAdvanced | TaskCompleted | TaskExpired | TaskRolledBack
)
RewardEvent = RewardGranted | RewardRevoked | RewardRejected
OutputEvent = TaskEvent | RewardEvent
ToMaster = RefillRequested | BucketReturned | PoolCommand
ToBucket = BucketGranted | RefillDenied | BucketRecalled
BudgetEvent = ToMaster | ToBucket

INPUT_RECORDS: tuple[type[Record], ...] = (TaskClaim, OrderPaid, OrderRefunded, Tick)
TASK_RECORDS: tuple[type[Record], ...] = (
    TaskClaimed,
    ClaimRejected,
    TaskAdvanced,
    TaskCompleted,
    TaskExpired,
    TaskRolledBack,
)
REWARD_RECORDS: tuple[type[Record], ...] = (RewardGranted, RewardRevoked, RewardRejected)
TO_MASTER_RECORDS: tuple[type[Record], ...] = (RefillRequested, BucketReturned, PoolCommand)
TO_BUCKET_RECORDS: tuple[type[Record], ...] = (BucketGranted, RefillDenied, BucketRecalled)
BUDGET_RECORDS: tuple[type[Record], ...] = (*TO_MASTER_RECORDS, *TO_BUCKET_RECORDS)
MERGE_RECORDS: tuple[type[Record], ...] = (AppliedLate,)
ALL_RECORDS: tuple[type[Record], ...] = (
    *INPUT_RECORDS,
    *TASK_RECORDS,
    *REWARD_RECORDS,
    *BUDGET_RECORDS,
    *MERGE_RECORDS,
    DeadLetter,
)
RECORDS_BY_TYPE: dict[str, type[Record]] = {cls.TYPE: cls for cls in ALL_RECORDS}
