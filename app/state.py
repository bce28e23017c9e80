"""Per-user state of the task engine: immutable values, shared structurally.

One `UserState` per user who ever claimed a task (users without one have no
state at all: None). Pool state is not here (see `app.budget`).

What it holds, and why each piece is bounded:
- `instances`: every task instance the user ever claimed (needed for
  `max_claims`, and for refunds that claw back rewards after completion or
  expiry). Bounded by claims.
- `orders`: idempotency records of the orders that fell inside an open task
  window (counted or not), so a redelivered order changes nothing. Orders
  outside every window are not recorded (they can never count later:
  windows are fixed and a user's events arrive in order); records that
  counted nowhere are dropped when the windows around them expire.
- `held_refunds`: refunds that came before their order, by order id;
  dropped when no open task claimed before the refund is left (an order is
  paid before it is refunded, so only such a task could count it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from app.frozen import fast_init

IN_PROGRESS = "in_progress"
COMPLETED = "completed"
EXPIRED = "expired"

GRANTED = "granted"
REJECTED = "rejected"
REVOKED = "revoked"


@fast_init
@dataclass(frozen=True, slots=True)
class RewardSlot:
    """One payable unit of a plan: cumulative's completion (slot 0), the k-th
    per_order step, the k-th milestone, or the k-th lottery draw."""

    slot: int
    status: str  # granted | rejected (final) | revoked (may be granted again)
    reward_id: str  # of the latest grant or rejection
    amount_cents: int
    prize_id: str | None
    pool_id: str | None
    debited: int  # pool units taken by the current grant (returned on revoke)
    grants: int  # grants so far; the next grant's reward id is derived from it


@fast_init
@dataclass(frozen=True, slots=True)
class TaskInstance:
    task_id: str
    template_id: str
    claim_event_id: str
    claimed_at: int  # epoch microseconds
    deadline: int  # claimed_at + duration_days; orders count iff claimed_at <= at < deadline
    status: str  # in_progress | completed | expired
    progress: int
    # (order_id, purchase day ordinal in the template's zone, or 0 when counting orders)
    counted: tuple[tuple[str, int], ...]
    slots: tuple[RewardSlot, ...]  # sorted by slot; only slots ever paid or rejected

    def is_live(self, now: int) -> bool:
        """Whether an order could still count in this instance (now or after a
        refund reopens it): not expired and its deadline not reached."""
        return self.status != EXPIRED and now < self.deadline

    def counts(self, order_id: str) -> bool:
        for oid, _ in self.counted:  # noqa: SIM110 - a loop, not any(genexpr): hot and short
            if oid == order_id:
                return True
        return False

    def net_paid_cents(self) -> int:
        return sum(s.amount_cents for s in self.slots if s.status == GRANTED)

    def moved(
        self, status: str, progress: int, counted: tuple[tuple[str, int], ...]
    ) -> TaskInstance:
        """The same instance with new status and progress."""
        return self._rebuilt(status, progress, counted, self.slots)

    def with_status(self, status: str) -> TaskInstance:
        return self._rebuilt(status, self.progress, self.counted, self.slots)

    def with_slots(self, slots: tuple[RewardSlot, ...]) -> TaskInstance:
        return self._rebuilt(self.status, self.progress, self.counted, slots)

    def _rebuilt(
        self,
        status: str,
        progress: int,
        counted: tuple[tuple[str, int], ...],
        slots: tuple[RewardSlot, ...],
    ) -> TaskInstance:
        # A direct constructor call, not dataclasses.replace: this is on the
        # per-order hot path.
        return TaskInstance(
            self.task_id,
            self.template_id,
            self.claim_event_id,
            self.claimed_at,
            self.deadline,
            status,
            progress,
            counted,
            slots,
        )


@fast_init
@dataclass(frozen=True, slots=True)
class OrderRecord:
    amount_cents: int
    refunded_cents: int
    refund_ids: tuple[str, ...]
    at: int
    channel: str

    @property
    def remaining_cents(self) -> int:
        return max(0, self.amount_cents - self.refunded_cents)


# (refund_id, amount_cents, refund at) in arrival order
HeldRefunds = tuple[tuple[str, int, int], ...]

EMPTY_ORDERS: Mapping[str, OrderRecord] = MappingProxyType({})
EMPTY_HELD: Mapping[str, HeldRefunds] = MappingProxyType({})


@fast_init
@dataclass(frozen=True, slots=True)
class UserState:
    user_id: str
    instances: tuple[TaskInstance, ...]
    orders: Mapping[str, OrderRecord]
    held_refunds: Mapping[str, HeldRefunds]
    # When this user needs a visit without an event of their own: the earliest
    # deadline of an in-progress instance (it expires) or of a completed one
    # (its window closes and what it kept can be pruned). None: never. The
    # caller indexes users by it to find whom a broadcast tick affects.
    next_deadline: int | None
    # (at, event_id) of the last claim processed for this user. Claims of a user
    # arrive in order, so an older (or the same) claim is a redelivery: without
    # this mark a rejected claim redelivered after its task expired would be
    # judged again and could create an instance.
    last_claim: tuple[int, str] | None

    def instance(self, task_id: str) -> TaskInstance | None:
        for inst in self.instances:
            if inst.task_id == task_id:
                return inst
        return None


def next_deadline_of(instances: tuple[TaskInstance, ...], now: int) -> int | None:
    deadlines = [
        i.deadline
        for i in instances
        if i.status == IN_PROGRESS or (i.status == COMPLETED and i.deadline > now)
    ]
    return min(deadlines) if deadlines else None
