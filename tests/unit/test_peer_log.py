"""The log of `python -m bench peer` (bench/peer_log.py), its pure reference, and
the Quix app's rules (bench/peer_quix.py, run here without Quix on a fake state)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.peer_log import (
    GRANTED,
    POOLS,
    REVOKED,
    START,
    TEMPLATES,
    PeerShape,
    PeerTemplate,
    describe,
    expected_rewards,
    generate,
    wire,
)
from bench.peer_quix import Rules
from schemas.records import InputEvent, OrderPaid, OrderRefunded, TaskClaim
from schemas.timestamps import MICROS_PER_DAY

SMALL = PeerShape(events=6000, users=1200)
TPL = PeerTemplate.load()


@pytest.fixture(scope="module")
def small_log() -> list[InputEvent]:
    return generate(SMALL)


def test_the_same_log_and_bytes_on_every_run(small_log: list[InputEvent]) -> None:
    again = generate(SMALL)
    assert again == small_log
    assert wire(again) == wire(small_log)
    assert generate(PeerShape(events=6000, users=1200, seed=15)) != small_log


@pytest.mark.parametrize(
    ("events", "users"), [(6000, 1200), (20_000, 4000), (200_000, 40_000), (7001, 997)]
)
def test_counts_as_specified(events: int, users: int) -> None:
    shape = PeerShape(events=events, users=users)
    claims, orders, refunds, resends = shape.counts()
    assert claims + orders + refunds + resends == events
    assert claims == users
    assert resends == round(events / 100)
    assert abs(refunds - 0.05 * orders) <= 1
    if events <= 20_000:
        log = generate(shape)
        assert len(log) == events
        assert describe(log) == {
            "task_claim": claims,
            "order_paid": orders,
            "order_refunded": refunds,
            "resends": resends,
        }


def test_too_few_events_for_the_users() -> None:
    with pytest.raises(ValueError, match="too few"):
        PeerShape(events=1000, users=1000).counts()


def test_resends_are_exact_copies_a_little_later(small_log: list[InputEvent]) -> None:
    lines = wire(small_log)
    first: dict[str, int] = {}
    for i, event in enumerate(small_log):
        if event.event_id in first:
            j = first[event.event_id]
            assert lines[i] == lines[j]
            assert 1 <= i - j <= 20 + 20  # its gap, plus other copies placed there
        else:
            first[event.event_id] = i
    assert len(small_log) - len(first) == SMALL.counts()[3]


def test_claims_first_then_orders_then_refunds_in_time_order(small_log: list[InputEvent]) -> None:
    claimed: dict[str, int] = {}  # user -> claim position
    ordered: dict[str, tuple[int, OrderPaid]] = {}
    seen: set[str] = set()
    last_at = 0
    for i, event in enumerate(small_log):
        if event.event_id in seen:
            continue  # a re-send carries the time of its first copy
        seen.add(event.event_id)
        assert event.at >= last_at  # event time follows the log
        last_at = event.at
        if isinstance(event, TaskClaim):
            assert event.user_id not in claimed  # one claim per user
            claimed[event.user_id] = i
        elif isinstance(event, OrderPaid):
            assert claimed[event.user_id] < i  # the user's claim came before
            ordered[event.order_id] = (i, event)
        else:
            assert isinstance(event, OrderRefunded)
            at, order = ordered[event.order_id]
            assert at < i
            assert event.at > order.at
            assert event.amount_cents == order.amount_cents  # refunded in full
            assert event.user_id == order.user_id
    assert len(claimed) == SMALL.users


def test_a_users_events_are_far_apart_in_the_log(small_log: list[InputEvent]) -> None:
    """Whatever the order between topics within a millisecond, a user's own events
    are at least a quarter of a round apart (re-sends aside)."""
    positions: dict[str, list[int]] = {}
    seen: set[str] = set()
    for i, event in enumerate(small_log):
        if event.event_id not in seen:
            seen.add(event.event_id)
            positions.setdefault(event.user_id, []).append(i)  # type: ignore[union-attr]
    gaps = [b - a for spots in positions.values() for a, b in pairwise(spots)]
    assert min(gaps) >= SMALL.users // 4


def test_the_log_exercises_every_rule(small_log: list[InputEvent]) -> None:
    claims = {e.user_id: e.at for e in small_log if isinstance(e, TaskClaim)}
    orders = [e for e in small_log if isinstance(e, OrderPaid)]
    assert any(o.amount_cents < TPL.min_amount_cents for o in orders)
    assert any(o.amount_cents == TPL.min_amount_cents for o in orders)
    late = [o for o in orders if o.at >= claims[o.user_id] + TPL.duration_us]
    assert late  # fourth orders of the later users miss their deadline
    assert len(late) < len(orders) // 4
    expected = expected_rewards(small_log, TPL)
    assert expected[next(iter(expected))] >= 1
    kinds = Counter(kind for (_, kind) in expected.elements())
    assert kinds[GRANTED] > SMALL.users // 3
    assert kinds[REVOKED] > 0
    assert max(expected.values()) == 2  # some users earn it again after a clawback


def _day(days: float) -> int:
    return START + int(days * MICROS_PER_DAY)


def test_reference_rules_on_a_hand_made_log() -> None:
    claim = TaskClaim("c1", "u1", TPL.template_id, _day(0), ())

    def order(n: int, amount: int, day: float, user: str = "u1") -> OrderPaid:
        return OrderPaid(f"e{n}", f"o{n}", user, amount, "app", _day(day))

    def refund(n: int, amount: int, day: float, again: str = "") -> OrderRefunded:
        return OrderRefunded(f"f{n}{again}", f"r{n}{again}", f"o{n}", "u1", amount, _day(day))

    log: list[InputEvent] = [
        order(0, 5000, 0.5, user="u2"),  # no claim: nothing
        claim,
        claim,  # re-sent
        order(1, 1200, 1),
        order(2, 999, 1.1),  # below the minimum
        order(3, 1000, 1.2),
        order(3, 1000, 1.2),  # re-sent
        order(4, 1500, 1.3),  # third: granted
        order(5, 1500, 1.4),  # task complete: not counted
        refund(3, 1000, 2),  # back to 2: revoked
        refund(3, 1000, 2),  # re-sent
        refund(2, 999, 2.1),  # did not count: nothing
        order(6, 2000, 3),  # 3 again: granted again
        refund(6, 1000, 3.5),  # 1,000 left: still counts
        refund(6, 1, 8, again="b"),  # 999 left, after the deadline: revoked, the task expires
        order(7, 2000, 8.1),  # too late
    ]
    assert expected_rewards(log, TPL) == Counter({("u1", GRANTED): 2, ("u1", REVOKED): 2})
    assert _quix_outputs(log)[0] == Counter({("u1", GRANTED): 2, ("u1", REVOKED): 2})


def test_reference_agrees_with_the_engine(small_log: list[InputEvent], tmp_path: Path) -> None:
    """`taskstream replay` (the project's pure core) gives the same rewards."""
    events = tmp_path / "in.jsonl"
    events.write_bytes(b"\n".join(wire(small_log)) + b"\n")
    out = tmp_path / "out.jsonl"
    subprocess.run(
        [
            *(sys.executable, "-m", "taskstream", "replay", "--no-progress"),
            *("--templates", str(TEMPLATES), "--pools", str(POOLS)),
            *("--events", str(events), "--out", str(out)),
        ],
        check=True,
        capture_output=True,
    )
    got: Counter[tuple[str, str]] = Counter()
    for line in out.read_bytes().splitlines():
        doc = orjson.loads(line)
        if doc["type"].startswith("reward_"):
            got[doc["user_id"], doc["type"]] += 1
    assert got == expected_rewards(small_log, TPL)


class _FakeState:
    """Quix's per-key State, values through JSON as Quix stores them."""

    def __init__(self, store: dict[str, bytes]) -> None:
        self.store = store

    def get(self, key: str, default: Any = None) -> Any:
        raw = self.store.get(key)
        return default if raw is None else orjson.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self.store[key] = orjson.dumps(value)


def _quix_outputs(log: list[InputEvent]) -> tuple[Counter[tuple[str, str]], list[dict[str, Any]]]:
    (template,) = orjson.loads(TEMPLATES.read_bytes())
    rules = Rules(template)
    stores: dict[str, dict[str, bytes]] = {}
    counts: Counter[tuple[str, str]] = Counter()
    outputs = []
    for line in wire(log):
        value = orjson.loads(line)
        state = _FakeState(stores.setdefault(value["user_id"], {}))
        for out in rules.step(value, state):
            counts[out["user_id"], out["type"]] += 1
            outputs.append(out)
    return counts, outputs


def test_quix_rules_give_the_reference(small_log: list[InputEvent]) -> None:
    counts, outputs = _quix_outputs(small_log)
    assert counts == expected_rewards(small_log, TPL)
    granted = {o["reward_id"] for o in outputs if o["type"] == GRANTED}
    assert len(granted) == counts.total() - sum(n for (_, k), n in counts.items() if k == REVOKED)
    assert all(o["reward_id"] in granted for o in outputs if o["type"] == REVOKED)
    assert outputs == _quix_outputs(small_log)[1]  # deterministic ids
