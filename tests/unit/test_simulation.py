"""app.simulation: the campaign simulator agrees with replay, names the event at
which a scarce pool runs dry, and synthesises claims deterministically."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.catalog import Catalog, parse_catalog
from app.simulation import ClaimSynthesis, Simulator, simulate, synthetic_claim_id
from bench.loggen import LogShape, generate
from schemas.codec import encode
from schemas.records import InputEvent, OrderPaid, OrderRefunded, TaskClaim, Tick
from schemas.timestamps import MICROS_PER_DAY, MICROS_PER_SECOND, parse_utc
from taskstream.replay import replay_lines

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
T0 = parse_utc("2024-03-05T00:00:00Z")
HOUR = 3600 * MICROS_PER_SECOND


def sample_catalog(**totals: int) -> Catalog:
    pools = orjson.loads((SAMPLES / "pools.json").read_bytes())
    for pool in pools:
        pool["total"] = totals.get(pool["pool_id"], pool["total"])
    return parse_catalog(orjson.loads((SAMPLES / "templates.json").read_bytes()), pools)


def replay_outputs(events: list[InputEvent], catalog: Catalog) -> list[dict[str, Any]]:
    lines: list[bytes] = []
    replay_lines((encode(e) + b"\n" for e in events), catalog, lines.append)
    return [orjson.loads(line) for line in lines]


def positioned(events: list[InputEvent]) -> list[tuple[InputEvent, str]]:
    return [(event, f"line {n}") for n, event in enumerate(events, start=1)]


# ------------------------------------------------- agreement with replay


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cash=st.integers(0, 60_000),
    small=st.integers(0, 3_000),
    grand=st.integers(0, 3),
)
def test_totals_agree_with_replay_on_generated_logs(
    seed: int, cash: int, small: int, grand: int
) -> None:
    shape = LogShape(events=2_500, users=300, claim_share=0.06, tick_every=400, seed=seed)
    events = list(generate(shape))
    catalog = sample_catalog(cash=cash, small_budget=small, grand_prizes=grand)
    outputs = replay_outputs(events, catalog)

    sim = Simulator(catalog)
    fed = [encode(out) for event, where in positioned(events) for out in sim.feed(event, where)]
    report = sim.finish()
    # One fold: the simulator's outputs are replay's, byte for byte.
    assert fed == [orjson.dumps(doc) for doc in outputs]

    expected: dict[str, Counter[str]] = defaultdict(Counter)
    for doc in outputs:
        tally = expected[doc["template_id"]]
        tally[doc["type"]] += 1
        if doc["type"] in ("reward_granted", "reward_revoked", "reward_rejected"):
            tally[doc["type"] + "_cents"] += doc["amount_cents"]
    for t in report.templates:
        want = expected[t.template_id]
        assert t.claims == want["task_claimed"]
        assert sum(t.rejections.values()) == want["claim_rejected"]
        assert t.completions == want["task_completed"]
        assert t.expiries == want["task_expired"]
        assert t.payout_cents == want["reward_granted_cents"] - want["reward_revoked_cents"]
        assert (t.rejected, t.rejected_cents) == (
            want["reward_rejected"],
            want["reward_rejected_cents"],
        )
        if t.mode == "lottery":
            assert (
                t.draws == want["reward_granted"] - want["reward_revoked"] + want["reward_rejected"]
            )
        assert (t.payout_points[-1][1] if t.payout_points else 0) == t.payout_cents

    assert sum(t.completions for t in report.templates) > 0  # the log exercises the engine
    units = {p.pool_id: p.unit for p in catalog.pools.values()}
    issued: Counter[str] = Counter()
    for doc in outputs:
        if doc["type"] in ("reward_granted", "reward_revoked") and doc["pool_id"] is not None:
            cost = 1 if units[doc["pool_id"]] == "items" else doc["amount_cents"]
            issued[doc["pool_id"]] += cost if doc["type"] == "reward_granted" else -cost
    for pool in report.pools:
        assert pool.issued == issued[pool.pool_id]
        assert 0 <= pool.remaining <= pool.total
        assert pool.points == [] or pool.points[-1][1] == pool.issued


def test_the_dry_event_of_a_scarce_pool_is_the_first_reward_rejected_for_it() -> None:
    # small_budget pays only milestones (no lottery fallback), so its first
    # refusal is exactly replay's first reward_rejected naming it.
    events = list(generate(LogShape(events=6_000, users=400, claim_share=0.08, seed=7)))
    catalog = sample_catalog(small_budget=2_000)
    first_rejected = next(
        doc
        for doc in replay_outputs(events, catalog)
        if doc["type"] == "reward_rejected" and doc["pool_id"] == "small_budget"
    )
    report = simulate(positioned(events), catalog)
    pool = next(p for p in report.pools if p.pool_id == "small_budget")
    assert pool.dry is not None
    assert pool.dry.event.event_id == first_rejected["caused_by"]
    assert pool.dry.template_id == "milestones_exclusive"
    line = next(n for n, e in enumerate(events, 1) if e.event_id == first_rejected["caused_by"])
    assert pool.dry.event.where == f"line {line}"
    assert pool.dry.units == first_rejected["amount_cents"] > pool.dry.remaining


# ---------------------------------------------------- hand-made logs

HOT = {
    "template_id": "hot",
    "title": "one order, one coupon",
    "scenes": ["home"],
    "active_from": "2024-03-01T00:00:00Z",
    "active_until": "2024-04-01T00:00:00Z",
    "timezone": "UTC",
    "duration_days": 2,
    "target": 1,
    "count_by": "order",
    "order_rule": {"min_amount_cents": 1000, "channels": ["app"]},
    "reward": {"mode": "cumulative", "amount_cents": 100, "pool_id": "coupons"},
    "display": "visible",
}


def hot_catalog(total: int = 250, **fields: Any) -> Catalog:
    return parse_catalog(
        [{**HOT, **fields}], [{"pool_id": "coupons", "total": total, "unit": "cents"}]
    )


def order(n: int, user: str, hours: float, amount: int = 1500, channel: str = "app") -> OrderPaid:
    return OrderPaid(f"o{n}", f"order-{n}", user, amount, channel, T0 + int(hours * HOUR))


def test_a_scarce_pool_runs_dry_at_the_order_it_cannot_pay() -> None:
    events: list[InputEvent] = []
    for n, user in enumerate(("ann", "bob", "cat", "dan"), start=1):
        events.append(TaskClaim(f"c{n}", user, "hot", T0 + n * HOUR - 60, ()))
        events.append(order(n, user, n))
    report = simulate(positioned(events), hot_catalog(total=250))
    (pool,) = report.pools
    assert (pool.issued, pool.remaining, pool.refusals) == (200, 50, 2)
    assert pool.dry is not None
    assert (pool.dry.event.event_id, pool.dry.event.where) == ("o3", "line 6")
    assert pool.dry.event.at == T0 + 3 * HOUR
    assert (pool.dry.template_id, pool.dry.units, pool.dry.remaining) == ("hot", 100, 50)
    assert pool.points == [(T0 + HOUR, 100), (T0 + 2 * HOUR, 200)]
    (hot,) = report.templates
    assert (hot.claims, hot.completions, hot.payout_cents, hot.rejected) == (4, 4, 200, 2)


def test_a_refund_gives_budget_back_and_moves_the_dry_moment() -> None:
    events: list[InputEvent] = [
        TaskClaim("c1", "ann", "hot", T0, ()),
        order(1, "ann", 1),
        TaskClaim("c2", "bob", "hot", T0, ()),
        OrderRefunded("r1", "refund-1", "order-1", "ann", 1500, T0 + int(1.5 * HOUR)),
        order(2, "bob", 2),
    ]
    report = simulate(positioned(events), hot_catalog(total=100))
    (pool,) = report.pools
    assert pool.dry is None  # ann's clawback paid bob's coupon
    assert pool.points == [(T0 + HOUR, 100), (T0 + int(1.5 * HOUR), 0), (T0 + 2 * HOUR, 100)]
    (hot,) = report.templates
    assert (hot.granted, hot.revoked, hot.payout_cents) == (2, 1, 100)
    assert hot.payout_points == [(T0 + HOUR, 100), (T0 + int(1.5 * HOUR), 0), (T0 + 2 * HOUR, 100)]


def test_eligible_users_are_buyers_whose_orders_pass_the_order_rule_in_the_window() -> None:
    events: list[InputEvent] = [
        order(1, "ann", 1),  # qualifies, never claims
        order(2, "bob", 1, amount=999),  # under the minimum
        order(3, "cat", 1, channel="web"),  # wrong channel
        OrderPaid("o4", "order-4", "dan", 5000, "app", parse_utc("2024-04-02T00:00:00Z")),
        order(5, "ann", 2),  # the same user again
    ]
    (hot,) = simulate(positioned(events), hot_catalog()).templates
    assert hot.eligible_users == {"ann"}
    assert hot.claims == 0


# -------------------------------------------------- claim synthesis


def test_synthesised_claims_come_before_each_users_first_event() -> None:
    events: list[InputEvent] = [order(1, "ann", 1), order(2, "bob", 2), order(3, "ann", 30)]
    sim = Simulator(hot_catalog(), ClaimSynthesis(("hot",), user_tags=("vip",)))
    outputs = [out for event, where in positioned(events) for out in sim.feed(event, where)]
    report = sim.finish()
    claimed = [o for o in outputs if o.TYPE == "task_claimed"]
    assert [(o.user_id, o.caused_by, o.at) for o in claimed] == [
        ("ann", synthetic_claim_id("ann", "hot"), T0 + HOUR),
        ("bob", synthetic_claim_id("bob", "hot"), T0 + 2 * HOUR),
    ]
    (hot,) = report.templates
    assert report.synthetic_claims == 2
    assert (hot.claims, hot.completions, hot.payout_cents) == (2, 2, 200)
    # ann's second order (30 h) falls after her completion: nothing more.
    assert sum(1 for o in outputs if o.TYPE == "reward_granted") == 2


def test_claims_at_launch_time_ignore_earlier_orders_and_let_late_users_claim_on_arrival() -> None:
    launch = T0 + 10 * HOUR
    events: list[InputEvent] = [
        order(1, "ann", 1),  # before launch: does not count
        Tick("tick-1", T0 + 11 * HOUR),  # launch happens before this tick
        order(2, "ann", 12),  # counts
        order(3, "bob", 13),  # bob is first seen after launch: claims on arrival
        order(4, "cat", 9),  # cat arrives late in the log, stamped before launch
    ]
    sim = Simulator(hot_catalog(), ClaimSynthesis(("hot",), claims_at=launch))
    outputs = [out for event, where in positioned(events) for out in sim.feed(event, where)]
    sim.finish()
    claimed = {o.user_id: o.at for o in outputs if o.TYPE == "task_claimed"}
    assert claimed == {"ann": launch, "bob": T0 + 13 * HOUR, "cat": launch}
    completed = [(o.user_id, o.caused_by) for o in outputs if o.TYPE == "task_completed"]
    assert completed == [("ann", "o2"), ("bob", "o3")]


def test_users_waiting_for_a_launch_after_the_log_claim_at_its_end() -> None:
    sim = Simulator(hot_catalog(), ClaimSynthesis(("hot",), claims_at=T0 + 100 * HOUR))
    for event, where in positioned([order(1, "ann", 1), order(2, "bob", 2)]):
        assert sim.feed(event, where) == []
    report = sim.finish()
    assert report.synthetic_claims == 2
    assert report.templates[0].claimed_users == {"ann", "bob"}


def test_claim_synthesis_is_deterministic_and_keyed_by_user_and_template() -> None:
    events = list(generate(LogShape(events=1_500, users=200, claim_share=0.0, seed=3)))
    catalog = sample_catalog()
    synthesis = ClaimSynthesis(("dark_box_3_days", "lottery_exclusive"), ("lapsed",))

    def run() -> list[bytes]:
        sim = Simulator(catalog, synthesis)
        return [encode(o) for e, w in positioned(events) for o in sim.feed(e, w)]

    first = run()
    assert first == run()
    ids = {synthetic_claim_id(u, t) for u in ("u1", "u2") for t in ("dark_box_3_days", "lottery")}
    assert len(ids) == 4
    users = {e.user_id for e in events if not isinstance(e, Tick)}
    report = simulate(positioned(events), catalog, synthesis)
    assert report.synthetic_claims == 2 * len(users)
    claimed = {t.template_id: t.claimed_users for t in report.templates}
    assert claimed["dark_box_3_days"] == users  # nobody tagged fraud_risk
    assert claimed["lottery_exclusive"] <= users
    assert claimed["clear_box_per_order"] == set()


def test_log_claims_for_unproposed_templates_are_counted_apart() -> None:
    events: list[InputEvent] = [TaskClaim("c1", "ann", "old_campaign", T0, ()), order(1, "ann", 1)]
    report = simulate(positioned(events), hot_catalog())
    assert report.unknown_template_claims == Counter({"old_campaign": 1})
    assert report.templates[0].claims == 0


def test_lottery_cost_per_draw_and_prizes() -> None:
    lottery = {
        "template_id": "draw",
        "reward": {
            "mode": "lottery",
            "draws_per": "order",
            "pool_id": "coupons",
            "prizes": [
                {"prize_id": "big", "amount_cents": 1000, "weight": 1, "pool_id": "big_stock"},
                {"prize_id": "small", "amount_cents": 100, "weight": 3},
            ],
        },
        "target": 3,
    }
    catalog = parse_catalog(
        [{**HOT, **lottery}],
        [
            {"pool_id": "coupons", "total": 10**6, "unit": "cents"},
            {"pool_id": "big_stock", "total": 1, "unit": "items"},
        ],
    )
    users = [f"u{n}" for n in range(40)]
    events: list[InputEvent] = [order(n, user, 1 + n / 100) for n, user in enumerate(users)]
    report = simulate(positioned(events), catalog, ClaimSynthesis(("draw",)))
    (draw,) = report.templates
    assert draw.draws == 40
    assert draw.expected_cost_per_draw == (1000 + 3 * 100) / 4
    assert draw.prizes["big"].net == 1  # one item in stock; later big draws fall to small
    assert draw.prizes["small"].net == 39
    assert draw.payout_cents == 1000 + 39 * 100
    assert draw.cost_per_draw == draw.payout_cents / 40
    big = next(p for p in report.pools if p.pool_id == "big_stock")
    assert big.issued == 1
    # Later big draws found the stock gone and fell through to the small prize.
    assert big.refusals > 0
    assert big.dry is not None
    assert (big.dry.template_id, big.dry.units, big.dry.remaining) == ("draw", 1, 0)


def test_report_spans_the_log_and_counts_events() -> None:
    events: list[InputEvent] = [order(1, "ann", 1), Tick("t", T0 + MICROS_PER_DAY)]
    report = simulate(positioned(events), hot_catalog())
    assert (report.events, report.first_at, report.last_at) == (2, T0 + HOUR, T0 + MICROS_PER_DAY)
