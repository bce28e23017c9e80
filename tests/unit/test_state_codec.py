"""User state <-> bytes for the stream layer's table."""

from __future__ import annotations

import pytest
from engine_builders import Run, catalog, claim, order, refund, template

from app.state_codec import decode_user_state, encode_user_state


def test_user_state_round_trips_through_bytes() -> None:
    pools = [{"pool_id": "cash", "total": 10_000, "unit": "cents"}]
    plan = {"mode": "per_order", "per_order_cents": [1, 2, 3], "pool_id": "cash"}
    run = Run(catalog(template(reward=plan, count_by="day"), pools=pools))
    run(claim(), order("o1"), order("o2"), refund("r1", "o1", 2000), refund("r9", "o9", 1))
    state = run.state
    assert state is not None
    assert state.held_refunds
    assert state.orders
    raw = encode_user_state(state)
    assert decode_user_state(raw) == state
    assert encode_user_state(decode_user_state(raw)) == raw  # type: ignore[arg-type]


def test_absent_key_decodes_to_no_state() -> None:
    assert decode_user_state(None) is None


def test_unknown_state_format_is_refused() -> None:
    with pytest.raises(ValueError, match="not a user state"):
        decode_user_state(b'[99, "u"]')
