"""Decoding orders and dead letters for the walking skeleton."""

from __future__ import annotations

import base64

import orjson
import pytest

from app.order_count import PaidOrder, UserCount, count_order
from streams.codec import BadInput, decode_order, decode_state, encode_state
from streams.deadletter import dead_letter

GOOD = {
    "type": "order_paid",
    "v": 1,
    "event_id": "e1",
    "order_id": "o1",
    "user_id": "u1",
    "amount_cents": 1500,
    "channel": "app",
    "at": "2026-11-01T10:00:00Z",
}


def test_a_valid_order_decodes() -> None:
    assert decode_order(orjson.dumps(GOOD)) == PaidOrder("e1", "o1", "u1", 1500, GOOD["at"])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty message"),
        (b"{oops", "not JSON"),
        (b"[1,2]", "expected a JSON object"),
        (orjson.dumps({**GOOD, "type": "tick"}), "type: expected 'order_paid'"),
        (orjson.dumps({**GOOD, "user_id": ""}), "user_id: required non-empty string"),
        (orjson.dumps({**GOOD, "amount_cents": -1}), "amount_cents"),
        (orjson.dumps({**GOOD, "amount_cents": True}), "amount_cents"),
        (orjson.dumps({**GOOD, "amount_cents": "12"}), "amount_cents"),
    ],
)
def test_bad_orders_are_refused_with_the_field_and_problem(raw: bytes | None, reason: str) -> None:
    with pytest.raises(BadInput, match=reason):
        decode_order(raw)


def test_state_round_trips_through_bytes() -> None:
    state = UserCount()
    for n in range(3):
        state, _ = count_order(state, PaidOrder(f"e{n}", f"o{n}", "u", 1, "t"), n)
    assert decode_state(encode_state(state)) == state
    assert decode_state(None) == UserCount()


def test_dead_letter_keeps_original_bytes_position_and_reason() -> None:
    record = orjson.loads(
        dead_letter(
            topic="t.orders", partition=3, offset=42, key=b"u1", value=b"\xff{", reason="not JSON"
        )
    )
    assert record["type"] == "dead_letter"
    assert (record["topic"], record["partition"], record["offset"]) == ("t.orders", 3, 42)
    assert base64.b64decode(record["value_b64"]) == b"\xff{"
    assert record["reason"] == "not JSON"
    again = orjson.loads(
        dead_letter(
            topic="t.orders", partition=3, offset=42, key=b"u1", value=b"\xff{", reason="not JSON"
        )
    )
    assert again["event_id"] == record["event_id"]
