"""Versioned records for every event of the wire contract (DESIGN §4).

Frozen, slotted dataclasses: cheap to build, safe to share. Each field's
metadata names its wire kind (see `schemas.fields`); decoding, encoding and
the JSON Schema files are generated from these declarations. Instants are
epoch microseconds (int) inside, RFC 3339 UTC strings on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

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


@dataclass(frozen=True, slots=True)
class TaskClaim(Record):
    TYPE: ClassVar[str] = "task_claim"
    DESCRIPTION: ClassVar[str] = "A user asks to claim a task of a template."
    event_id: str = _f(Kind.ID)
    user_id: str = _f(Kind.ID)
    template_id: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)
    user_tags: tuple[str, ...] = _f(Kind.TAGS)


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


@dataclass(frozen=True, slots=True)
class Tick(Record):
    TYPE: ClassVar[str] = "tick"
    DESCRIPTION: ClassVar[str] = "Time passes (broadcast to every partition)."
    event_id: str = _f(Kind.ID)
    at: int = _f(Kind.TIME)


# -------------------------------------------------------------- task events


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


# -------------------------------------------------------------- dead letter


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
ALL_RECORDS: tuple[type[Record], ...] = (
    *INPUT_RECORDS,
    *TASK_RECORDS,
    *REWARD_RECORDS,
    DeadLetter,
)
RECORDS_BY_TYPE: dict[str, type[Record]] = {cls.TYPE: cls for cls in ALL_RECORDS}
