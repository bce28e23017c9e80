"""Small builders for templates, catalogs, events and input messages used across unit tests."""

from __future__ import annotations

import copy
from typing import Any

from app.audit import InputMessage
from app.budget import Ledger
from app.catalog import Catalog, parse_catalog
from app.engine import Outcome, handle
from app.state import UserState
from schemas.codec import encode
from schemas.records import InputEvent, OrderPaid, OrderRefunded, TaskClaim, Tick
from schemas.timestamps import parse_utc
from streams.kafka.partitioner import partition_for
from streams.processor import ROLE_OF_TYPE

BASE_TEMPLATE: dict[str, Any] = {
    "template_id": "t",
    "title": "test task",
    "scenes": ["home"],
    "active_from": "2024-03-01T00:00:00Z",
    "active_until": "2024-04-01T00:00:00Z",
    "timezone": "UTC",
    "duration_days": 7,
    "target": 3,
    "count_by": "order",
    "order_rule": {"min_amount_cents": 1000, "channels": None},
    "claim_rule": {"user_tags_any": [], "user_tags_none": [], "max_claims": 1},
    "reward": {"mode": "cumulative", "amount_cents": 500, "pool_id": None},
    "display": "visible",
    "refund_policy": "rollback",
    "priority": 0,
    "exclusive": False,
}


def template(**overrides: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE_TEMPLATE)
    doc.update(overrides)
    return doc


def catalog(*templates: dict[str, Any], pools: list[dict[str, Any]] | None = None) -> Catalog:
    return parse_catalog(list(templates) or [template()], pools)


def t(day: int, hour: int = 12, minute: int = 0) -> int:
    """An instant in March 2024 (UTC), as epoch micros."""
    return parse_utc(f"2024-03-{day:02d}T{hour:02d}:{minute:02d}:00Z")


def claim(
    template_id: str = "t",
    at: int | None = None,
    *,
    user: str = "u1",
    event_id: str | None = None,
    tags: tuple[str, ...] = (),
) -> TaskClaim:
    at = t(2) if at is None else at
    return TaskClaim(event_id or f"claim-{template_id}-{at}", user, template_id, at, tags)


def order(
    order_id: str,
    amount: int = 2000,
    at: int | None = None,
    *,
    user: str = "u1",
    channel: str = "app",
    event_id: str | None = None,
) -> OrderPaid:
    at = t(3) if at is None else at
    return OrderPaid(event_id or f"paid-{order_id}", order_id, user, amount, channel, at)


def refund(
    refund_id: str,
    order_id: str,
    amount: int,
    at: int | None = None,
    *,
    user: str = "u1",
    event_id: str | None = None,
) -> OrderRefunded:
    at = t(4) if at is None else at
    return OrderRefunded(event_id or f"refund-{refund_id}", refund_id, order_id, user, amount, at)


def tick(at: int, event_id: str | None = None) -> Tick:
    return Tick(event_id or f"tick-{at}", at)


def input_messages(log: list[InputEvent], partitions: int) -> list[InputMessage]:
    """The log as the producers write it: keyed by user, ticks to every partition."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for event in log:
        role = ROLE_OF_TYPE[event.TYPE]
        if isinstance(event, Tick):
            targets, key = list(range(partitions)), None
        else:
            user = event.user_id  # type: ignore[union-attr]
            targets, key = [partition_for(user.encode(), partitions)], user.encode()
        for partition in targets:
            offset = offsets.get((role, partition), 0)
            offsets[(role, partition)] = offset + 1
            out.append(
                InputMessage(
                    role, partition, offset, key, encode(event), f"x.{role}/{partition}@{offset}"
                )
            )
    return out


class Run:
    """One user's events through the engine with a ledger; keeps every outcome."""

    def __init__(self, cat: Catalog) -> None:
        self.catalog = cat
        self.ledger = Ledger(cat.pools.values())
        self.state: UserState | None = None
        self.outcomes: list[Outcome] = []

    def __call__(self, *events: Any) -> Outcome:
        outcome = Outcome(self.state, (), ())
        for event in events:
            outcome = handle(self.state, event, self.catalog, self.ledger)
            self.state = outcome.state
            self.outcomes.append(outcome)
        return outcome

    def types(self, outcome: Outcome | None = None) -> list[str]:
        chosen = outcome if outcome is not None else self.outcomes[-1]
        return [e.TYPE for e in chosen.events]

    def task(self, template_id: str = "t") -> Any:
        assert self.state is not None
        matches = [i for i in self.state.instances if i.template_id == template_id]
        return matches[-1]

    def all_events(self) -> list[Any]:
        return [e for o in self.outcomes for e in o.events]

    def net_paid(self, template_id: str = "t") -> int:
        total = 0
        for e in self.all_events():
            if getattr(e, "template_id", None) != template_id:
                continue
            if e.TYPE == "reward_granted":
                total += e.amount_cents
            elif e.TYPE == "reward_revoked":
                total -= e.amount_cents
        return total
