"""Price a campaign before launch: proposed templates and pools over a recorded log.

    sim = Simulator(catalog, ClaimSynthesis(("new_tpl",)))
    for event, where in log:            # decoded input events, in log order
        sim.feed(event, where)          # -> the output events replay would write
    report = sim.finish()               # per template and per pool

One fold: the events go through `app.replayer.Replayer` over an
`app.budget.Ledger` (what `taskstream replay` runs), so a simulation gives
exactly replay's outputs for the same log and templates; this module only
adds claims where asked and tallies what came out. Pure: the caller reads
the log and prints the report.

Claim synthesis. A log of a past period has orders but no claims for a
template that does not exist yet. With a `ClaimSynthesis`, every user the
log shows (any event with a user) claims each of the named templates once:
at their first event (just before it, with its `at`, so that event counts),
or, with `claims_at` T, users first seen before T claim at T (when the log
reaches T, or at its end) and later users at their first event. The
claims carry `user_tags` (default none) and deterministic ids from (user,
template). Claims already in the log are applied as they are.

Definitions (per template):
- eligible users: distinct users with at least one paid order that passes
  the template's order rule (channel, amount at payment >= min) inside its
  active window, whether or not they claimed. The audience the order
  traffic offers the template: claims and completions are read against it.
- claims: task_claimed events; claimed users: distinct users among them;
  rejections: claim_rejected by reason.
- completions: task_completed events (a task completed again after a
  refund and a new order counts twice).
- payout: granted - revoked cents (for an items pool, the prizes' values);
  rejected: reward_rejected (budget_exhausted), counted and in cents.
- lottery draws: granted - revoked + rejected lottery rewards (each draw
  emits one reward event; a revoked draw is undone); cost per draw: lottery
  payout / draws. The expected cost per draw is the prize table's weighted
  mean, before stock runs out.
Per pool: issued units after every event that moved them, and the input
event at which the pool first refused a reward (it "runs dry": a later,
cheaper reward may still be paid). A lottery draw whose prize pool refuses
but a prize further down pays counts as that pool's refusal too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from hashlib import sha256

from app.budget import Ledger
from app.catalog import Catalog, Template
from app.engine import UNKNOWN_TEMPLATE
from app.replayer import Replayer
from schemas.records import (
    ClaimRejected,
    InputEvent,
    OrderPaid,
    OutputEvent,
    RewardGranted,
    RewardRejected,
    RewardRevoked,
    TaskAdvanced,
    TaskClaim,
    TaskClaimed,
    TaskCompleted,
    TaskExpired,
    Tick,
)

SYNTHETIC_CLAIM_PREFIX = "sim-claim-"


def synthetic_claim_id(user_id: str, template_id: str) -> str:
    """The id of a synthesised claim: the same user and template give the same id."""
    digest = sha256(f"{user_id}\x1f{template_id}".encode()).hexdigest()[:32]
    return SYNTHETIC_CLAIM_PREFIX + digest


@dataclass(frozen=True, slots=True)
class ClaimSynthesis:
    """Which templates every user seen claims, with which tags, and when."""

    template_ids: tuple[str, ...]
    user_tags: tuple[str, ...] = ()
    claims_at: int | None = None  # None: at each user's first event


@dataclass(frozen=True, slots=True)
class LogPosition:
    """An input event and where it sits in the log ("line 12", "orders/3@45")."""

    event_id: str
    at: int
    where: str


@dataclass(frozen=True, slots=True)
class DryOut:
    """The first refusal of a pool: the input event, and what it could not pay."""

    event: LogPosition
    template_id: str
    units: int  # what the refused reward needed
    remaining: int  # what the pool still held


@dataclass(slots=True)
class PrizeTally:
    granted: int = 0
    revoked: int = 0
    rejected: int = 0

    @property
    def net(self) -> int:
        return self.granted - self.revoked


@dataclass(slots=True)
class TemplateTally:
    template_id: str
    mode: str
    pool_id: str | None
    expected_cost_per_draw: float | None  # lottery only: the prize table's weighted mean
    eligible_users: set[str] = field(default_factory=set)
    claimed_users: set[str] = field(default_factory=set)
    advanced_users: set[str] = field(default_factory=set)
    claims: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    completions: int = 0
    expiries: int = 0
    granted: int = 0
    granted_cents: int = 0
    revoked: int = 0
    revoked_cents: int = 0
    rejected: int = 0
    rejected_cents: int = 0
    prizes: dict[str, PrizeTally] = field(default_factory=dict)
    payout_points: list[tuple[int, int]] = field(default_factory=list)  # (at, payout so far)

    @property
    def payout_cents(self) -> int:
        return self.granted_cents - self.revoked_cents

    @property
    def draws(self) -> int:
        return self.granted - self.revoked + self.rejected if self.mode == "lottery" else 0

    @property
    def cost_per_draw(self) -> float | None:
        return self.payout_cents / self.draws if self.draws else None


@dataclass(slots=True)
class PoolTally:
    pool_id: str
    unit: str
    total: int
    issued: int = 0
    refusals: int = 0
    dry: DryOut | None = None
    points: list[tuple[int, int]] = field(default_factory=list)  # (at, issued so far)

    @property
    def remaining(self) -> int:
        return self.total - self.issued


@dataclass(frozen=True, slots=True)
class SimulationReport:
    templates: tuple[TemplateTally, ...]  # in the catalog's order
    pools: tuple[PoolTally, ...]
    events: int  # input events fed
    synthetic_claims: int
    unknown_template_claims: Counter[str]  # claims in the log for templates not proposed
    first_at: int | None
    last_at: int | None


class _WatchedLedger:
    """The replay's Ledger, noting which pools moved and which refused (a `Budget`)."""

    __slots__ = ("ledger", "refusals", "touched")

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.touched: set[str] = set()
        self.refusals: list[tuple[str, int]] = []

    def try_debit(self, pool_id: str, units: int, reward_id: str = "") -> bool:
        paid = self.ledger.try_debit(pool_id, units, reward_id)
        if paid:
            self.touched.add(pool_id)
        else:
            self.refusals.append((pool_id, units))
        return paid

    def credit(self, pool_id: str, units: int) -> None:
        self.ledger.credit(pool_id, units)
        self.touched.add(pool_id)


