"""The reward rule: make what a task has been paid match what its progress earns.

After every change of a task's progress the engine calls `settle`. A plan
splits its rewards into numbered slots and progress p earns a prefix of
them (`due_slots`):

- cumulative: slot 0 (the full amount) iff p >= target;
- per_order:  slots 0..p-1, slot k paying per_order_cents[k];
- milestones: every milestone whose `at` <= p (milestones increase);
- lottery:    draws_per "order": one draw per progress step; "completion":
  one draw iff p >= target. Draw k picks a prize from a seed derived from
  (task_id, k); if that prize's pool cannot pay, the prizes after it in the
  table are tried in order, and if none can pay the draw is rejected.

Settling revokes every granted slot that is no longer due (returning its
units to its pool) and pays every due slot that is unpaid or was revoked.

Rejections are final: a slot rejected for budget_exhausted is settled for
good; it is never retried, neither now nor when progress falls and rises
again. So the rule the engine keeps is, per task, for the slots of its plan:
   granted slots == due slots - rejected slots
and therefore net paid (granted - revoked) == sum over due, non-rejected
slots; read with rejected amounts counted as "paid", net paid + rejected due
== what the plan pays for the current progress.
"""

from __future__ import annotations

from collections.abc import Mapping

from app import ids
from app.budget import Budget
from app.catalog import Pool, RewardPlan, Template
from app.state import GRANTED, REJECTED, REVOKED, RewardSlot, TaskInstance
from schemas.records import OutputEvent, RewardGranted, RewardRejected, RewardRevoked

GRANT_REASONS = {
    "cumulative": "completion",
    "per_order": "order_step",
    "milestones": "milestone",
    "lottery": "lottery_draw",
}
BUDGET_EXHAUSTED = "budget_exhausted"
REVOKE_REASON = "progress_rolled_back"


def due_slots(plan: RewardPlan, progress: int, target: int) -> int:
    """How many slots (a prefix 0..n-1) progress `progress` earns."""
    mode = plan.mode
    if mode == "per_order":
        return min(progress, len(plan.per_order_cents))
    if mode == "cumulative":
        return 1 if progress >= target else 0
    if mode == "milestones":
        return sum(1 for m in plan.milestones if m.at <= progress)
    if plan.draws_per == "order":
        return min(progress, target)
    return 1 if progress >= target else 0


def planned_cents(plan: RewardPlan, slot: int) -> int:
    """The amount of a non-lottery slot."""
    if plan.mode == "per_order":
        return plan.per_order_cents[slot]
    if plan.mode == "milestones":
        return plan.milestones[slot].amount_cents
    return plan.amount_cents


def draw_prize_index(plan: RewardPlan, task_id: str, draw: int) -> int:
    """Which prize draw `draw` of a task lands on (weights, deterministic seed)."""
    point = ids.draw_seed(task_id, draw) % plan.total_weight
    for index, prize in enumerate(plan.prizes):
        if point < prize.weight:
            return index
        point -= prize.weight
    raise AssertionError("point beyond total weight")  # unreachable: point < total


def _units(pools: Mapping[str, Pool], pool_id: str, amount_cents: int) -> int:
    return 1 if pools[pool_id].unit == "items" else amount_cents


def _try_pay(
    budget: Budget,
    pools: Mapping[str, Pool],
    pool_id: str | None,
    amount_cents: int,
    reward_id: str,
) -> int | None:
    """Units debited (0 for unbudgeted), or None when the pool cannot pay."""
    if pool_id is None:
        return 0
    units = _units(pools, pool_id, amount_cents)
    return units if budget.try_debit(pool_id, units, reward_id) else None


