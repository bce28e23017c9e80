"""Expiry by tick and by any later event of the user; ticks find users by deadline."""

from __future__ import annotations

from engine_builders import Run, catalog, claim, order, refund, t, template, tick

from app.budget import Ledger
from app.deadlines import DeadlineIndex, deadline_key
from app.replayer import Replayer


def test_tick_at_deadline_expires_an_unfinished_task() -> None:
    run = Run(catalog(template(duration_days=2)))
    run(claim(at=t(2)), order("o1", at=t(3)))
    assert run(tick(t(4) - 1)).events == ()
    out = run(tick(t(4)))
    (expired,) = out.events
    assert (expired.TYPE, expired.progress, expired.deadline) == ("task_expired", 1, t(4))
    assert out.state is not None
    assert out.state.next_deadline is None


def test_any_later_event_of_the_user_expires_the_task_first() -> None:
    run = Run(catalog(template(duration_days=2)))
    run(claim(at=t(2)))
    out = run(order("late", at=t(5)))
    assert run.types(out) == ["task_expired"]
    assert "order at/after the deadline" in out.notes[-1]


def test_rewards_earned_stay_when_the_task_expires() -> None:
    steps = [100, 200, 300]
    run = Run(catalog(template(reward={"mode": "per_order", "per_order_cents": steps})))
    run(claim(), order("o1"), tick(t(30)))
    assert run.task().status == "expired"
    assert run.net_paid() == 100


def test_completed_task_does_not_expire() -> None:
    run = Run(catalog(template(target=1)))
    run(claim(), order("o1"))
    assert run(tick(t(30))).events == ()
    assert run.task().status == "completed"


def test_duplicate_tick_changes_nothing() -> None:
    run = Run(catalog(template(duration_days=1)))
    run(claim(at=t(2)))
    first = run(tick(t(5)))
    again = run(tick(t(5)))
    assert len(first.events) == 1
    assert again.events == ()
    assert again.state is first.state


def test_tick_reaches_only_users_whose_next_deadline_has_passed() -> None:
    cat = catalog(template(duration_days=1), template(template_id="long", duration_days=9))
    replayer = Replayer(cat, Ledger(cat.pools.values()))
    replayer.apply(claim(at=t(2), user="soon"))
    replayer.apply(claim("long", at=t(2), user="later"))
    replayer.apply(order("x", user="nobody"))
    touched = replayer.apply(tick(t(4)))
    assert [user for user, _ in touched] == ["soon"]
    assert [user for user, _ in replayer.apply(tick(t(12)))] == ["later"]


def test_deadline_index_skips_stale_entries_and_reports_each_user_once() -> None:
    index = DeadlineIndex()
    index.update("a", None, 10)
    index.update("a", 10, 5)
    index.update("b", None, 7)
    index.update("c", None, 50)
    assert index.pop_due(10) == ["a", "b"]
    assert index.pop_due(10) == []
    assert index.pop_due(50) == ["c"]


def test_deadline_key_sorts_like_the_deadline() -> None:
    keys = [deadline_key(d, "u") for d in (5, 1_700_000_000_000_000, 40)]
    assert sorted(keys) == [deadline_key(d, "u") for d in (5, 40, 1_700_000_000_000_000)]


def test_expiry_forgets_orders_that_can_no_longer_count() -> None:
    run = Run(catalog(template(duration_days=1, order_rule={"min_amount_cents": 1000})))
    run(claim(at=t(2)), order("small", amount=10, at=t(2, 13)), order("big", at=t(2, 14)))
    assert set(run.state.orders) == {"small", "big"}  # type: ignore[union-attr]
    run(tick(t(4)))
    assert set(run.state.orders) == {"big"}  # type: ignore[union-attr]  # a refund may still come


def test_completed_task_past_its_deadline_lets_its_uncounted_orders_go() -> None:
    run = Run(catalog(template(target=1, duration_days=1)))
    run(claim(at=t(2)), order("counted", at=t(2, 13)), order("after", at=t(2, 14)))
    state = run.state
    assert state is not None
    assert set(state.orders) == {"counted", "after"}  # a refund could reopen the task
    assert state.next_deadline == t(3)  # so the tick index visits it when the window closes
    out = run(tick(t(3)))
    assert out.events == ()
    assert set(run.state.orders) == {"counted"}  # type: ignore[union-attr]
    assert run.state.next_deadline is None  # type: ignore[union-attr]


def test_held_refund_is_dropped_when_no_task_claimed_before_it_remains_live() -> None:
    run = Run(catalog(template(duration_days=1, claim_rule={"max_claims": 2})))
    run(claim(at=t(2), event_id="c1"), refund("r1", "never-seen", 100, at=t(2, 13)))
    assert set(run.state.held_refunds) == {"never-seen"}  # type: ignore[union-attr]
    run(claim(at=t(3, 13), event_id="c2"))  # the first task expires; a new one starts
    assert run.state.held_refunds == {}  # type: ignore[union-attr]


def test_refund_for_an_unknown_order_is_not_held_when_no_live_task_could_count_it() -> None:
    run = Run(catalog(template(duration_days=1)))
    run(claim(at=t(2)), tick(t(3)))
    out = run(refund("r1", "o1", 100, at=t(4)))
    assert "nothing to hold" in out.notes[-1]
    assert out.state is run.outcomes[-2].state
