"""The render API's JSON bodies: plain dicts from the core's values, stable field names.

    tasks_body(user_id, scene, at, views)     GET /users/{user_id}/tasks
    claim_body(claim_id, state, rejection)    POST /users/{user_id}/claims (and its poll)

A hidden template is a dark box: only `display`, ids, title and the accrued
amount, nothing about progress (DESIGN §1). A visible one is a clear box:
progress/target, what is left, the next reward, the deadline. Times are
RFC 3339 UTC strings, money integer cents, as on the wire. docs/openapi.json
describes these shapes; a unit test checks both agree.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Any

from app.render import HiddenTaskView, NextReward, OfferView, TaskView, VisibleTaskView
from app.state import UserState
from schemas.timestamps import format_utc

CLAIMED = "claimed"
REJECTED = "rejected"
IGNORED = "ignored"  # judged before (same claim id, or older than the user's last claim)


def tasks_body(
    user_id: str, scene: str, at: int, views: tuple[TaskView | OfferView, ...]
) -> dict[str, Any]:
    """The answer to "what does this user see in this scene at `at`"."""
    return {
        "user_id": user_id,
        "scene": scene,
        "at": format_utc(at),
        "tasks": [task_json(v) for v in views if not isinstance(v, OfferView)],
        "offers": [offer_json(v) for v in views if isinstance(v, OfferView)],
    }


def task_json(view: TaskView) -> dict[str, Any]:
    if isinstance(view, HiddenTaskView):
        return {
            "display": "hidden",
            "template_id": view.template_id,
            "title": view.title,
            "task_id": view.task_id,
            "accrued_cents": view.accrued_cents,
        }
    return _visible_json(view)


def _visible_json(view: VisibleTaskView) -> dict[str, Any]:
    return {
        "display": "visible",
        "template_id": view.template_id,
        "title": view.title,
        "task_id": view.task_id,
        "status": view.status,
        "progress": view.progress,
        "target": view.target,
        "count_by": view.count_by,
        "left": view.left,
        "next_reward": None if view.next_reward is None else _next_reward_json(view.next_reward),
        "deadline": format_utc(view.deadline),
        "accrued_cents": view.accrued_cents,
    }


def _next_reward_json(reward: NextReward) -> dict[str, Any]:
    return {
        "at_progress": reward.at_progress,
        "kind": reward.kind,
        "amount_cents": reward.amount_cents,
    }


def offer_json(view: OfferView) -> dict[str, Any]:
    return {
        "template_id": view.template_id,
        "title": view.title,
        "display": view.display,
        "target": view.target,
        "count_by": view.count_by,
        "duration_days": view.duration_days,
    }


def claim_event_id(user_id: str, request_id: str | None, fresh: str) -> str:
    """The event id of a claim made through the API: derived from the user
    and the caller's request_id (a retry is the same claim), else from
    `fresh`, a unique value the caller supplies (the core draws no randomness)."""
    if request_id is None:
        return f"api-{fresh}"
    return "api-" + sha256(f"{user_id}\x1f{request_id}".encode()).hexdigest()[:32]


def claimed_task_id(state: UserState | None, claim_id: str) -> str | None:
    """The task the claim created, if the user's state says it created one."""
    if state is None:
        return None
    for inst in state.instances:
        if inst.claim_event_id == claim_id:
            return inst.task_id
    return None


def claim_body(claim_id: str, task_id: str | None, rejection_reason: str | None) -> dict[str, Any]:
    """The outcome of a processed claim, from what the engine recorded: the
    instance it created (`task_id`), else the reason of its claim_rejected,
    else neither (the engine judged it a duplicate and emitted nothing)."""
    if task_id is not None:
        return {"claim_id": claim_id, "outcome": CLAIMED, "reason": None, "task_id": task_id}
    if rejection_reason is not None:
        return {
            "claim_id": claim_id,
            "outcome": REJECTED,
            "reason": rejection_reason,
            "task_id": None,
        }
    return {
        "claim_id": claim_id,
        "outcome": IGNORED,
        "reason": "duplicate claim: an event with this id, or a later claim of this user, "
        "was processed before",
        "task_id": None,
    }


def pending_body(claim_id: str) -> dict[str, Any]:
    return {"claim_id": claim_id, "outcome": "pending", "reason": None, "task_id": None}
