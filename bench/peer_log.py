"""The input log of `python -m bench peer` (GitHub issue 14): seeded, deterministic.

Shape, for `events` messages and `users` users (defaults 200,000 and 40,000):

- every user claims the one template of `bench/peer_templates.json` once;
  the claims come first, user by user, over the first day of event time;
- then orders arrive in rounds, user by user, round after round (round r of
  user u at day 1 + (r - 1 + u / users) * 1.8): with 40,000 users and
  200,000 events that is 3.76 rounds, so a user has 3 or 4 orders; a
  fourth order reaches the 7-day deadline only for the first 75% of the
  users (the others' is too late and does not count); a fifth would never
  count. 20% of the amounts are below the template's 1,000-cent minimum;
- 5% of the orders get an `order_refunded` of their full amount, a quarter
  to three quarters of a round after the order (so never next to another
  order of the same user, which is a whole round away; those due past the
  last order come at the end, and the last quarter round is not refunded);
- 1% of the messages are exact re-sends: an event produced a second time,
  same bytes, 1 to 20 messages after the first copy.

The message count is exactly `events`: claims + orders + refunds + re-sends.
Event time increases with the position in the log (a re-send carries the
time of its first copy), so processing in event time (taskstream) and in
produce order (Quix Streams' time-aligned `concat`, by CreateTime) sees each
user's events in the same order, and a user's events are thousands of
messages apart, far more than one millisecond of producing.

`expected_rewards` is the pure reference: the reward events this log must
produce, counted by (user_id, type), with the engine's rules for this
template (docs/engine.md): a claim opens a task with deadline claimed_at +
7 days; an order counts when the task is in progress, claimed_at <= at <
deadline and its amount (less any refunds) is >= the minimum; duplicates
(same order_id, refund_id or claim event) do nothing; the reward is granted
when progress reaches the target; a refund that takes a counted order back
below the target revokes it, and the task takes orders again until its
deadline (a new grant gets a new reward id).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from schemas.codec import encode
from schemas.records import InputEvent, OrderPaid, OrderRefunded, TaskClaim
from schemas.timestamps import MICROS_PER_DAY, parse_utc

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "peer_templates.json"
POOLS = HERE / "peer_pools.json"

START = parse_utc("2024-03-01T00:00:00Z")
CLAIM_SPAN = MICROS_PER_DAY  # the claims, user by user
ROUND_SPAN = MICROS_PER_DAY * 9 // 5  # one round of orders: 1.8 days
# Two of ten below the 1,000-cent minimum (1,000 itself counts).
AMOUNTS = (500, 800, 1000, 1200, 1500, 1990, 2500, 3600, 5200, 9900)
CHANNELS = ("app", "next_day_pickup", "hour_delivery")
RESEND_MAX_GAP = 20  # a re-send follows its first copy by 1..20 messages

GRANTED = "reward_granted"
REVOKED = "reward_revoked"


@dataclass(frozen=True, slots=True)
class PeerShape:
    events: int = 200_000
    users: int = 40_000
    refund_share: float = 0.05  # of the orders
    resend_share: float = 0.01  # of all messages
    seed: int = 14

    def counts(self) -> tuple[int, int, int, int]:
        """(claims, orders, refunds, re-sends), adding up to `events`."""
        resends = round(self.events * self.resend_share)
        rest = self.events - self.users - resends
        orders = int(rest / (1 + self.refund_share))
        refunds = rest - orders
        if orders < self.users or refunds > orders:
            raise ValueError(
                f"{self.events} events are too few for {self.users} users "
                "(every user needs a claim and at least one order)"
            )
        return self.users, orders, refunds, resends


@dataclass(frozen=True, slots=True)
class PeerTemplate:
    """What the reference (and the Quix app) needs of the template file."""

    template_id: str
    target: int
    min_amount_cents: int
    duration_us: int
    amount_cents: int
    active_from: int
    active_until: int

    @classmethod
    def load(cls, path: Path = TEMPLATES) -> PeerTemplate:
        (doc,) = orjson.loads(path.read_bytes())
        # The reference (and the Quix app) implement this kind of template only.
        if (doc["count_by"], doc["reward"]["mode"], doc["refund_policy"]) != (
            "order",
            "cumulative",
            "rollback",
        ) or doc["order_rule"].get("channels"):
            raise ValueError(f"{path}: not a cumulative, count-by-order, rollback template")
        return cls(
            template_id=doc["template_id"],
            target=doc["target"],
            min_amount_cents=doc["order_rule"]["min_amount_cents"],
            duration_us=doc["duration_days"] * MICROS_PER_DAY,
            amount_cents=doc["reward"]["amount_cents"],
            active_from=parse_utc(doc["active_from"]),
            active_until=parse_utc(doc["active_until"]),
        )


def user_id(n: int) -> str:
    return f"u{n:06d}"


def order_at(k: int, users: int) -> int:
    """Event time of the k-th order (round k // users, user k % users)."""
    rnd, user = divmod(k, users)
    return START + CLAIM_SPAN + rnd * ROUND_SPAN + user * ROUND_SPAN // users


def generate(shape: PeerShape, template_id: str = "peer_three_orders") -> list[InputEvent]:
    """The log in produce order; a re-send is the same record object twice."""
    claims, orders, refunds, resends = shape.counts()
    rng = random.Random(shape.seed)
    users = shape.users
    log: list[InputEvent] = [
        TaskClaim(f"c{u:07d}", user_id(u), template_id, START + u * CLAIM_SPAN // users, ())
        for u in range(claims)
    ]
    # Refund of order k: after order k + delay, delay in [users/4, 3 users/4]
    # orders: never next to the user's previous or next order. Those due past
    # the last order come at the end: only orders a quarter round before the
    # end are refunded, so that is still a quarter round after them.
    gap = max(1, users // 4)
    refunded = sorted(rng.sample(range(max(refunds, orders - gap)), refunds))
    to_refund = frozenset(refunded)
    due: dict[int, list[int]] = {}
    late: list[tuple[int, int]] = []  # (due position past the last order, k)
    for k in refunded:
        at = k + rng.randint(gap, max(gap, 3 * users // 4))
        if at < orders:
            due.setdefault(at, []).append(k)
        else:
            late.append((at, k))
    placed: dict[int, OrderPaid] = {}
    last_at = START
    for k in range(orders):
        order = OrderPaid(
            f"e{k:08d}",
            f"o{k:08d}",
            user_id(k % users),
            rng.choice(AMOUNTS),
            rng.choice(CHANNELS),
            order_at(k, users),
        )
        log.append(order)
        last_at = order.at
        if k in to_refund:
            placed[k] = order
        for j, ref in enumerate(due.pop(k, ())):
            log.append(_refund(placed.pop(ref), last_at + 1 + j))
    for j, (_, ref) in enumerate(sorted(late)):
        log.append(_refund(placed.pop(ref), last_at + 1 + j))
    assert not placed, "every refunded order gets its refund"
    return _with_resends(log, resends, rng)


def _refund(order: OrderPaid, at: int) -> OrderRefunded:
    n = order.order_id[1:]
    return OrderRefunded(f"f{n}", f"r{n}", order.order_id, order.user_id, order.amount_cents, at)


def _with_resends(log: list[InputEvent], resends: int, rng: random.Random) -> list[InputEvent]:
    copies: dict[int, list[InputEvent]] = {}
    last = len(log) - 1
    for i in sorted(rng.sample(range(len(log)), resends)):
        copies.setdefault(min(last, i + rng.randint(1, RESEND_MAX_GAP)), []).append(log[i])
    out: list[InputEvent] = []
    for i, event in enumerate(log):
        out.append(event)
        out.extend(copies.get(i, ()))
    return out


def wire(log: Iterable[InputEvent]) -> list[bytes]:
    """The bytes each message carries (schemas.codec.encode)."""
    return [encode(event) for event in log]


# ------------------------------------------------------------ the reference


@dataclass(slots=True)
class _Task:
    claim_event: str
    claimed_at: int
    deadline: int
    status: str = "in_progress"  # | completed | expired
    counted: list[str] = field(default_factory=list)
    orders: dict[str, int] = field(default_factory=dict)  # order id -> amount left
    refund_ids: set[str] = field(default_factory=set)
    held: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # refunds before orders
    granted: bool = False


def expected_rewards(
    log: Iterable[InputEvent], template: PeerTemplate | None = None
) -> Counter[tuple[str, str]]:
    """(user_id, reward type) -> how many such events the log must produce."""
    tpl = template or PeerTemplate.load()
    tasks: dict[str, _Task] = {}
    out: Counter[tuple[str, str]] = Counter()
    for event in log:
        task = tasks.get(event.user_id)  # type: ignore[union-attr]  # no ticks here
        if type(event) is TaskClaim:
            if task is None and tpl.active_from <= event.at < tpl.active_until:
                tasks[event.user_id] = _Task(event.event_id, event.at, event.at + tpl.duration_us)
            continue  # a re-send, or a second claim (rejected): no reward either way
        if task is None:
            continue  # no claim: the event counts for nothing
        if task.status == "in_progress" and event.at >= task.deadline:
            task.status = "expired"
        if type(event) is OrderPaid:
            _order(task, event, tpl, out)
        elif type(event) is OrderRefunded:
            _refunded(task, event, tpl, out)
    return out


def _live(task: _Task, at: int) -> bool:
    return task.status != "expired" and task.claimed_at <= at < task.deadline


def _order(task: _Task, event: OrderPaid, tpl: PeerTemplate, out: Counter[tuple[str, str]]) -> None:
    if event.order_id in task.orders or not _live(task, event.at):
        return  # a duplicate, or outside the task's window (not recorded)
    held = task.held.pop(event.order_id, [])
    task.refund_ids.update(rid for rid, _ in held)
    left = event.amount_cents - sum(amount for _, amount in held)
    task.orders[event.order_id] = left
    if task.status != "in_progress" or left < tpl.min_amount_cents or left <= 0:
        return
    task.counted.append(event.order_id)
    if len(task.counted) >= tpl.target:
        task.status = "completed"
        if not task.granted:
            task.granted = True
            out[event.user_id, GRANTED] += 1


def _refunded(
    task: _Task, event: OrderRefunded, tpl: PeerTemplate, out: Counter[tuple[str, str]]
) -> None:
    if event.refund_id in task.refund_ids:
        return
    left = task.orders.get(event.order_id)
    if left is None:  # the order has not come (yet): hold the refund
        held = task.held.setdefault(event.order_id, [])
        if _live(task, event.at) and all(rid != event.refund_id for rid, _ in held):
            held.append((event.refund_id, event.amount_cents))
        return
    task.refund_ids.add(event.refund_id)
    left -= event.amount_cents
    task.orders[event.order_id] = left
    if event.order_id not in task.counted or (left >= tpl.min_amount_cents and left > 0):
        return
    task.counted.remove(event.order_id)
    if task.status == "completed" and len(task.counted) < tpl.target:
        task.status = "in_progress" if event.at < task.deadline else "expired"
    if task.granted and len(task.counted) < tpl.target:
        task.granted = False
        out[event.user_id, REVOKED] += 1


def describe(log: list[InputEvent]) -> dict[str, int]:
    """Message counts by kind, re-sends counted apart (a repeated event_id)."""
    seen: set[str] = set()
    counts = Counter[str]()
    for event in log:
        if event.event_id in seen:
            counts["resends"] += 1
        else:
            seen.add(event.event_id)
            counts[type(event).TYPE] += 1
    return dict(counts)