def expected_cost_per_draw(template: Template) -> float | None:
    plan = template.reward
    if plan.mode != "lottery" or not plan.total_weight:
        return None
    return sum(p.weight * p.amount_cents for p in plan.prizes) / plan.total_weight


def _pools_paying(template: Template) -> frozenset[str]:
    plan = template.reward
    named = {plan.pool_id, *(p.pool_id or plan.pool_id for p in plan.prizes)}
    return frozenset(pool_id for pool_id in named if pool_id is not None)


class Simulator:
    """Feed input events in log order; `finish()` gives the report (see the module doc)."""

    def __init__(self, catalog: Catalog, synthesis: ClaimSynthesis | None = None) -> None:
        self.catalog = catalog
        self.synthesis = synthesis
        self._budget = _WatchedLedger(Ledger(catalog.pools.values()))
        self._replayer = Replayer(catalog, self._budget)
        self.templates = {
            t.template_id: TemplateTally(
                t.template_id, t.reward.mode, t.reward.pool_id, expected_cost_per_draw(t)
            )
            for t in catalog.templates.values()
        }
        self.pools = {
            p.pool_id: PoolTally(p.pool_id, p.unit, p.total) for p in catalog.pools.values()
        }
        self._pools_of = {t.template_id: _pools_paying(t) for t in catalog.templates.values()}
        self.unknown_template_claims: Counter[str] = Counter()
        self.events = 0
        self.synthetic_claims = 0
        self._first_at: int | None = None
        self._last_at: int | None = None
        self._seen_users: set[str] = set()
        self._waiting_for_launch: list[tuple[str, LogPosition]] = []
        self._launched = synthesis is None or synthesis.claims_at is None

    # ------------------------------------------------------------ feeding

    def feed(self, event: InputEvent, where: str) -> list[OutputEvent]:
        """Apply one input event (synthesising claims first where due); return the
        output events, exactly as replay writes them, synthesised claims' first."""
        self.events += 1
        self._first_at = event.at if self._first_at is None else self._first_at
        self._last_at = event.at
        position = LogPosition(event.event_id, event.at, where)
        outputs: list[OutputEvent] = []
        if not self._launched and event.at >= self._claims_at():
            outputs += self._launch()
        if type(event) is not Tick:
            user_id: str = event.user_id  # type: ignore[union-attr]  # every non-tick has one
            if user_id not in self._seen_users:
                self._seen_users.add(user_id)
                outputs += self._first_sight(user_id, event.at, position)
            if type(event) is OrderPaid:
                self._note_eligible(event)
        outputs += self._apply(event, position)
        return outputs

    def finish(self) -> SimulationReport:
        """Synthesise the claims still waiting for `claims_at`; return the report."""
        if not self._launched:
            self._launch()
        return SimulationReport(
            tuple(self.templates.values()),
            tuple(self.pools.values()),
            self.events,
            self.synthetic_claims,
            self.unknown_template_claims,
            self._first_at,
            self._last_at,
        )

    def _claims_at(self) -> int:
        assert self.synthesis is not None
        assert self.synthesis.claims_at is not None
        return self.synthesis.claims_at

    def _first_sight(self, user_id: str, at: int, position: LogPosition) -> list[OutputEvent]:
        if self.synthesis is None:
            return []
        if not self._launched:
            self._waiting_for_launch.append((user_id, position))
            return []
        claims_at = self.synthesis.claims_at
        # A user first seen after launch claims on arrival (not before the launch).
        return self._synthesise(user_id, at if claims_at is None else max(at, claims_at), position)

    def _launch(self) -> list[OutputEvent]:
        self._launched = True
        outputs: list[OutputEvent] = []
        for user_id, position in self._waiting_for_launch:
            outputs += self._synthesise(user_id, self._claims_at(), position)
        self._waiting_for_launch.clear()
        return outputs

    def _synthesise(self, user_id: str, at: int, seen: LogPosition) -> list[OutputEvent]:
        assert self.synthesis is not None
        outputs: list[OutputEvent] = []
        for template_id in self.synthesis.template_ids:
            claim_id = synthetic_claim_id(user_id, template_id)
            claim = TaskClaim(claim_id, user_id, template_id, at, self.synthesis.user_tags)
            self.synthetic_claims += 1
            outputs += self._apply(claim, LogPosition(claim_id, at, f"claim for {seen.where}"))
        return outputs

    def _apply(self, event: InputEvent, position: LogPosition) -> list[OutputEvent]:
        outputs = [out for _user, outcome in self._replayer.apply(event) for out in outcome.events]
        moved_templates = {self._observe(out) for out in outputs}
        for template_id in moved_templates:
            tally = self.templates.get(template_id or "")
            if tally is not None:
                tally.payout_points.append((event.at, tally.payout_cents))
        self._observe_pools(position, outputs)
        return outputs

    # ---------------------------------------------------------- tallying

    def _note_eligible(self, order: OrderPaid) -> None:
        for template in self.catalog.templates.values():
            if (
                template.active_from <= order.at < template.active_until
                and template.order_rule.refusal(order.amount_cents, order.channel) is None
            ):
                self.templates[template.template_id].eligible_users.add(order.user_id)

    def _observe(self, out: OutputEvent) -> str | None:
        """Count one output event; return its template id when it moved the payout."""
        tally = self.templates.get(out.template_id)
        if tally is None:
            if type(out) is ClaimRejected and out.reason == UNKNOWN_TEMPLATE:
                self.unknown_template_claims[out.template_id] += 1
            return None
        if isinstance(out, TaskClaimed):
            tally.claims += 1
            tally.claimed_users.add(out.user_id)
        elif isinstance(out, ClaimRejected):
            tally.rejections[out.reason] += 1
        elif isinstance(out, TaskAdvanced):
            tally.advanced_users.add(out.user_id)
        elif isinstance(out, TaskCompleted):
            tally.completions += 1
        elif isinstance(out, TaskExpired):
            tally.expiries += 1
        elif isinstance(out, RewardGranted):
            tally.granted += 1
            tally.granted_cents += out.amount_cents
            self._prize(tally, out.prize_id).granted += 1
            return out.template_id
        elif isinstance(out, RewardRevoked):
            tally.revoked += 1
            tally.revoked_cents += out.amount_cents
            self._prize(tally, out.prize_id).revoked += 1
            return out.template_id
        elif isinstance(out, RewardRejected):
            tally.rejected += 1
            tally.rejected_cents += out.amount_cents
            self._prize(tally, out.prize_id).rejected += 1
        return None

    @staticmethod
    def _prize(tally: TemplateTally, prize_id: str | None) -> PrizeTally:
        if prize_id is None:
            return PrizeTally()  # not a lottery reward: nothing to count per prize
        return tally.prizes.setdefault(prize_id, PrizeTally())

    def _observe_pools(self, position: LogPosition, outputs: list[OutputEvent]) -> None:
        budget = self._budget
        if not budget.touched and not budget.refusals:
            return
        balances = budget.ledger.balances()
        for pool_id in sorted(budget.touched):
            pool = self.pools[pool_id]
            pool.issued = balances[pool_id].issued
            pool.points.append((position.at, pool.issued))
        for pool_id, units in budget.refusals:
            pool = self.pools[pool_id]
            pool.refusals += 1
            if pool.dry is None:
                template_id = self._refused_template(pool_id, outputs)
                pool.dry = DryOut(position, template_id, units, pool.remaining)
        budget.touched.clear()
        budget.refusals.clear()

    def _refused_template(self, pool_id: str, outputs: list[OutputEvent]) -> str:
        """The template whose reward the pool refused: the budget does not see it,
        so take the first reward of this event from a template paying from that pool."""
        for out in outputs:
            if type(out) in (RewardGranted, RewardRejected) and pool_id in self._pools_of.get(
                out.template_id, ()
            ):
                return out.template_id
        return ""  # unreachable: a refusal happens while settling some reward


def simulate(
    events: Iterable[tuple[InputEvent, str]],
    catalog: Catalog,
    synthesis: ClaimSynthesis | None = None,
) -> SimulationReport:
    """Run a whole log (events with their positions) and return the report."""
    sim = Simulator(catalog, synthesis)
    for event, where in events:
        sim.feed(event, where)
    return sim.finish()
