"""Task templates and budget pools, parsed from already-decoded JSON values.

Pure: the caller reads the files (see `taskstream.catalog_files`) and hands
over the decoded lists. Every problem is collected with the template (or
pool) id and the field it concerns, and one `CatalogError` lists them all;
a catalog with any problem is refused whole (nothing loads half).

Defaults for optional fields: order_rule {min_amount_cents 0, channels null =
any channel}, claim_rule {user_tags_any [] = anyone, user_tags_none [],
max_claims 1}, refund_policy "rollback", priority 0, exclusive false,
reward.pool_id null (unbudgeted), lottery draws_per "completion", prize
pool_id null (the reward's pool).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.errors import SchemaError
from schemas.timestamps import MICROS_PER_DAY, parse_utc

COUNT_BY = ("order", "day")
REWARD_MODES = ("cumulative", "per_order", "milestones", "lottery")
DRAWS_PER = ("completion", "order")
DISPLAYS = ("hidden", "visible")
REFUND_POLICIES = ("rollback", "ignore")
POOL_UNITS = ("cents", "items")


class CatalogError(ValueError):
    """The template or pool files are invalid; `problems` lists every mistake."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the catalog:\n{lines}")


@dataclass(frozen=True, slots=True)
class OrderRule:
    min_amount_cents: int
    channels: frozenset[str] | None  # None: any channel

    def refusal(self, remaining_cents: int, channel: str) -> str | None:
        """Why an order with this remaining amount and channel does not qualify."""
        if self.channels is not None and channel not in self.channels:
            return f"channel {channel!r} not in {sorted(self.channels)}"
        if remaining_cents <= 0:
            return "nothing left after refunds"
        if remaining_cents < self.min_amount_cents:
            return f"amount {remaining_cents} < min {self.min_amount_cents}"
        return None


@dataclass(frozen=True, slots=True)
class ClaimRule:
    user_tags_any: frozenset[str]  # empty: no tag required
    user_tags_none: frozenset[str]
    max_claims: int


@dataclass(frozen=True, slots=True)
class Milestone:
    at: int
    amount_cents: int


@dataclass(frozen=True, slots=True)
class Prize:
    prize_id: str
    amount_cents: int
    weight: int
    pool_id: str | None  # None: the reward's pool


@dataclass(frozen=True, slots=True)
class RewardPlan:
    mode: str
    pool_id: str | None
    amount_cents: int = 0  # cumulative
    per_order_cents: tuple[int, ...] = ()  # per_order, one per progress step
    milestones: tuple[Milestone, ...] = ()  # milestones, increasing `at`
    prizes: tuple[Prize, ...] = ()  # lottery
    draws_per: str = "completion"  # lottery

    @property
    def total_weight(self) -> int:
        return sum(p.weight for p in self.prizes)


@dataclass(frozen=True, slots=True)
class Template:
    template_id: str
    title: str
    scenes: tuple[str, ...]
    active_from: int  # epoch microseconds, inclusive
    active_until: int  # exclusive
    timezone: str
    zone: ZoneInfo
    duration_days: int
    target: int
    count_by: str
    order_rule: OrderRule
    claim_rule: ClaimRule
    reward: RewardPlan
    display: str
    refund_policy: str
    priority: int
    exclusive: bool

    @property
    def duration_micros(self) -> int:
        """The deadline is claimed_at + duration_days x 24 h (exact days, not calendar days)."""
        return self.duration_days * MICROS_PER_DAY


@dataclass(frozen=True, slots=True)
class Pool:
    pool_id: str
    total: int
    unit: str  # "cents": pays amounts; "items": pays one item per reward


@dataclass(frozen=True, slots=True)
class Catalog:
    templates: Mapping[str, Template]
    pools: Mapping[str, Pool]


EMPTY_CATALOG = Catalog({}, {})


# ------------------------------------------------------------------ parsing


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


_MISSING: Any = object()


