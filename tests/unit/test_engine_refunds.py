"""Refund flow: rollback, partial refunds, held refunds, duplicates, policy ignore."""

from __future__ import annotations

from engine_builders import Run, catalog, claim, order, refund, t, template


def test_full_refund_rolls_back_progress_and_revokes_the_reward() -> None:
    run = Run(catalog(template(target=2)))
    run(claim(), order("o1"), order("o2"))
    assert run.net_paid() == 500
    out = run(refund("r1", "o1", 2000))
    assert run.types(out) == ["task_rolled_back", "reward_revoked"]
    rolled, revoked = out.events
    assert (rolled.progress, rolled.status, rolled.refund_id) == (1, "in_progress", "r1")
    assert revoked.amount_cents == 500
    assert run.net_paid() == 0
    assert run.task().status == "in_progress"


def test_completed_task_falling_below_target_counts_orders_again_until_deadline() -> None:
    run = Run(catalog(template(target=1)))
    run(claim(), order("o1"), refund("r1", "o1", 2000))
    out = run(order("o2", at=t(5)))
    assert run.types(out) == ["task_advanced", "task_completed", "reward_granted"]
    assert run.net_paid() == 500


def test_regranted_reward_after_a_clawback_has_a_new_reward_id() -> None:
    run = Run(catalog(template(target=1)))
    first = run(claim(), order("o1")).events[-1]
    run(refund("r1", "o1", 2000))
    again = run(order("o2", at=t(5))).events[-1]
    assert first.reward_id != again.reward_id


def test_partial_refund_keeping_the_order_above_min_amount_changes_nothing() -> None:
    run = Run(catalog(template(order_rule={"min_amount_cents": 1000})))
    run(claim(), order("o1", amount=3000))
    out = run(refund("r1", "o1", 1500))
    assert out.events == ()
    assert run.task().progress == 1


def test_partial_refunds_adding_up_under_min_amount_stop_the_order_counting() -> None:
    run = Run(catalog(template(order_rule={"min_amount_cents": 1000})))
    run(claim(), order("o1", amount=3000))
    run(refund("r1", "o1", 1500))
    out = run(refund("r2", "o1", 600))  # 900 left < 1000
    assert run.types(out) == ["task_rolled_back"]
    assert run.task().progress == 0


def test_refund_to_zero_stops_the_order_counting_even_with_min_amount_zero() -> None:
    run = Run(catalog(template(order_rule={"min_amount_cents": 0})))
    run(claim(), order("o1", amount=3000))
    assert run(refund("r1", "o1", 2999)).events == ()
    assert run.types(run(refund("r2", "o1", 1))) == ["task_rolled_back"]


def test_duplicate_refund_id_is_applied_once() -> None:
    run = Run(catalog(template(order_rule={"min_amount_cents": 1000})))
    run(claim(), order("o1", amount=3000))
    first = run(refund("r1", "o1", 1500))
    again = run(refund("r1", "o1", 1500, event_id="redelivered"))
    assert again.events == ()
    assert again.state is first.state
    assert run.task().progress == 1


def test_refund_before_order_is_held_until_the_order_arrives() -> None:
    run = Run(catalog(template(order_rule={"min_amount_cents": 1000})))
    run(claim())
    held = run(refund("r1", "o1", 1500, at=t(3, 14)))
    assert held.events == ()
    assert "held until it arrives" in held.notes[0]
    out = run(order("o1", amount=2000, at=t(3, 13)))  # 500 left after the held refund
    assert out.events == ()
    assert run.task().progress == 0
    assert run.state is not None
    assert run.state.held_refunds == {}


def test_held_refund_that_leaves_enough_lets_the_order_count() -> None:
    run = Run(catalog(template(order_rule={"min_amount_cents": 1000})))
    run(claim(), refund("r1", "o1", 500))
    assert run(order("o1", amount=2000)).events[0].TYPE == "task_advanced"


def test_duplicate_of_a_held_refund_is_held_once() -> None:
    run = Run(catalog(template(order_rule={"min_amount_cents": 1000})))
    run(claim(), refund("r1", "o1", 600))
    again = run(refund("r1", "o1", 600, event_id="redelivered"))
    assert again.state is run.outcomes[-2].state
    assert run(order("o1", amount=1700)).events[0].TYPE == "task_advanced"  # 1100 left


def test_refund_of_user_without_task_does_nothing() -> None:
    run = Run(catalog())
    out = run(refund("r1", "o1", 100))
    assert out.state is None
    assert out.events == ()


def test_refund_policy_ignore_changes_nothing() -> None:
    run = Run(catalog(template(target=1, refund_policy="ignore")))
    run(claim(), order("o1"))
    out = run(refund("r1", "o1", 2000))
    assert out.events == ()
    assert run.task().progress == 1
    assert run.net_paid() == 500


def test_refund_after_expiry_revokes_rewards_and_task_stays_expired() -> None:
    steps = [100, 200, 300]
    run = Run(catalog(template(reward={"mode": "per_order", "per_order_cents": steps})))
    run(claim(at=t(2)), order("o1", at=t(3)), order("o2", at=t(4)))
    out = run(refund("r1", "o2", 2000, at=t(20)))
    assert run.types(out) == ["task_expired", "task_rolled_back", "reward_revoked"]
    assert out.events[1].status == "expired"
    assert out.events[2].amount_cents == 200
    assert run.net_paid() == 100


def test_refund_after_deadline_of_a_completed_task_leaves_it_expired() -> None:
    run = Run(catalog(template(target=1, duration_days=2)))
    run(claim(at=t(2)), order("o1", at=t(3)))
    out = run(refund("r1", "o1", 2000, at=t(10)))
    assert run.types(out) == ["task_rolled_back", "task_expired", "reward_revoked"]
    assert run.task().status == "expired"
    assert run(order("o2", at=t(10, 13))).events == ()


def test_refund_on_day_counting_keeps_the_day_when_another_order_that_day_counts() -> None:
    run = Run(catalog(template(count_by="day", target=2)))
    run(claim(), order("o1", at=t(3, 9)), order("o2", at=t(3, 10)))
    out = run(refund("r1", "o1", 2000))
    assert out.events == ()
    assert run.task().progress == 1
    assert run.types(run(refund("r2", "o2", 2000))) == ["task_rolled_back"]
    assert run.task().progress == 0


def test_order_taken_by_exclusive_task_is_not_reassigned_after_a_partial_refund() -> None:
    cat = catalog(
        template(
            template_id="hi", exclusive=True, priority=9, order_rule={"min_amount_cents": 2000}
        ),
        template(
            template_id="lo", exclusive=True, priority=1, order_rule={"min_amount_cents": 500}
        ),
    )
    run = Run(cat)
    run(claim("hi"), claim("lo"), order("o1", amount=2500))
    out = run(refund("r1", "o1", 1000))
    assert [(e.TYPE, e.template_id) for e in out.events] == [("task_rolled_back", "hi")]
    assert run.task("lo").progress == 0
