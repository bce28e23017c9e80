"""The order-count agent, end to end inside faust's test context."""

from __future__ import annotations

import orjson
import pytest
from support.fakes import SentRecorder

ORDER = {
    "type": "order_paid",
    "v": 1,
    "order_id": "o1",
    "user_id": "u1",
    "amount_cents": 1500,
    "channel": "app",
    "at": "2026-11-01T10:00:00Z",
}


@pytest.fixture
def recorders(monkeypatch: pytest.MonkeyPatch, faust_app: object) -> dict[str, SentRecorder]:
    from streams import app as streams_app

    out = {"counts": SentRecorder(), "dead": SentRecorder()}
    monkeypatch.setattr(streams_app.order_counts_topic, "send", out["counts"])
    monkeypatch.setattr(streams_app.dead_letters_topic, "send", out["dead"])
    return out


async def test_agent_counts_orders_per_user_and_emits_one_event_each(
    recorders: dict[str, SentRecorder],
) -> None:
    from streams.agents import count_orders
    from streams.app import order_counts

    async with count_orders.test_context() as agent:
        for n, user in enumerate(["u1", "u2", "u1"]):
            event = {**ORDER, "event_id": f"e{n}", "order_id": f"o{n}", "user_id": user}
            await agent.put(key=user.encode(), value=orjson.dumps(event))
    emitted = [orjson.loads(value) for _, value in recorders["counts"].sent]
    assert [(e["user_id"], e["count"]) for e in emitted] == [("u1", 1), ("u2", 1), ("u1", 2)]
    assert [key for key, _ in recorders["counts"].sent] == [b"u1", b"u2", b"u1"]
    assert orjson.loads(order_counts["u1"])["count"] == 2
    assert recorders["dead"].sent == []


async def test_agent_sends_bad_input_to_dead_letters_and_goes_on(
    recorders: dict[str, SentRecorder],
) -> None:
    from streams.agents import count_orders

    async with count_orders.test_context() as agent:
        await agent.put(key=b"u9", value=b"{broken")
        await agent.put(key=b"u9", value=orjson.dumps({**ORDER, "event_id": "e9", "user_id": "u9"}))
    [(key, raw)] = recorders["dead"].sent
    letter = orjson.loads(raw)
    assert key == b"u9"
    assert letter["reason"].startswith("not JSON")
    assert [orjson.loads(v)["user_id"] for _, v in recorders["counts"].sent] == ["u9"]
