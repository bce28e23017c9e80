"""Claim flow: eligibility, active window, max_claims, already_claimed, unknown template."""

from __future__ import annotations

from engine_builders import Run, catalog, claim, order, t, template

from app import ids


def test_claim_creates_an_instance_with_deadline_after_duration_days() -> None:
    run = Run(catalog(template(duration_days=7)))
    out = run(claim(at=t(2, 9)))
    (claimed,) = out.events
    assert claimed.TYPE == "task_claimed"
    assert claimed.deadline == t(9, 9)
    assert claimed.task_id == ids.task_id("u1", "t", 0)
    assert run.task().status == "in_progress"
    assert out.state is not None
    assert out.state.next_deadline == t(9, 9)


def test_claim_of_unknown_template_is_rejected_and_creates_no_state() -> None:
    run = Run(catalog())
    out = run(claim("nope"))
    assert [(e.TYPE, e.reason, e.task_id) for e in out.events] == [
        ("claim_rejected", "unknown_template", None)
    ]
    assert out.state is None


def test_claim_window_is_half_open() -> None:
    cat = catalog(template(active_from="2024-03-02T00:00:00Z", active_until="2024-03-05T00:00:00Z"))
    assert Run(cat)(claim(at=t(2, 0))).events[0].TYPE == "task_claimed"
    before = Run(cat)(claim(at=t(2, 0) - 1)).events[0]
    at_end = Run(cat)(claim(at=t(5, 0))).events[0]
    assert (before.TYPE, before.reason) == ("claim_rejected", "not_active")
    assert (at_end.TYPE, at_end.reason) == ("claim_rejected", "not_active")
    assert Run(cat)(claim(at=t(5, 0) - 1)).events[0].TYPE == "task_claimed"


def test_claim_while_holding_an_active_instance_is_rejected_already_claimed() -> None:
    run = Run(catalog(template(claim_rule={"max_claims": 5})))
    run(claim(at=t(2), event_id="c1"))
    out = run(claim(at=t(3), event_id="c2"))
    assert [(e.TYPE, e.reason) for e in out.events] == [("claim_rejected", "already_claimed")]
    assert len(run.state.instances) == 1  # type: ignore[union-attr]


def test_redelivered_claim_event_changes_nothing() -> None:
    run = Run(catalog())
    first = run(claim(event_id="c1"))
    again = run(claim(event_id="c1"))
    assert again.events == ()
    assert again.state is first.state


def test_max_claims_counts_every_instance_ever_claimed() -> None:
    cat = catalog(template(target=1, duration_days=1, claim_rule={"max_claims": 2}))
    run = Run(cat)
    run(claim(at=t(2), event_id="c1"), order("o1", at=t(2, 13)))  # completes the first
    second = run(claim(at=t(3), event_id="c2"))
    assert second.events[0].TYPE == "task_claimed"
    assert second.events[0].task_id == ids.task_id("u1", "t", 1)
    run(order("o2", at=t(3, 13)))
    third = run(claim(at=t(5), event_id="c3"))
    assert [(e.TYPE, e.reason) for e in third.events] == [("claim_rejected", "max_claims_reached")]


def test_expired_instance_frees_the_template_for_a_new_claim_when_max_claims_allows() -> None:
    run = Run(catalog(template(duration_days=1, claim_rule={"max_claims": 2})))
    run(claim(at=t(2), event_id="c1"))
    out = run(claim(at=t(3, 12), event_id="c2"))  # at >= deadline: expiry first
    assert run.types(out) == ["task_expired", "task_claimed"]


def test_claim_requires_one_of_user_tags_any() -> None:
    cat = catalog(template(claim_rule={"user_tags_any": ["lapsed", "vip"]}))
    assert Run(cat)(claim(tags=("vip",))).events[0].TYPE == "task_claimed"
    rejected = Run(cat)(claim(tags=("new",))).events[0]
    assert (rejected.TYPE, rejected.reason) == ("claim_rejected", "not_eligible")


def test_claim_refused_when_user_has_a_tag_of_user_tags_none() -> None:
    cat = catalog(template(claim_rule={"user_tags_none": ["fraud"]}))
    assert Run(cat)(claim(tags=("vip",))).events[0].TYPE == "task_claimed"
    rejected = Run(cat)(claim(tags=("vip", "fraud"))).events[0]
    assert rejected.reason == "not_eligible"


def test_redelivered_rejected_claim_yields_the_identical_rejection() -> None:
    run = Run(catalog())
    first = run(claim("nope", event_id="c9"))
    again = run(claim("nope", event_id="c9"))
    assert first.events == again.events  # same id: consumers de-duplicate it


def test_rejected_claim_redelivered_after_the_task_expired_creates_nothing() -> None:
    run = Run(catalog(template(duration_days=1, claim_rule={"max_claims": 3})))
    run(claim(at=t(2), event_id="c1"))
    rejected = run(claim(at=t(2, 13), event_id="c2"))
    assert rejected.events[0].reason == "already_claimed"
    run(order("o1", at=t(5)))  # expires the first task
    assert run(claim(at=t(2, 13), event_id="c2")).events == ()
    assert len(run.state.instances) == 1  # type: ignore[union-attr]