def settle(
    inst: TaskInstance,
    template: Template,
    user_id: str,
    at: int,
    caused_by: str,
    pools: Mapping[str, Pool],
    budget: Budget,
    out: list[OutputEvent],
) -> TaskInstance:
    """Apply the reward rule to one instance; append reward events to `out`."""
    plan = template.reward
    due = due_slots(plan, inst.progress, template.target)
    slots = inst.slots
    # Fast exit: every due slot settled and nothing granted beyond them
    # (a loop, not all(genexpr): this runs for every order that counts).
    if len(slots) == due and (due == 0 or slots[-1].slot == due - 1):
        for s in slots:
            if s.status == REVOKED:
                break
        else:
            return inst
    by_slot = {s.slot: s for s in slots}
    changed = False
    # Clawbacks first (highest slot first), so returned units can pay new grants.
    for slot in sorted(by_slot, reverse=True):
        s = by_slot[slot]
        if slot >= due and s.status == GRANTED:
            if s.pool_id is not None:
                budget.credit(s.pool_id, s.debited)
            by_slot[slot] = RewardSlot(
                slot, REVOKED, s.reward_id, s.amount_cents, s.prize_id, s.pool_id, 0, s.grants
            )
            out.append(
                RewardRevoked(
                    ids.event_id("reward_revoked", caused_by, inst.task_id, slot),
                    s.reward_id,
                    user_id,
                    inst.template_id,
                    inst.task_id,
                    s.amount_cents,
                    s.prize_id,
                    s.pool_id,
                    REVOKE_REASON,
                    at,
                    caused_by,
                )
            )
            changed = True
    for slot in range(due):
        s_or_none = by_slot.get(slot)
        if s_or_none is not None and s_or_none.status in (GRANTED, REJECTED):
            continue
        grants = 0 if s_or_none is None else s_or_none.grants
        by_slot[slot] = _pay_slot(
            inst, plan, slot, grants, user_id, at, caused_by, pools, budget, out
        )
        changed = True
    if not changed:
        return inst
    return inst.with_slots(tuple(by_slot[k] for k in sorted(by_slot)))


def _pay_slot(
    inst: TaskInstance,
    plan: RewardPlan,
    slot: int,
    grants: int,
    user_id: str,
    at: int,
    caused_by: str,
    pools: Mapping[str, Pool],
    budget: Budget,
    out: list[OutputEvent],
) -> RewardSlot:
    reward_id = ids.reward_id(inst.task_id, slot, grants)
    prize_id: str | None = None
    if plan.mode == "lottery":
        drawn = draw_prize_index(plan, inst.task_id, slot)
        for prize in plan.prizes[drawn:]:
            pool_id = prize.pool_id if prize.pool_id is not None else plan.pool_id
            debited = _try_pay(budget, pools, pool_id, prize.amount_cents, reward_id)
            if debited is not None:
                return _granted(
                    inst, slot, grants, reward_id, prize.amount_cents, prize.prize_id,
                    pool_id, debited, plan, user_id, at, caused_by, out,
                )  # fmt: skip
        # Nothing down the list could pay: reject the prize originally drawn.
        prize = plan.prizes[drawn]
        prize_id, amount = prize.prize_id, prize.amount_cents
        pool_id = prize.pool_id if prize.pool_id is not None else plan.pool_id
    else:
        amount, pool_id = planned_cents(plan, slot), plan.pool_id
        debited = _try_pay(budget, pools, pool_id, amount, reward_id)
        if debited is not None:
            return _granted(
                inst, slot, grants, reward_id, amount, None, pool_id, debited, plan,
                user_id, at, caused_by, out,
            )  # fmt: skip
    out.append(
        RewardRejected(
            ids.event_id("reward_rejected", caused_by, inst.task_id, slot),
            reward_id,
            user_id,
            inst.template_id,
            inst.task_id,
            amount,
            prize_id,
            pool_id,
            BUDGET_EXHAUSTED,
            at,
            caused_by,
        )
    )
    return RewardSlot(slot, REJECTED, reward_id, amount, prize_id, pool_id, 0, grants)


def _granted(
    inst: TaskInstance,
    slot: int,
    grants: int,
    reward_id: str,
    amount: int,
    prize_id: str | None,
    pool_id: str | None,
    debited: int,
    plan: RewardPlan,
    user_id: str,
    at: int,
    caused_by: str,
    out: list[OutputEvent],
) -> RewardSlot:
    out.append(
        RewardGranted(
            ids.event_id("reward_granted", caused_by, inst.task_id, slot),
            reward_id,
            user_id,
            inst.template_id,
            inst.task_id,
            amount,
            prize_id,
            pool_id,
            GRANT_REASONS[plan.mode],
            at,
            caused_by,
        )
    )
    return RewardSlot(slot, GRANTED, reward_id, amount, prize_id, pool_id, debited, grants + 1)
