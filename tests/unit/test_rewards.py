"""Reward plans, budget pools, lottery draws and the reward rule."""

from __future__ import annotations

from typing import Any

from engine_builders import Run, catalog, claim, order, refund, t, template

from app.catalog import RewardPlan
from app.rewards import draw_prize_index, due_slots

CASH = {"pool_id": "cash", "total": 10_000, "unit": "cents"}


def lottery(
    prizes: list[dict[str, Any]], *, draws_per: str = "order", pool: Any = "cash"
) -> dict[str, Any]:
    return {"mode": "lottery", "draws_per": draws_per, "pool_id": pool, "prizes": prizes}


def test_per_order_pays_each_step_its_own_amount() -> None:
    run = Run(catalog(template(reward={"mode": "per_order", "per_order_cents": [100, 250, 400]})))
    run(claim())
    paid = [run(order(f"o{i}")).events for i in range(3)]
    assert [e.amount_cents for events in paid for e in events if e.TYPE == "reward_granted"] == [
        100,
        250,
        400,
    ]


def test_milestones_pay_when_progress_reaches_them() -> None:
    plan = {
        "mode": "milestones",
        "milestones": [{"at": 2, "amount_cents": 300}, {"at": 3, "amount_cents": 700}],
    }
    run = Run(catalog(template(reward=plan)))
    run(claim())
    assert run.types(run(order("o1"))) == ["task_advanced"]
    assert run(order("o2")).events[-1].amount_cents == 300
    assert run(order("o3")).events[-1].amount_cents == 700
    out = run(refund("r1", "o3", 2000), refund("r2", "o2", 2000))
    assert [e.amount_cents for e in out.events if e.TYPE == "reward_revoked"] == [300]
    assert run.net_paid() == 0


def test_reward_the_pool_cannot_pay_is_rejected_budget_exhausted() -> None:
    pools = [{"pool_id": "cash", "total": 700, "unit": "cents"}]
    cat = catalog(
        template(target=1, reward={"mode": "cumulative", "amount_cents": 500, "pool_id": "cash"}),
        pools=pools,
    )
    first, second = Run(cat), Run(cat)
    second.ledger = first.ledger  # two users, one pool
    first(claim(user="a"), order("o1", user="a"))
    out = second(claim(user="b"), order("o2", user="b"))
    rejected = out.events[-1]
    assert (rejected.TYPE, rejected.reason, rejected.amount_cents) == (
        "reward_rejected",
        "budget_exhausted",
        500,
    )
    assert first.ledger.balances()["cash"].remaining == 200


def test_rejected_reward_is_final_and_never_retried_even_when_the_pool_refills() -> None:
    pools = [{"pool_id": "cash", "total": 600, "unit": "cents"}]
    plan = {"mode": "cumulative", "amount_cents": 500, "pool_id": "cash"}
    cat = catalog(template(target=1, reward=plan), pools=pools)
    a, b = Run(cat), Run(cat)
    b.ledger = a.ledger
    a(claim(user="a"), order("oa", user="a"))
    b(claim(user="b"), order("ob", user="b"))
    assert b.types() == ["task_advanced", "task_completed", "reward_rejected"]
    a(refund("ra", "oa", 2000, user="a"))  # 500 back: the pool could pay b now
    assert a.ledger.balances()["cash"].remaining == 600
    out = b(refund("rb", "ob", 2000, user="b"))
    assert b.types(out) == ["task_rolled_back"]  # nothing was paid, nothing to revoke
    out = b(order("ob2", at=t(5), user="b"))
    assert b.types(out) == ["task_advanced", "task_completed"]  # no second attempt


def test_revoked_reward_returns_its_amount_to_the_pool() -> None:
    pools = [{"pool_id": "cash", "total": 500, "unit": "cents"}]
    cat = catalog(
        template(target=1, reward={"mode": "cumulative", "amount_cents": 500, "pool_id": "cash"}),
        pools=pools,
    )
    a, b = Run(cat), Run(cat)
    b.ledger = a.ledger
    a(claim(user="a"), order("oa", user="a"))
    assert a.ledger.balances()["cash"].remaining == 0
    a(refund("ra", "oa", 2000, user="a"))
    assert a.ledger.balances()["cash"].remaining == 500
    assert b(claim(user="b"), order("ob", user="b")).events[-1].TYPE == "reward_granted"


def test_unbudgeted_reward_has_null_pool_and_always_pays() -> None:
    run = Run(catalog(template(target=1)))
    granted = run(claim(), order("o1")).events[-1]
    assert (granted.TYPE, granted.pool_id, granted.prize_id) == ("reward_granted", None, None)


def test_lottery_draw_is_deterministic_from_task_and_draw_number() -> None:
    prizes = [
        {"prize_id": p, "amount_cents": 100 * i, "weight": 1} for i, p in enumerate("abcdefgh")
    ]
    cat = catalog(template(reward=lottery(prizes)), pools=[CASH])
    runs = [Run(cat) for _ in range(2)]
    for run in runs:
        run(claim(), order("o1"), order("o2"), order("o3"))
    assert runs[0].all_events() == runs[1].all_events()
    plan = cat.templates["t"].reward
    drawn = [
        plan.prizes[draw_prize_index(plan, runs[0].task().task_id, k)].prize_id for k in range(3)
    ]
    assert [e.prize_id for e in runs[0].all_events() if e.TYPE == "reward_granted"] == drawn


