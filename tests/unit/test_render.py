"""Render: dark and clear boxes per scene, next reward, offers."""

from __future__ import annotations

from engine_builders import Run, catalog, claim, order, refund, t, template

from app.render import HiddenTaskView, NextReward, OfferView, VisibleTaskView, render


def test_hidden_template_renders_a_dark_box_with_the_accrued_amount_only() -> None:
    plan = {"mode": "per_order", "per_order_cents": [100, 200, 300]}
    run = Run(catalog(template(display="hidden", reward=plan)))
    run(claim(), order("o1"), order("o2"))
    (view,) = render(run.state, run.catalog, "home", t(4))
    assert isinstance(view, HiddenTaskView)
    assert view.accrued_cents == 300


def test_visible_template_renders_progress_what_is_left_next_reward_and_deadline() -> None:
    plan = {
        "mode": "milestones",
        "milestones": [{"at": 1, "amount_cents": 50}, {"at": 3, "amount_cents": 400}],
    }
    run = Run(catalog(template(reward=plan, count_by="day")))
    run(claim(at=t(2)), order("o1"))
    (view,) = render(run.state, run.catalog, "home", t(4))
    assert isinstance(view, VisibleTaskView)
    assert (view.progress, view.target, view.left, view.count_by) == (1, 3, 2, "day")
    assert view.next_reward == NextReward(3, "milestone", 400)
    assert (view.deadline, view.accrued_cents, view.status) == (t(9), 50, "in_progress")


PRIZE = {"prize_id": "p", "amount_cents": 1, "weight": 1}


def test_next_reward_per_mode() -> None:
    cases = [
        ({"mode": "cumulative", "amount_cents": 900}, NextReward(3, "completion", 900)),
        ({"mode": "per_order", "per_order_cents": [1, 2, 3]}, NextReward(2, "order_step", 2)),
        (
            {"mode": "lottery", "draws_per": "order", "prizes": [PRIZE]},
            NextReward(2, "lottery_draw", None),
        ),
    ]
    for plan, expected in cases:
        run = Run(catalog(template(reward=plan)))
        run(claim(), order("o1"))
        (view,) = render(run.state, run.catalog, "home", t(4))
        assert isinstance(view, VisibleTaskView)
        assert view.next_reward == expected


def test_only_tasks_of_the_scene_are_shown_by_priority() -> None:
    cat = catalog(
        template(template_id="low", scenes=["home", "checkin"], priority=1),
        template(template_id="high", scenes=["home"], priority=5),
        template(template_id="elsewhere", scenes=["post_purchase"]),
    )
    run = Run(cat)
    run(claim("low"), claim("high"), claim("elsewhere"))
    assert [v.template_id for v in render(run.state, cat, "home", t(3))] == ["high", "low"]
    assert [v.template_id for v in render(run.state, cat, "checkin", t(3))] == ["low"]


def test_completed_task_shows_until_its_deadline_and_expired_tasks_not_at_all() -> None:
    run = Run(catalog(template(target=1, template_id="done"), template(template_id="open")))
    run(claim("done", at=t(2)), claim("open", at=t(2, 13)), order("o1", at=t(3)))
    views = render(run.state, run.catalog, "home", t(5))
    assert [(v.template_id, v.status) for v in views] == [  # type: ignore[union-attr]
        ("done", "completed"),
        ("open", "in_progress"),
    ]
    assert views[0].next_reward is None  # type: ignore[union-attr]
    assert render(run.state, run.catalog, "home", t(9, 13)) == ()  # deadlines reached


def test_accrued_amount_drops_after_a_clawback() -> None:
    run = Run(catalog(template(display="hidden", target=1)))
    run(claim(), order("o1"))
    assert render(run.state, run.catalog, "home", t(4))[0].accrued_cents == 500  # type: ignore[union-attr]
    run(refund("r1", "o1", 2000))
    assert render(run.state, run.catalog, "home", t(5))[0].accrued_cents == 0  # type: ignore[union-attr]


def test_offers_list_templates_the_user_may_claim_now() -> None:
    cat = catalog(
        template(template_id="open"),
        template(template_id="vip", claim_rule={"user_tags_any": ["vip"]}),
        template(template_id="later", active_from="2024-03-20T00:00:00Z"),
        template(template_id="held"),
    )
    run = Run(cat)
    run(claim("held"))
    views = render(run.state, cat, "home", t(3), user_tags=())
    offers = [v.template_id for v in views if isinstance(v, OfferView)]
    assert offers == ["open"]
    assert [v.template_id for v in render(None, cat, "home", t(3), ("vip",))] == [
        "held",
        "open",
        "vip",
    ]