class _Reader:
    """Typed access to one JSON object, recording problems instead of raising."""

    def __init__(
        self, doc: dict[str, Any], where: str, problems: _Problems, prefix: str = ""
    ) -> None:
        self.doc = doc
        self.where = where
        self.problems = problems
        self.prefix = prefix  # path of this object inside the template, e.g. "reward."

    def _bad(self, name: str, message: str) -> None:
        self.problems.add(f"{self.where} field {self.prefix}{name}", message)

    def _child(self, doc: dict[str, Any], name: str) -> _Reader:
        return _Reader(doc, self.where, self.problems, f"{self.prefix}{name}.")

    def _get(self, name: str, required: bool) -> Any:
        value = self.doc.get(name, _MISSING)
        if value is _MISSING and required:
            self._bad(name, "missing")
        return value

    def string(self, name: str, *, required: bool = True, default: str = "") -> str | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None if required else default
        if not isinstance(value, str) or (required and not value):
            self._bad(name, f"expected a non-empty string, got {value!r}")
            return None
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str | None:
        value = self._get(name, default is None)
        if value is _MISSING:
            return default
        if value not in options:
            self._bad(name, f"unknown value {value!r} (expected one of {', '.join(options)})")
            return None
        return str(value)

    def integer(
        self, name: str, *, minimum: int | None = None, default: int | None = None
    ) -> int | None:
        value = self._get(name, default is None)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(name, f"expected an integer, got {value!r}")
            return None
        if minimum is not None and value < minimum:
            what = "negative amount" if minimum == 0 else f"must be >= {minimum}"
            self._bad(name, f"{what} (got {value})")
            return None
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, False)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self._bad(name, f"expected true or false, got {value!r}")
            return default
        return value

    def time(self, name: str) -> int | None:
        value = self._get(name, True)
        if value is _MISSING:
            return None
        try:
            return parse_utc(value)
        except SchemaError as exc:
            self._bad(name, str(exc))
            return None

    def string_list(self, name: str, *, required: bool, non_empty: bool) -> tuple[str, ...] | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None if required else ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self._bad(name, f"expected a list of non-empty strings, got {value!r}")
            return None
        if non_empty and not value:
            self._bad(name, "must not be empty")
            return None
        return tuple(value)

    def obj(self, name: str, *, required: bool) -> _Reader | None:
        value = self._get(name, required)
        if value is _MISSING:
            return None if required else self._child({}, name)
        if not isinstance(value, dict):
            self._bad(name, f"expected an object, got {value!r}")
            return None
        return self._child(value, name)

    def objects(self, name: str) -> list[_Reader] | None:
        value = self._get(name, True)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            self._bad(name, f"expected a list, got {value!r}")
            return None
        readers = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self._bad(f"{name}[{index}]", f"expected an object, got {item!r}")
                continue
            readers.append(self._child(item, f"{name}[{index}]"))
        return readers


def parse_catalog(templates_value: object, pools_value: object = None) -> Catalog:
    """Build the catalog from decoded JSON (pools_value None: no pools file).

    Raises CatalogError listing every problem found in both files.
    """
    problems = _Problems()
    pools = _parse_pools([] if pools_value is None else pools_value, problems)
    templates = _parse_templates(templates_value, pools, problems)
    if problems.items:
        raise CatalogError(problems.items)
    return Catalog(templates, pools)


def _parse_pools(value: object, problems: _Problems) -> dict[str, Pool]:
    pools: dict[str, Pool] = {}
    if not isinstance(value, list):
        problems.add("pools", f"expected a JSON list of pools, got {type(value).__name__}")
        return pools
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            problems.add(f"pool #{index}", f"expected an object, got {item!r}")
            continue
        pool_id = item.get("pool_id")
        where = f"pool {pool_id!r}" if isinstance(pool_id, str) else f"pool #{index}"
        r = _Reader(item, where, problems)
        pid = r.string("pool_id")
        total = r.integer("total", minimum=0)
        unit = r.choice("unit", POOL_UNITS)
        if pid is not None and pid in pools:
            problems.add(f"{where} field pool_id", "duplicate pool id")
            continue
        if pid is not None and total is not None and unit is not None:
            pools[pid] = Pool(pid, total, unit)
    return pools


