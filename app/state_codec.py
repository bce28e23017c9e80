"""UserState <-> bytes (orjson), for the stream layer's RocksDB table.

Compact positional arrays rather than objects: one state per user is
written on every change, so size matters more than readability. The first
element is a format version; `decode_user_state` refuses anything else with
a ValueError rather than guessing.
"""

from __future__ import annotations

from dataclasses import fields
from types import MappingProxyType
from typing import Any

import orjson

from app.state import OrderRecord, RewardSlot, TaskInstance, UserState
from schemas.native import kernel

STATE_FORMAT = 1


def encode_user_state(state: UserState) -> bytes:
    """The state's bytes: the kernel writes them straight from the objects
    (byte for byte `encode_user_state_python`), or declines an odd value."""
    if kernel is not None:
        raw: bytes | None = kernel.encode_user_state(STATE_FORMAT, state)
        if raw is not None:
            return raw
    return encode_user_state_python(state)


def encode_user_state_python(state: UserState) -> bytes:
    """The reference encoding (tests/unit/test_native.py compares the kernel's)."""
    return orjson.dumps(
        [
            STATE_FORMAT,
            state.user_id,
            [_instance(i) for i in state.instances],
            {
                oid: [r.amount_cents, r.refunded_cents, list(r.refund_ids), r.at, r.channel]
                for oid, r in state.orders.items()
            },
            {oid: [list(h) for h in held] for oid, held in state.held_refunds.items()},
            state.next_deadline,
            None if state.last_claim is None else list(state.last_claim),
        ]
    )


def _instance(i: TaskInstance) -> list[Any]:
    return [
        i.task_id,
        i.template_id,
        i.claim_event_id,
        i.claimed_at,
        i.deadline,
        i.status,
        i.progress,
        [list(c) for c in i.counted],
        [
            [
                s.slot,
                s.status,
                s.reward_id,
                s.amount_cents,
                s.prize_id,
                s.pool_id,
                s.debited,
                s.grants,
            ]
            for s in i.slots
        ],
    ]


def _native_state_reader() -> Any:
    """The kernel's state reader (the same classes and field orders), or None."""
    if kernel is None:
        return None
    classes = [
        (cls, [f.name for f in fields(cls)])
        for cls in (UserState, TaskInstance, OrderRecord, RewardSlot)
    ]
    return kernel.StateReader(STATE_FORMAT, *classes, MappingProxyType)


_NATIVE_READER = _native_state_reader()


def decode_user_state(raw: bytes | None) -> UserState | None:
    """The state stored under a user's key; None (no key) means no state."""
    if raw is None:
        return None
    if _NATIVE_READER is not None:
        state: UserState | None = _NATIVE_READER.read(raw)
        if state is not None:
            return state
    return decode_user_state_python(raw)


def decode_user_state_python(raw: bytes) -> UserState:
    """The reference decoding (tests/unit/test_native.py compares the kernel's)."""
    doc = orjson.loads(raw)
    if not isinstance(doc, list) or not doc or doc[0] != STATE_FORMAT:
        raise ValueError(f"not a user state of format {STATE_FORMAT}")
    _, user_id, instances, orders, held, next_deadline, last_claim = doc
    return UserState(
        user_id,
        tuple(_decode_instance(i) for i in instances),
        MappingProxyType(
            {
                oid: OrderRecord(amount, refunded, tuple(rids), at, channel)
                for oid, (amount, refunded, rids, at, channel) in orders.items()
            }
        ),
        MappingProxyType(
            {
                oid: tuple((rid, cents, at) for rid, cents, at in items)
                for oid, items in held.items()
            }
        ),
        next_deadline,
        None if last_claim is None else (last_claim[0], last_claim[1]),
    )


def _decode_instance(doc: list[Any]) -> TaskInstance:
    task_id, template_id, claim_event_id, claimed_at, deadline, status, progress, counted, slots = (
        doc
    )
    return TaskInstance(
        task_id,
        template_id,
        claim_event_id,
        claimed_at,
        deadline,
        status,
        progress,
        tuple((oid, day) for oid, day in counted),
        tuple(RewardSlot(*s) for s in slots),
    )
