"""The compiled order path (native/src/orders.rs) against `app.engine._order_paid`.

For every order of a user holding a state, in generated logs, both run on the
same state with budgets of the same balances: the compiled path must give the
same outcome (state, output records, notes word for word) and make the same
budget calls in the same order, or decline (None) before any budget call.
The logs mix templates of every kind the compiled path takes (count by order
and by day, cumulative, per-order and milestone plans, exclusive ones,
channels, budgeted in cents and in items, unbudgeted) with kinds it leaves to
Python (lotteries), small pools that run dry, duplicates, refunds held before
their order, and expiries. A test also fails if it declines the plain cases.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import engine
from app.budget import Ledger
from app.catalog import Catalog, parse_catalog
from app.engine import Outcome, handle
from app.state import UserState
from schemas.records import InputEvent, OrderPaid, OrderRefunded, TaskClaim, Tick
from schemas.timestamps import MICROS_PER_SECOND, parse_utc

pytestmark = pytest.mark.skipif(
    engine._compiled_orders is None, reason="the native kernel is not built (make setup)"
)

START = parse_utc("2024-03-05T00:00:00Z")
HOUR = 3600 * MICROS_PER_SECOND
USERS = ("u0", "u1", "u2")


def _template(template_id: str, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "template_id": template_id,
        "title": template_id,
        "scenes": ["home"],
        "active_from": "2024-03-01T00:00:00Z",
        "active_until": "2024-04-01T00:00:00Z",
        "timezone": "Asia/Shanghai",
        "duration_days": 3,
        "target": 3,
        "count_by": "order",
        "order_rule": {"min_amount_cents": 1000},
        "claim_rule": {"max_claims": 3},
        "display": "visible",
    }
    doc.update(fields)
    return doc


TEMPLATES = [
    _template(
        "cum", target=2, reward={"mode": "cumulative", "amount_cents": 500, "pool_id": "cash"}
    ),
    _template(
        "per",
        count_by="day",
        reward={"mode": "per_order", "per_order_cents": [100, 0, 300], "pool_id": "cash"},
    ),
    _template(
        "mil",
        exclusive=True,
        priority=5,
        order_rule={"min_amount_cents": 2000, "channels": ["pickup", "app"]},
        reward={
            "mode": "milestones",
            "milestones": [{"at": 1, "amount_cents": 50}, {"at": 3, "amount_cents": 400}],
            "pool_id": "gift",
        },
    ),
    _template(
        "exc",
        exclusive=True,
        priority=5,
        order_rule={"min_amount_cents": 500, "channels": ["pickup"]},
        reward={"mode": "per_order", "per_order_cents": [10, 20, 30], "pool_id": None},
    ),
    _template(
        "lot",
        exclusive=True,
        priority=1,
        reward={
            "mode": "lottery",
            "draws_per": "order",
            "pool_id": "cash",
            "prizes": [
                {"prize_id": "big", "amount_cents": 900, "weight": 1},
                {"prize_id": "none", "amount_cents": 0, "weight": 3},
            ],
        },
    ),
    _template("free", target=1, reward={"mode": "cumulative", "amount_cents": 70, "pool_id": None}),
]
POOLS = [
    {"pool_id": "cash", "total": 1500, "unit": "cents"},
    {"pool_id": "gift", "total": 3, "unit": "items"},
]
CATALOG = parse_catalog(TEMPLATES, POOLS)


def build_log(seed: int, length: int) -> list[InputEvent]:
    """Claims, orders (some re-sent, some of every channel and amount),
    refunds (some before their order), ticks; hours to days apart."""
    rng = random.Random(seed)
    events: list[InputEvent] = []
    at = START
    template_ids = [t["template_id"] for t in TEMPLATES]
    paid = dict.fromkeys(USERS, 0)
    for n in range(length):
        at += rng.choice([1, HOUR, 3 * HOUR, 20 * HOUR])
        eid, user, roll = f"e{n}", rng.choice(USERS), rng.random()
        if n < 6 or roll < 0.15:
            events.append(TaskClaim(eid, user, rng.choice(template_ids), at, ()))
        elif roll < 0.75:
            amount = rng.choice([2500, 2500, 1000, 600, 0])
            channel = rng.choice(["pickup", "pickup", "app", "web"])
            # Some orders come late: paid hours before the last claim judged.
            paid_at = at - 5 * HOUR if rng.random() < 0.05 else at
            order = OrderPaid(eid, f"{user}-o{paid[user]}", user, amount, channel, paid_at)
            paid[user] += 1
            events.append(order)
            if rng.random() < 0.1:
                events.append(order)  # an exact re-send
        elif roll < 0.85 and paid[user]:
            k = rng.randrange(max(0, paid[user] - 3), paid[user])
            events.append(OrderRefunded(eid, f"{user}-o{k}-r", f"{user}-o{k}", user, 1500, at))
        elif roll < 0.93:
            order_id = f"{user}-o{paid[user]}"
            paid[user] += 1
            events.append(OrderRefunded(eid, f"{order_id}-r", order_id, user, 1000, at + HOUR))
            events.append(OrderPaid(f"{eid}p", order_id, user, 2500, "pickup", at))
        else:
            events.append(Tick(eid, at))
    return events


class RecordingLedger(Ledger):
    """A Ledger that keeps every call made to it."""

    __slots__ = ("calls",)

    def __init__(self, balances: Ledger) -> None:
        super().__init__(())
        self._totals = dict(balances._totals)
        self._remaining = dict(balances._remaining)
        self.calls: list[tuple[Any, ...]] = []

    def try_debit(self, pool_id: str, units: int, reward_id: str = "") -> bool:
        self.calls.append(("try_debit", pool_id, units, reward_id))
        return super().try_debit(pool_id, units, reward_id)

    def credit(self, pool_id: str, units: int) -> None:
        self.calls.append(("credit", pool_id, units))
        super().credit(pool_id, units)


def compare_log(log: list[InputEvent], catalog: Catalog, ledger: Ledger) -> Counter[str]:
    """Fold the log with the Python reference; at every order of a user with
    a state, run the compiled path beside it and compare. Counts what it took."""
    states: dict[str, UserState | None] = {}
    seen: Counter[str] = Counter()
    for event in log:
        if type(event) is Tick:
            for user, state in list(states.items()):
                deadline = state.next_deadline if state is not None else None
                if state is not None and deadline is not None and deadline <= event.at:
                    states[user] = handle(state, event, catalog, ledger).state
            continue
        user = event.user_id  # type: ignore[union-attr]
        state = states.get(user)
        if type(event) is OrderPaid and state is not None:
            reference_budget, compiled_budget = RecordingLedger(ledger), RecordingLedger(ledger)
            expected = engine._order_paid(state, event, catalog, reference_budget)
            got = engine._compiled_orders.order_paid(state, event, catalog, compiled_budget)  # type: ignore[union-attr]
            if got is None:
                assert compiled_budget.calls == [], "declined after a budget call"
                seen["declined"] += 1
            else:
                assert got == expected, (event, state)
                assert compiled_budget.calls == reference_budget.calls
                assert type(got.state.orders) is type(expected.state.orders)  # type: ignore[union-attr]
                _tally(seen, got)
            outcome = expected
            ledger = reference_budget
        else:
            outcome = handle(state, event, catalog, ledger)
        states[user] = outcome.state
    return seen


NOTE_MARKERS = (
    "duplicate order",
    "order before",
    "after the deadline",
    "already expired",
    "does not count",
    "exclusive,",
    "already completed",
    "already counts",
)


def _tally(seen: Counter[str], outcome: Outcome) -> None:
    seen["taken"] += 1
    for output in outcome.events:
        seen[output.TYPE] += 1
    for note in outcome.notes:
        for marker in NOTE_MARKERS:
            if marker in note:
                seen[marker] += 1


def test_the_compiled_path_gives_the_reference_outcome_over_long_logs() -> None:
    seen: Counter[str] = Counter()
    for seed in range(40):
        seen += compare_log(build_log(seed, 300), CATALOG, Ledger(CATALOG.pools.values()))
    # It must take the plain cases, not decline its way through the test,
    # and every branch it implements must have been compared at least once.
    assert seen["taken"] > 3 * seen["declined"], seen
    for branch in ("task_advanced", "task_completed", "reward_granted", "reward_rejected",
                   "duplicate order", "order before", "after the deadline", "does not count",
                   "exclusive,", "already completed", "already counts"):  # fmt: skip
        assert seen[branch] > 0, (branch, seen)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), cash=st.integers(0, 3000), gifts=st.integers(0, 5))
def test_the_compiled_path_agrees_with_any_budget(seed: int, cash: int, gifts: int) -> None:
    pools = [
        {"pool_id": "cash", "total": cash, "unit": "cents"},
        {"pool_id": "gift", "total": gifts, "unit": "items"},
    ]
    catalog = parse_catalog(TEMPLATES, pools)
    compare_log(build_log(seed, 120), catalog, Ledger(catalog.pools.values()))


class StallingBudget(Ledger):
    """A budget that stalls (raises) on its n-th debit, as a bucket waiting
    for its master does."""

    def __init__(self, catalog: Catalog, stall_at: int) -> None:
        super().__init__(catalog.pools.values())
        self.debits = 0
        self.stall_at = stall_at

    def try_debit(self, pool_id: str, units: int, reward_id: str = "") -> bool:
        self.debits += 1
        if self.debits == self.stall_at:
            raise LookupError(f"stalled on {pool_id} for {reward_id}")
        return super().try_debit(pool_id, units, reward_id)


def _state_before_completion() -> tuple[UserState, OrderPaid]:
    """u0 one order short of completing "cum", and of a second "per" day:
    the next order makes two budget calls."""
    at = START
    state: UserState | None = None
    budget = Ledger(CATALOG.pools.values())
    for event in (
        TaskClaim("c1", "u0", "cum", at, ()),
        TaskClaim("c2", "u0", "per", at + 1, ()),
        TaskClaim("c3", "u0", "mil", at + 2, ()),
        OrderPaid("o1", "u0-o1", "u0", 2500, "app", at + 3),
    ):
        state = handle(state, event, CATALOG, budget).state
    assert state is not None
    return state, OrderPaid("o2", "u0-o2", "u0", 2500, "app", at + 26 * HOUR)


@pytest.mark.parametrize("stall_at", [1, 2])
def test_a_budget_that_raises_stops_both_alike(stall_at: int) -> None:
    state, order = _state_before_completion()
    errors = []
    for run in (engine._order_paid, engine._compiled_orders.order_paid):  # type: ignore[union-attr]
        budget = StallingBudget(CATALOG, stall_at)
        with pytest.raises(LookupError) as raised:
            run(state, order, CATALOG, budget)
        errors.append((str(raised.value), budget.debits, dict(budget._remaining)))
    assert errors[0] == errors[1]


def test_handle_takes_the_compiled_path_for_an_order(monkeypatch: pytest.MonkeyPatch) -> None:
    state, order = _state_before_completion()
    calls: list[str] = []
    reference: Callable[..., Outcome] = engine._order_paid

    def counted(*args: Any) -> Outcome:
        calls.append("python")
        return reference(*args)

    monkeypatch.setattr(engine, "_order_paid", counted)
    outcome = handle(state, order, CATALOG, Ledger(CATALOG.pools.values()))
    assert calls == []  # the compiled path answered
    assert [e.TYPE for e in outcome.events][:2] == ["task_advanced", "task_completed"]
