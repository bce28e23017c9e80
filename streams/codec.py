"""Bytes <-> domain values for the walking skeleton's inputs, state and outputs."""

from __future__ import annotations

from typing import Any

import orjson

from app.order_count import OrderCounted, PaidOrder, UserCount


class BadInput(ValueError):
    """An input message that cannot be processed; the text says why."""


def decode_order(raw: bytes | None) -> PaidOrder:
    if raw is None:
        raise BadInput("empty message (no value)")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadInput(f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("type") != "order_paid":
        raise BadInput(f"type: expected 'order_paid', got {doc.get('type')!r}")
    for name in ("event_id", "order_id", "user_id", "at"):
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            raise BadInput(f"{name}: required non-empty string, got {value!r}")
    amount = doc.get("amount_cents")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise BadInput(f"amount_cents: required non-negative integer, got {amount!r}")
    return PaidOrder(doc["event_id"], doc["order_id"], doc["user_id"], amount, doc["at"])


def encode_state(state: UserCount) -> bytes:
    return orjson.dumps(
        {
            "count": state.count,
            "applied_offset": state.applied_offset,
            "recent": [[off, out.to_wire()] for off, out in state.recent],
        }
    )


def decode_state(raw: bytes | None) -> UserCount:
    if raw is None:
        return UserCount()
    doc = orjson.loads(raw)
    recent = tuple((int(off), _counted(out)) for off, out in doc["recent"])
    return UserCount(int(doc["count"]), int(doc["applied_offset"]), recent)


def _counted(doc: dict[str, Any]) -> OrderCounted:
    return OrderCounted(
        event_id=doc["event_id"],
        user_id=doc["user_id"],
        order_id=doc["order_id"],
        count=int(doc["count"]),
        at=doc["at"],
        caused_by=doc["caused_by"],
    )


def encode_event(wire: dict[str, object]) -> bytes:
    return orjson.dumps(wire)
