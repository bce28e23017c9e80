"""Walking-skeleton domain: count each user's paid orders, exactly once.

Pure: no Kafka, no clock. The stream agent hands in the decoded order and the
position it was read from; the state remembers the highest position applied,
so an order delivered again after a crash changes nothing and yields the very
output it yielded the first time (kept for the last `RECENT_OUTPUTS` orders).
The task engine replaces this module; the idempotency pattern stays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

RECENT_OUTPUTS = 64


@dataclass(frozen=True)
class PaidOrder:
    event_id: str
    order_id: str
    user_id: str
    amount_cents: int
    at: str


@dataclass(frozen=True)
class OrderCounted:
    event_id: str
    user_id: str
    order_id: str
    count: int
    at: str
    caused_by: str

    def to_wire(self) -> dict[str, object]:
        return {
            "type": "order_counted",
            "v": 1,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "order_id": self.order_id,
            "count": self.count,
            "at": self.at,
            "caused_by": self.caused_by,
        }


@dataclass(frozen=True)
class UserCount:
    """One user's count, the input position last applied, and recent outputs."""

    count: int = 0
    applied_offset: int = -1
    recent: tuple[tuple[int, OrderCounted], ...] = field(default=())


def output_id(input_event_id: str, kind: str) -> str:
    """A deterministic id for the output `kind` caused by one input event."""
    digest = hashlib.sha256(f"{input_event_id}|{kind}".encode()).hexdigest()
    return f"{kind}-{digest[:32]}"


def count_order(
    state: UserCount, order: PaidOrder, offset: int
) -> tuple[UserCount, tuple[OrderCounted, ...]]:
    """Apply one order read at `offset`; return the new state and what to emit.

    A replayed offset (<= the last applied) leaves the state alone and returns
    the output recorded for it, so the re-emission is byte-identical.
    """
    if offset <= state.applied_offset:
        return state, tuple(out for off, out in state.recent if off == offset)
    counted = OrderCounted(
        event_id=output_id(order.event_id, "order_counted"),
        user_id=order.user_id,
        order_id=order.order_id,
        count=state.count + 1,
        at=order.at,
        caused_by=order.event_id,
    )
    recent = (*state.recent, (offset, counted))[-RECENT_OUTPUTS:]
    return UserCount(counted.count, offset, recent), (counted,)
