"""Order flow: idempotency, order rule, window, count by order or day, priority."""

from __future__ import annotations

from engine_builders import Run, catalog, claim, order, t, template

from app.engine import handle
from schemas.timestamps import parse_utc


def test_order_of_a_user_without_task_costs_nothing_and_creates_no_state() -> None:
    cat = catalog()
    out = handle(None, order("o1"), cat, Run(cat).ledger)
    assert out.state is None
    assert out.events == ()


def test_qualifying_order_advances_the_task() -> None:
    run = Run(catalog())
    run(claim())
    out = run(order("o1"))
    (advanced,) = out.events
    assert (advanced.TYPE, advanced.progress, advanced.target) == ("task_advanced", 1, 3)
    assert advanced.order_id == "o1"


def test_duplicate_order_id_changes_nothing() -> None:
    run = Run(catalog())
    run(claim())
    first = run(order("o1"))
    again = run(order("o1", event_id="another-delivery"))
    assert again.events == ()
    assert again.state is first.state


def test_order_below_min_amount_does_not_count() -> None:
    run = Run(catalog(template(order_rule={"min_amount_cents": 1000})))
    run(claim())
    assert run(order("o1", amount=999)).events == ()
    assert "amount 999 < min 1000" in run.outcomes[-1].notes[0]
    assert run(order("o2", amount=1000)).events[0].TYPE == "task_advanced"


def test_order_on_a_channel_not_listed_does_not_count() -> None:
    run = Run(catalog(template(order_rule={"channels": ["next_day_pickup"]})))
    run(claim())
    assert run(order("o1", channel="hour_delivery")).events == ()
    assert run(order("o2", channel="next_day_pickup")).events[0].TYPE == "task_advanced"


def test_order_counts_iff_claimed_at_le_at_lt_deadline() -> None:
    run = Run(catalog(template(duration_days=1, target=5)))
    run(claim(at=t(2, 10)))
    assert run(order("before", at=t(2, 10) - 1)).events == ()
    assert "before the claim" in run.outcomes[-1].notes[0]
    assert run(order("at_claim", at=t(2, 10))).events[0].progress == 1
    assert run(order("last_micro", at=t(3, 10) - 1)).events[0].progress == 2
    out = run(order("at_deadline", at=t(3, 10)))
    assert run.types(out) == ["task_expired"]


def test_reaching_target_completes_the_task_and_pays_cumulative_reward() -> None:
    run = Run(catalog(template(target=2)))
    run(claim(), order("o1"))
    out = run(order("o2"))
    assert run.types(out) == ["task_advanced", "task_completed", "reward_granted"]
    assert out.events[-1].amount_cents == 500
    assert run.task().status == "completed"


def test_order_after_completion_does_not_count() -> None:
    run = Run(catalog(template(target=1)))
    run(claim(), order("o1"))
    out = run(order("o2", at=t(3, 13)))
    assert out.events == ()
    assert "already completed" in out.notes[0]


def test_count_by_day_counts_distinct_purchase_days_in_the_template_zone() -> None:
    # 2024-03-03 15:30Z is 23:30 in Shanghai; 16:30Z is the next day there.
    run = Run(catalog(template(count_by="day", timezone="Asia/Shanghai", target=3)))
    run(claim())
    assert run(order("o1", at=parse_utc("2024-03-03T15:30:00Z"))).events[0].progress == 1
    same_day = run(order("o2", at=parse_utc("2024-03-03T15:45:00Z")))
    assert same_day.events == ()
    assert "already counts" in same_day.notes[0]
    next_day = run(order("o3", at=parse_utc("2024-03-03T16:30:00Z")))
    assert next_day.events[0].progress == 2


def test_order_advances_every_matching_non_exclusive_task() -> None:
    cat = catalog(template(template_id="a"), template(template_id="b"))
    run = Run(cat)
    run(claim("a"), claim("b"))
    out = run(order("o1"))
    assert sorted(e.template_id for e in out.events) == ["a", "b"]


def test_exclusive_tasks_take_the_order_by_priority_then_claim_time_then_template_id() -> None:
    cat = catalog(
        template(template_id="low", exclusive=True, priority=1),
        template(template_id="high", exclusive=True, priority=9),
        template(template_id="free", exclusive=False),
    )
    run = Run(cat)
    run(claim("low", at=t(2, 1)), claim("high", at=t(2, 2)), claim("free", at=t(2, 3)))
    out = run(order("o1"))
    assert sorted(e.template_id for e in out.events) == ["free", "high"]
    assert any("exclusive, the order went to high" in n for n in out.notes)


def test_exclusive_tie_on_priority_goes_to_the_earliest_claim() -> None:
    cat = catalog(
        template(template_id="a", exclusive=True), template(template_id="b", exclusive=True)
    )
    run = Run(cat)
    run(claim("b", at=t(2, 1)), claim("a", at=t(2, 2)))
    assert [e.template_id for e in run(order("o1")).events] == ["b"]


def test_exclusive_tie_on_priority_and_claim_time_goes_to_the_smallest_template_id() -> None:
    cat = catalog(
        template(template_id="b", exclusive=True), template(template_id="a", exclusive=True)
    )
    run = Run(cat)
    run(claim("b", at=t(2, 1)), claim("a", at=t(2, 1), event_id="ca"))
    assert [e.template_id for e in run(order("o1")).events] == ["a"]


def test_exclusive_task_whose_rule_refuses_the_order_lets_the_next_one_take_it() -> None:
    cat = catalog(
        template(
            template_id="big", exclusive=True, priority=9, order_rule={"min_amount_cents": 5000}
        ),
        template(template_id="small", exclusive=True, priority=1),
    )
    run = Run(cat)
    run(claim("big"), claim("small"))
    assert [e.template_id for e in run(order("o1", amount=2000)).events] == ["small"]