def _parse_templates(
    value: object, pools: Mapping[str, Pool], problems: _Problems
) -> dict[str, Template]:
    templates: dict[str, Template] = {}
    if not isinstance(value, list):
        problems.add("templates", f"expected a JSON list of templates, got {type(value).__name__}")
        return templates
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            problems.add(f"template #{index}", f"expected an object, got {item!r}")
            continue
        tid = item.get("template_id")
        where = f"template {tid!r}" if isinstance(tid, str) and tid else f"template #{index}"
        if isinstance(tid, str) and tid in seen:
            problems.add(f"{where} field template_id", "duplicate template id")
            continue
        if isinstance(tid, str):
            seen.add(tid)
        template = _parse_template(_Reader(item, where, problems), pools)
        if template is not None:
            templates[template.template_id] = template
    return templates


def _parse_template(r: _Reader, pools: Mapping[str, Pool]) -> Template | None:
    before = len(r.problems.items)
    template_id = r.string("template_id")
    title = r.string("title")
    scenes = r.string_list("scenes", required=True, non_empty=True)
    active_from = r.time("active_from")
    active_until = r.time("active_until")
    if active_from is not None and active_until is not None and active_until <= active_from:
        r._bad("active_until", "must be after active_from (the window is half-open)")
    zone = _zone(r)
    duration_days = r.integer("duration_days", minimum=1)
    target = r.integer("target", minimum=1)
    count_by = r.choice("count_by", COUNT_BY)
    order_rule = _order_rule(r)
    claim_rule = _claim_rule(r)
    reward = _reward_plan(r, target, pools)
    display = r.choice("display", DISPLAYS)
    refund_policy = r.choice("refund_policy", REFUND_POLICIES, default="rollback")
    priority = r.integer("priority", default=0)
    exclusive = r.boolean("exclusive", default=False)
    if (
        len(r.problems.items) > before
        or template_id is None
        or title is None
        or scenes is None
        or active_from is None
        or active_until is None
        or zone is None
        or duration_days is None
        or target is None
        or count_by is None
        or order_rule is None
        or claim_rule is None
        or reward is None
        or display is None
        or refund_policy is None
        or priority is None
    ):
        return None
    return Template(
        template_id=template_id,
        title=title,
        scenes=scenes,
        active_from=active_from,
        active_until=active_until,
        timezone=zone.key,
        zone=zone,
        duration_days=duration_days,
        target=target,
        count_by=count_by,
        order_rule=order_rule,
        claim_rule=claim_rule,
        reward=reward,
        display=display,
        refund_policy=refund_policy,
        priority=priority,
        exclusive=exclusive,
    )


def _zone(r: _Reader) -> ZoneInfo | None:
    name = r.string("timezone")
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        r._bad("timezone", f"unknown IANA time zone {name!r}")
        return None


def _order_rule(r: _Reader) -> OrderRule | None:
    sub = r.obj("order_rule", required=False)
    if sub is None:
        return None
    minimum = sub.integer("min_amount_cents", minimum=0, default=0)
    channels: frozenset[str] | None = None
    if sub.doc.get("channels") is not None:
        listed = sub.string_list("channels", required=True, non_empty=True)
        if listed is None:
            return None
        channels = frozenset(listed)
    return None if minimum is None else OrderRule(minimum, channels)


def _claim_rule(r: _Reader) -> ClaimRule | None:
    sub = r.obj("claim_rule", required=False)
    if sub is None:
        return None
    any_of = sub.string_list("user_tags_any", required=False, non_empty=False)
    none_of = sub.string_list("user_tags_none", required=False, non_empty=False)
    max_claims = sub.integer("max_claims", minimum=1, default=1)
    if any_of is None or none_of is None or max_claims is None:
        return None
    return ClaimRule(frozenset(any_of), frozenset(none_of), max_claims)


def _pool_ref(r: _Reader, name: str, pools: Mapping[str, Pool]) -> tuple[bool, str | None]:
    """(ok, pool id or None); an id must name a pool of the pools file."""
    value = r.doc.get(name)
    if value is None:
        return True, None
    if not isinstance(value, str) or not value:
        r._bad(name, f"expected a pool id string or null, got {value!r}")
        return False, None
    if value not in pools:
        r._bad(name, f"unknown pool {value!r} (not in the pools file)")
        return False, None
    return True, value


