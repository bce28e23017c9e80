"""The audit's core (app.audit): replay in the processor's order with recorded
budget decisions, compare by event id, reconcile the pools."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from unit.engine_builders import claim, input_messages, order, t, template, tick

from app.audit import (
    DEAD_LETTERS,
    DIFFERENT,
    EXTRA,
    MISSING,
    REWARDS,
    TASK_EVENTS,
    InputMessage,
    RecordedBudget,
    compare,
    decisions_from,
    reconcile,
    replay_inputs,
)
from app.bucket_sim import PartitionedReplayer
from app.budget import Ledger
from app.catalog import Catalog, parse_catalog
from app.replayer import Replayer
from bench.loggen import LogShape, generate
from schemas.codec import decode, encode, to_wire
from schemas.records import (
    REWARD_RECORDS,
    BucketGranted,
    InputEvent,
    Record,
    RefillDenied,
    RewardGranted,
)
from streams.kafka.partitioner import partition_for
from streams.partition_state import PartitionRecord
from streams.processor import (
    InMessage,
    PartitionCache,
    decode_message,
    process_batch,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
TEMPLATES = orjson.loads((SAMPLES / "templates.json").read_bytes())
_REWARD_TYPES = {cls.TYPE for cls in REWARD_RECORDS}


def _catalog(cash: int, small: int, items: int) -> Catalog:
    return parse_catalog(
        TEMPLATES,
        [
            {"pool_id": "cash", "total": cash, "unit": "cents"},
            {"pool_id": "small_budget", "total": small, "unit": "cents"},
            {"pool_id": "grand_prizes", "total": items, "unit": "items"},
        ],
    )


def _log(seed: int, events: int = 400) -> list[InputEvent]:
    shape = LogShape(
        events=events,
        users=24,
        task_user_every=1,
        task_order_share=1.0,
        claim_share=0.12,
        refund_share=0.15,
        tick_every=50,
        seconds_per_event=2500.0,
        seed=seed,
    )
    return list(generate(shape))


def _topic(record: Record) -> str:
    return REWARDS if record.TYPE in _REWARD_TYPES else TASK_EVENTS


def _live(catalog: Catalog, log: list[InputEvent]) -> list[Record]:
    """A run as replay does it: one counter per pool, the log's order."""
    replayer = Replayer(catalog, Ledger(catalog.pools.values()))
    return [out for event in log for _, outcome in replayer.apply(event) for out in outcome.events]


def _audit(catalog: Catalog, messages: list[InputMessage], live: list[Record]):  # type: ignore[no-untyped-def]
    rewards = [r for r in live if r.TYPE in _REWARD_TYPES]
    budget = RecordedBudget(catalog.pools.values(), decisions_from(rewards, catalog))
    expected = replay_inputs(messages, catalog, budget, decode_message)
    comparison = compare(expected.outputs, [(_topic(r), to_wire(r)) for r in live])
    return expected, comparison, budget


@settings(max_examples=30, deadline=None)
@given(
    partitions=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    cash=st.integers(0, 20_000),
    small=st.integers(0, 3_000),
    items=st.integers(0, 3),
)
def test_the_audit_of_a_faithful_run_agrees(partitions, seed, cash, small, items) -> None:
    """Whatever the pools and the partitioning, the outputs of a run agree with
    the audit's replay, and every reward was decided by the recorded log."""
    catalog = _catalog(cash, small, items)
    log = _log(seed)
    live = _live(catalog, log)
    _expected, comparison, budget = _audit(catalog, input_messages(log, partitions), live)
    assert comparison.findings == ()
    assert budget.undecided == []
    assert comparison.expected == len({to_wire(r)["event_id"] for r in live})


def test_tampering_is_listed_exactly() -> None:
    """One reward removed, one altered, one injected: exactly those three."""
    catalog = _catalog(10**9, 10**9, 1000)
    log = _log(7, events=600)
    live = _live(catalog, log)
    grants = [r for r in live if isinstance(r, RewardGranted) and r.amount_cents > 0]
    revoked = {r.reward_id for r in live if r.TYPE == "reward_revoked"}
    kept = [g for g in grants if g.reward_id not in revoked]
    assert len(kept) >= 2, "the generated log must pay at least two rewards"
    removed, altered = kept[0], kept[1]
    injected = replace(altered, event_id="evt-forged", reward_id="rwd-forged", amount_cents=99_999)
    tampered = [
        replace(r, amount_cents=r.amount_cents + 1) if r is altered else r
        for r in live
        if r is not removed
    ] + [injected]
    _expected, comparison, _budget = _audit(catalog, input_messages(log, 3), tampered)
    found = {(f.kind, f.event_id) for f in comparison.findings}
    assert found == {
        (MISSING, removed.event_id),
        (DIFFERENT, altered.event_id),
        (EXTRA, "evt-forged"),
    }


