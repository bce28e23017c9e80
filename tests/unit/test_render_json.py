"""The render API's JSON bodies (app.render_json): dark vs clear box, offers, claims."""

from __future__ import annotations

from engine_builders import Run, catalog, claim, order, t, template

from app.render import render
from app.render_json import (
    CLAIMED,
    IGNORED,
    REJECTED,
    claim_body,
    claim_event_id,
    claimed_task_id,
    tasks_body,
)
from schemas.timestamps import format_utc

HIDDEN_FIELDS = {"display", "template_id", "title", "task_id", "accrued_cents"}


def test_a_dark_box_says_nothing_about_progress() -> None:
    plan = {"mode": "per_order", "per_order_cents": [100, 200, 300]}
    run = Run(catalog(template(display="hidden", reward=plan)))
    run(claim(), order("o1"))
    views = render(run.state, run.catalog, "home", t(4))
    body = tasks_body("u1", "home", t(4), views)
    (task,) = body["tasks"]
    assert set(task) == HIDDEN_FIELDS
    assert (task["display"], task["accrued_cents"]) == ("hidden", 100)
    assert task["task_id"] == run.state.instances[0].task_id  # type: ignore[union-attr]


def test_a_clear_box_has_progress_next_reward_and_deadline_as_rfc3339() -> None:
    run = Run(catalog(template(reward={"mode": "per_order", "per_order_cents": [1, 2, 3]})))
    run(claim(at=t(2)), order("o1"))
    views = render(run.state, run.catalog, "home", t(4))
    body = tasks_body("u1", "home", t(4), views)
    assert body["user_id"] == "u1"
    assert body["scene"] == "home"
    assert body["at"] == format_utc(t(4))
    assert body["offers"] == []
    (task,) = body["tasks"]
    assert task["display"] == "visible"
    assert (task["progress"], task["target"], task["left"], task["count_by"]) == (1, 3, 2, "order")
    assert task["next_reward"] == {"at_progress": 2, "kind": "order_step", "amount_cents": 2}
    assert task["deadline"] == format_utc(t(9))
    assert task["status"] == "in_progress"
    assert task["accrued_cents"] == 1


def test_offers_are_listed_apart_from_tasks() -> None:
    cat = catalog(template(template_id="held"), template(template_id="open", display="hidden"))
    run = Run(cat)
    run(claim("held"))
    body = tasks_body("u1", "home", t(3), render(run.state, cat, "home", t(3), ()))
    assert [task["template_id"] for task in body["tasks"]] == ["held"]
    assert body["offers"] == [
        {"template_id": "open", "title": "test task", "display": "hidden", "target": 3,
         "count_by": "order", "duration_days": 7}
    ]  # fmt: skip


def test_an_unknown_user_gets_empty_lists() -> None:
    body = tasks_body("nobody", "home", t(3), render(None, catalog(), "home", t(3)))
    assert (body["tasks"], body["offers"]) == ([], [])


def test_claim_outcomes_come_from_what_the_engine_recorded() -> None:
    run = Run(catalog())
    run(claim(event_id="c1"))
    task_id = claimed_task_id(run.state, "c1")
    assert task_id == run.state.instances[0].task_id  # type: ignore[union-attr]
    assert claimed_task_id(run.state, "c2") is None
    assert claimed_task_id(None, "c1") is None
    assert claim_body("c1", task_id, None) == {
        "claim_id": "c1", "outcome": CLAIMED, "reason": None, "task_id": task_id,
    }  # fmt: skip
    assert claim_body("c2", None, "already_claimed")["outcome"] == REJECTED
    assert claim_body("c2", None, "already_claimed")["reason"] == "already_claimed"
    assert claim_body("c3", None, None)["outcome"] == IGNORED


def test_claim_ids_repeat_for_a_request_id_and_differ_otherwise() -> None:
    assert claim_event_id("u1", "r1", "x") == claim_event_id("u1", "r1", "y")
    assert claim_event_id("u1", "r1", "x") != claim_event_id("u2", "r1", "x")
    assert claim_event_id("u1", None, "x") != claim_event_id("u1", None, "y")
    assert claim_event_id("u1", None, "x").startswith("api-")