def _reward_plan(r: _Reader, target: int | None, pools: Mapping[str, Pool]) -> RewardPlan | None:
    sub = r.obj("reward", required=True)
    if sub is None:
        return None
    before = len(r.problems.items)
    mode = sub.choice("mode", REWARD_MODES)
    _, pool_id = _pool_ref(sub, "pool_id", pools)
    plan: RewardPlan | None = None
    if mode == "cumulative":
        amount = sub.integer("amount_cents", minimum=0)
        plan = None if amount is None else RewardPlan(mode, pool_id, amount_cents=amount)
    elif mode == "per_order":
        steps = _per_order_steps(sub, target)
        plan = None if steps is None else RewardPlan(mode, pool_id, per_order_cents=steps)
    elif mode == "milestones":
        milestones = _milestones(sub, target)
        plan = None if milestones is None else RewardPlan(mode, pool_id, milestones=milestones)
    elif mode == "lottery":
        prizes = _prizes(sub, pools)
        draws_per = sub.choice("draws_per", DRAWS_PER, default="completion")
        if prizes is not None and draws_per is not None:
            plan = RewardPlan(mode, pool_id, prizes=prizes, draws_per=draws_per)
    return plan if len(r.problems.items) == before else None


def _per_order_steps(sub: _Reader, target: int | None) -> tuple[int, ...] | None:
    value = sub.doc.get("per_order_cents", _MISSING)
    if value is _MISSING:
        sub._bad("per_order_cents", "missing")
        return None
    if not isinstance(value, list) or not value:
        sub._bad("per_order_cents", f"expected a non-empty list of amounts, got {value!r}")
        return None
    ok = True
    for index, amount in enumerate(value):
        if isinstance(amount, bool) or not isinstance(amount, int):
            sub._bad(f"per_order_cents[{index}]", f"expected an integer, got {amount!r}")
            ok = False
        elif amount < 0:
            sub._bad(f"per_order_cents[{index}]", f"negative amount (got {amount})")
            ok = False
    if target is not None and len(value) != target:
        # One amount per progress step: the plan must say what every step pays.
        sub._bad("per_order_cents", f"has {len(value)} steps, expected target = {target}")
        ok = False
    return tuple(value) if ok else None


def _milestones(sub: _Reader, target: int | None) -> tuple[Milestone, ...] | None:
    readers = sub.objects("milestones")
    if readers is None:
        return None
    if not readers:
        sub._bad("milestones", "must not be empty")
        return None
    result: list[Milestone] = []
    ok = True
    for item in readers:
        at = item.integer("at", minimum=1)
        amount = item.integer("amount_cents", minimum=0)
        if at is None or amount is None:
            ok = False
            continue
        if target is not None and at > target:
            item._bad("at", f"{at} is beyond target {target} (never reached)")
            ok = False
        if result and at == result[-1].at:
            item._bad("at", f"duplicate milestone at {at}")
            ok = False
        elif result and at < result[-1].at:
            item._bad("at", f"milestones must be in increasing order ({at} after {result[-1].at})")
            ok = False
        result.append(Milestone(at, amount))
    return tuple(result) if ok else None


def _prizes(sub: _Reader, pools: Mapping[str, Pool]) -> tuple[Prize, ...] | None:
    readers = sub.objects("prizes")
    if readers is None:
        return None
    if not readers:
        sub._bad("prizes", "empty prize table")
        return None
    result: list[Prize] = []
    ids: set[str] = set()
    ok = True
    for item in readers:
        prize_id = item.string("prize_id")
        amount = item.integer("amount_cents", minimum=0)
        weight = item.integer("weight", minimum=0)
        pool_ok, pool_id = _pool_ref(item, "pool_id", pools)
        if prize_id is not None and prize_id in ids:
            item._bad("prize_id", f"duplicate prize id {prize_id!r}")
            ok = False
        if prize_id is None or amount is None or weight is None or not pool_ok:
            ok = False
            continue
        ids.add(prize_id)
        result.append(Prize(prize_id, amount, weight, pool_id))
    if ok and sum(p.weight for p in result) <= 0:
        sub._bad("prizes", "total weight must be > 0")
        ok = False
    return tuple(result) if ok else None