def test_duplicate_copies_are_counted_not_reported() -> None:
    catalog = _catalog(10**9, 10**9, 1000)
    log = _log(3)
    live = _live(catalog, log)
    _expected, comparison, _budget = _audit(catalog, input_messages(log, 2), live + live[:10])
    assert comparison.agrees
    assert comparison.duplicates == 10


def test_the_replay_follows_the_processors_order_and_dead_letters() -> None:
    """One partition, topics fetched in any interleaving, bad messages among
    them: the audit expects byte for byte what the processor writes."""
    catalog = parse_catalog([template(target=2)], None)
    log: list[InputEvent] = [
        claim(at=t(2, 10), user="a"),
        order("o1", at=t(2, 11), user="a"),
        claim(at=t(2, 12), user="b"),
        order("o2", at=t(3, 9), user="b", amount=10),  # too small
        tick(t(9, 13)),  # a's deadline: t(9, 10)
        order("o3", at=t(9, 14), user="b"),
        order("o4", at=t(2, 13), user="a"),  # late in the log, early in event time
    ]
    messages = input_messages(log, 1)
    bad = [
        InputMessage("orders", 0, 4, b"a", b"{not json", "x.orders/0@4"),
        InputMessage("claims", 0, 2, b"zzz", encode(claim(at=t(2, 14), user="c")), "x.claims/0@2"),
    ]
    fetch_order = list(messages) + bad
    random.Random(5).shuffle(fetch_order)
    fetch_order.sort(key=lambda m: (m.role, m.offset))  # offset order within each topic
    budget = RecordedBudget(catalog.pools.values(), {})
    expected = replay_inputs(fetch_order, catalog, budget, decode_message)
    ends: dict[str, int] = {}
    for m in fetch_order:
        ends[m.role] = max(ends.get(m.role, 0), m.offset + 1)
    result = process_batch(
        PartitionRecord(0),
        [InMessage(m.role, f"x.{m.role}", 0, m.offset, m.key, m.value) for m in fetch_order],
        catalog=catalog,
        partitions=1,
        load_user=lambda _user: None,
        cache=PartitionCache(),
        highwater={role: ends.get(role, 0) for role in ("claims", "orders", "refunds", "ticks")},
    )
    processed = sorted((o.role, o.value) for o in result.outputs)
    replayed = sorted((topic, encode(record)) for topic, record in expected.outputs)
    assert replayed == processed
    assert sum(1 for topic, _ in expected.outputs if topic == DEAD_LETTERS) == 2


def _bucketed_replayer(catalog: Catalog, log: list[InputEvent], partitions: int):  # type: ignore[no-untyped-def]
    replayer = PartitionedReplayer(
        catalog, partitions, lambda user: partition_for(user.encode(), partitions)
    )
    outputs = [o for e in log for _, outcome in replayer.apply(e) for o in outcome.events]
    return outputs, replayer


def _bucketed_run(catalog: Catalog, log: list[InputEvent], partitions: int):  # type: ignore[no-untyped-def]
    outputs, replayer = _bucketed_replayer(catalog, log, partitions)
    return outputs, list(replayer.network.sent)


def test_reconcile_a_bucketed_run_adds_up_and_names_its_first_refusal() -> None:
    catalog = _catalog(3_000, 500, 1)
    partitions = 4
    log = _log(11, events=800)
    outputs, budget = _bucketed_run(catalog, log, partitions)
    rewards = [r for r in outputs if r.TYPE in _REWARD_TYPES]
    audits = {
        a.pool_id: a
        for a in reconcile(
            catalog.pools, rewards, budget, lambda u: partition_for(u.encode(), partitions)
        )
    }
    for audit in audits.values():
        assert audit.problems == (), audit
        assert 0 <= audit.issued <= audit.total
        assert audit.at_master + audit.in_buckets + audit.issued == audit.total
        assert audit.in_buckets >= 0
    cash = audits["cash"]
    refusals = [r for r in rewards if r.TYPE == "reward_rejected" and r.pool_id == "cash"]
    assert refusals, "the cash pool must run dry in this log"
    assert cash.dry_at == min(r.at for r in refusals)  # type: ignore[attr-defined]
    assert cash.rejected == len(refusals)
    assert cash.burn_down[-1][1] == cash.issued