def test_lottery_draws_follow_the_weights() -> None:
    prizes = [
        {"prize_id": "rare", "amount_cents": 1000, "weight": 1},
        {"prize_id": "common", "amount_cents": 10, "weight": 9},
    ]
    cat = catalog(template(reward=lottery(prizes)), pools=[CASH])
    plan = cat.templates["t"].reward
    picks = [draw_prize_index(plan, f"task-{n}", 0) for n in range(5000)]
    assert 0.07 < picks.count(0) / len(picks) < 0.13


def test_lottery_prize_whose_pool_is_empty_falls_back_down_the_list() -> None:
    prizes = [
        {"prize_id": "grand", "amount_cents": 10_000, "weight": 1, "pool_id": "grand"},
        {"prize_id": "small", "amount_cents": 100, "weight": 0},
    ]
    pools = [CASH, {"pool_id": "grand", "total": 1, "unit": "items"}]
    cat = catalog(template(reward=lottery(prizes)), pools=pools)
    run = Run(cat)
    run(claim())
    first = run(order("o1")).events[-1]
    second = run(order("o2")).events[-1]
    assert (first.prize_id, first.pool_id, first.amount_cents) == ("grand", "grand", 10_000)
    assert (second.prize_id, second.pool_id, second.amount_cents) == ("small", "cash", 100)
    assert run.ledger.balances()["grand"].remaining == 0
    assert run.ledger.balances()["cash"].remaining == 10_000 - 100


def test_lottery_draw_is_rejected_when_no_prize_down_the_list_can_pay() -> None:
    prizes = [{"prize_id": "only", "amount_cents": 100, "weight": 1}]
    cat = catalog(
        template(reward=lottery(prizes)), pools=[{"pool_id": "cash", "total": 150, "unit": "cents"}]
    )
    run = Run(cat)
    run(claim(), order("o1"))
    out = run(order("o2"))
    rejected = out.events[-1]
    assert (rejected.TYPE, rejected.prize_id, rejected.reason) == (
        "reward_rejected",
        "only",
        "budget_exhausted",
    )


def test_zero_cent_prize_is_granted_like_any_other() -> None:
    prizes = [{"prize_id": "thanks", "amount_cents": 0, "weight": 1}]
    cat = catalog(
        template(reward=lottery(prizes)), pools=[{"pool_id": "cash", "total": 0, "unit": "cents"}]
    )
    run = Run(cat)
    granted = run(claim(), order("o1")).events[-1]
    assert (granted.TYPE, granted.prize_id, granted.amount_cents) == ("reward_granted", "thanks", 0)


def test_items_pool_pays_one_item_per_prize() -> None:
    prizes = [{"prize_id": "eggs", "amount_cents": 1200, "weight": 1, "pool_id": "eggs"}]
    pools = [{"pool_id": "eggs", "total": 2, "unit": "items"}]
    cat = catalog(template(reward=lottery(prizes, pool=None)), pools=pools)
    run = Run(cat)
    run(claim(), order("o1"), order("o2"))
    assert run.ledger.balances()["eggs"].remaining == 0
    assert run(order("o3")).events[-1].TYPE == "reward_rejected"


def test_lottery_per_completion_gives_one_draw_at_target() -> None:
    prizes = [{"prize_id": "p", "amount_cents": 50, "weight": 1}]
    cat = catalog(template(reward=lottery(prizes, draws_per="completion")), pools=[CASH])
    run = Run(cat)
    run(claim(), order("o1"), order("o2"))
    assert run.net_paid() == 0
    assert run.types(run(order("o3"))) == ["task_advanced", "task_completed", "reward_granted"]


def test_lottery_redraw_after_clawback_lands_on_the_same_prize() -> None:
    prizes = [{"prize_id": p, "amount_cents": 10 * i, "weight": 1} for i, p in enumerate("abcdef")]
    cat = catalog(template(reward=lottery(prizes)), pools=[CASH])
    run = Run(cat)
    first = run(claim(), order("o1")).events[-1]
    run(refund("r1", "o1", 2000))
    again = run(order("o2")).events[-1]
    assert again.prize_id == first.prize_id
    assert again.reward_id != first.reward_id


def test_due_slots_per_mode() -> None:
    assert due_slots(RewardPlan("cumulative", None, amount_cents=1), 2, 3) == 0
    assert due_slots(RewardPlan("cumulative", None, amount_cents=1), 3, 3) == 1
    assert due_slots(RewardPlan("per_order", None, per_order_cents=(1, 2, 3)), 2, 3) == 2
    lottery_plan = RewardPlan("lottery", None, draws_per="order")
    assert due_slots(lottery_plan, 2, 3) == 2
