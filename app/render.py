"""Render: one query, many placements. A user's tasks as the front end shows them.

    render(state, catalog, scene, at, user_tags=None) -> tuple[TaskView | OfferView, ...]

For a scene (check-in page, home, post-purchase...) and an instant `at`
passed in (no clock here), in this order:
- the user's running tasks whose template lists the scene, highest priority
  first, then earliest claimed: in progress before the deadline, or
  completed and still before it (a refund could reopen it). A hidden
  template shows a dark box (`HiddenTaskView`: the accrued amount only); a
  visible one a clear box (`VisibleTaskView`: progress x/target, orders or
  days left, the next reward and the deadline);
- when `user_tags` is given, the templates the user could claim now in that
  scene (`OfferView`): active at `at`, eligible by tags, no running instance,
  max_claims not reached.
Expired tasks, and tasks whose deadline is <= at, are not shown.

"Accrued" is what the task has paid and not taken back (granted - revoked).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.catalog import Catalog, RewardPlan, Template
from app.rewards import GRANT_REASONS, due_slots, planned_cents
from app.state import COMPLETED, IN_PROGRESS, TaskInstance, UserState


@dataclass(frozen=True, slots=True)
class NextReward:
    at_progress: int  # the progress that earns it
    kind: str  # completion | order_step | milestone | lottery_draw
    amount_cents: int | None  # None for a lottery draw (the prize is not known yet)


@dataclass(frozen=True, slots=True)
class HiddenTaskView:
    """Dark box: the user sees only what has accrued so far."""

    template_id: str
    title: str
    task_id: str
    accrued_cents: int


@dataclass(frozen=True, slots=True)
class VisibleTaskView:
    """Clear box: progress, what is left, the next reward, the deadline."""

    template_id: str
    title: str
    task_id: str
    status: str  # in_progress | completed
    progress: int
    target: int
    count_by: str  # "order" or "day": what `left` counts
    left: int
    next_reward: NextReward | None
    deadline: int
    accrued_cents: int


@dataclass(frozen=True, slots=True)
class OfferView:
    """A template the user may claim now."""

    template_id: str
    title: str
    display: str
    target: int
    count_by: str
    duration_days: int


TaskView = HiddenTaskView | VisibleTaskView


def render(
    state: UserState | None,
    catalog: Catalog,
    scene: str,
    at: int,
    user_tags: tuple[str, ...] | None = None,
) -> tuple[TaskView | OfferView, ...]:
    templates = catalog.templates
    running = [
        inst
        for inst in (() if state is None else state.instances)
        if inst.status in (IN_PROGRESS, COMPLETED)
        and at < inst.deadline
        and scene in templates[inst.template_id].scenes
    ]
    running.sort(key=lambda i: (-templates[i.template_id].priority, i.claimed_at, i.task_id))
    views: list[TaskView | OfferView] = [_task_view(i, templates[i.template_id]) for i in running]
    if user_tags is not None:
        views.extend(_offers(state, catalog, scene, at, frozenset(user_tags)))
    return tuple(views)


def _task_view(inst: TaskInstance, template: Template) -> TaskView:
    accrued = inst.net_paid_cents()
    if template.display == "hidden":
        return HiddenTaskView(template.template_id, template.title, inst.task_id, accrued)
    return VisibleTaskView(
        template_id=template.template_id,
        title=template.title,
        task_id=inst.task_id,
        status=inst.status,
        progress=inst.progress,
        target=template.target,
        count_by=template.count_by,
        left=max(0, template.target - inst.progress),
        next_reward=next_reward(template.reward, inst.progress, template.target),
        deadline=inst.deadline,
        accrued_cents=accrued,
    )


def next_reward(plan: RewardPlan, progress: int, target: int) -> NextReward | None:
    """The first reward the current progress has not earned yet, if any."""
    slot = due_slots(plan, progress, target)
    kind = GRANT_REASONS[plan.mode]
    if plan.mode == "cumulative":
        return None if slot else NextReward(target, kind, plan.amount_cents)
    if plan.mode == "per_order":
        if slot >= len(plan.per_order_cents):
            return None
        return NextReward(slot + 1, kind, planned_cents(plan, slot))
    if plan.mode == "milestones":
        if slot >= len(plan.milestones):
            return None
        return NextReward(plan.milestones[slot].at, kind, planned_cents(plan, slot))
    if plan.draws_per == "order":
        return None if slot >= target else NextReward(slot + 1, kind, None)
    return None if slot else NextReward(target, kind, None)


def _offers(
    state: UserState | None, catalog: Catalog, scene: str, at: int, tags: frozenset[str]
) -> list[OfferView]:
    instances = () if state is None else state.instances
    offers = []
    for template in sorted(catalog.templates.values(), key=lambda t: (-t.priority, t.template_id)):
        if scene not in template.scenes or not template.active_from <= at < template.active_until:
            continue
        mine = [i for i in instances if i.template_id == template.template_id]
        if any(i.status == IN_PROGRESS and at < i.deadline for i in mine):
            continue
        if len(mine) >= template.claim_rule.max_claims:
            continue
        rule = template.claim_rule
        if (rule.user_tags_any and not rule.user_tags_any & tags) or rule.user_tags_none & tags:
            continue
        offers.append(
            OfferView(
                template.template_id,
                template.title,
                template.display,
                template.target,
                template.count_by,
                template.duration_days,
            )
        )
    return offers