def test_reconcile_flags_a_bucket_that_paid_more_than_it_received() -> None:
    catalog = _catalog(3_000, 500, 1)
    partitions = 3
    outputs, budget = _bucketed_run(catalog, _log(11, events=800), partitions)
    rewards = [r for r in outputs if r.TYPE in _REWARD_TYPES]
    first_grant = next(m for m in budget if isinstance(m, BucketGranted) and m.units > 0)
    without = [m for m in budget if m is not first_grant]
    audits = reconcile(
        catalog.pools, rewards, without, lambda u: partition_for(u.encode(), partitions)
    )
    problems = [p for a in audits if a.pool_id == first_grant.pool_id for p in a.problems]
    assert any(f"partition {first_grant.partition} paid" in p for p in problems), problems


def test_reconcile_flags_a_refusal_the_master_never_made() -> None:
    catalog = _catalog(10**6, 10**6, 1000)
    outputs, budget = _bucketed_run(catalog, _log(5), 2)
    rewards = [r for r in outputs if r.TYPE in _REWARD_TYPES]
    grant = next(r for r in rewards if isinstance(r, RewardGranted) and r.pool_id == "cash")
    forged = decode(
        encode(grant)
        .replace(b'"reward_granted"', b'"reward_rejected"')
        .replace(grant.reason.encode(), b"budget_exhausted")
    )
    audits = reconcile(catalog.pools, [*rewards, forged], budget, lambda u: 0)
    cash = next(a for a in audits if a.pool_id == "cash")
    assert any("never refused" in p for p in cash.problems), cash.problems


def test_a_reward_without_a_recorded_decision_is_decided_by_what_is_left() -> None:
    pools = _catalog(100, 0, 0).pools
    budget = RecordedBudget(pools.values(), {})
    assert budget.try_debit("cash", 60, "r1")
    assert not budget.try_debit("cash", 60, "r2")
    budget.credit("cash", 60)
    assert budget.try_debit("cash", 100, "r3")
    assert budget.undecided == ["r1", "r2", "r3"]


def test_reconcile_ties_each_refusal_to_a_denial_of_its_own_partition() -> None:
    """A refusal is justified only by a master's refusal (asked, or the dry
    announcement) sent to that partition: one sent elsewhere, or later in
    another partition, does not excuse it."""
    catalog = _catalog(3_000, 500, 1)
    partitions = 4
    outputs, budget = _bucketed_run(catalog, _log(11, events=800), partitions)
    rewards = [r for r in outputs if r.TYPE in _REWARD_TYPES]

    def part(user: str) -> int:
        return partition_for(user.encode(), partitions)

    refused = next(r for r in rewards if r.TYPE == "reward_rejected" and r.pool_id == "cash")
    victim = part(refused.user_id)  # type: ignore[attr-defined]
    without = [
        m
        for m in budget
        if not (isinstance(m, RefillDenied) and m.pool_id == "cash" and m.partition == victim)
    ]
    assert len(without) < len(budget)
    assert any(isinstance(m, RefillDenied) and m.pool_id == "cash" for m in without)
    cash = next(a for a in reconcile(catalog.pools, rewards, without, part) if a.pool_id == "cash")
    assert any(f"[{victim}]" in p for p in cash.problems), cash.problems


def test_the_audits_refused_requests_are_the_masters_refusals_and_units_add_up() -> None:
    """`pools status` counts the master's refusals of requests; the audit
    must name the same number the same way, apart from its dry notices."""
    catalog = _catalog(3_000, 500, 1)
    partitions = 4
    outputs, replayer = _bucketed_replayer(catalog, _log(11, events=800), partitions)
    rewards = [r for r in outputs if r.TYPE in _REWARD_TYPES]
    audits = reconcile(
        catalog.pools,
        rewards,
        list(replayer.network.sent),
        lambda u: partition_for(u.encode(), partitions),
    )
    for audit in audits:
        master = replayer.network.masters[audit.pool_id]
        assert audit.refused_requests == master.denials
        assert audit.refused_requests + audit.dry_notices == audit.denials
        assert audit.granted_units - audit.revoked_units == audit.issued
    cash = next(a for a in audits if a.pool_id == "cash")
    assert cash.refused_requests >= 1
    assert cash.dry_notices >= 1  # the master announced the pool dry to every bucket
