"""The operator page's fold of the output log (app.ops_view)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from test_properties import LARGE, SMALL, build_log, replay

from app.catalog import Catalog
from app.ops_view import MAX_POINTS, CampaignView, PoolBurn
from schemas.codec import decode
from schemas.records import (
    DeadLetter,
    Record,
    RewardGranted,
    RewardRejected,
    RewardRevoked,
    TaskRolledBack,
)

logs = st.builds(build_log, st.integers(0, 2**32 - 1), st.integers(1, 80))


def outputs_of(catalog: Catalog, seed: int, length: int) -> tuple[list[Record], object]:
    lines, replayer = replay(catalog, build_log(seed, length))
    return [decode(line) for line in lines], replayer


def expected_statuses(records: list[Record]) -> dict[str, tuple[str, str]]:
    """task id -> (template, latest status), the slow way."""
    latest: dict[str, tuple[str, str]] = {}
    for record in records:
        kind = record.TYPE
        if kind in ("task_claimed", "task_completed", "task_expired", "task_rolled_back"):
            status = {
                "task_claimed": "in_progress",
                "task_completed": "completed",
                "task_expired": "expired",
            }.get(kind)
            if isinstance(record, TaskRolledBack):
                status = record.status
            assert status is not None
            latest[record.task_id] = (record.template_id, status)  # type: ignore[attr-defined]
    return latest


@given(st.integers(0, 2**32 - 1), st.integers(1, 80), st.sampled_from([SMALL, LARGE]))
def test_the_funnel_counts_every_task_by_its_latest_status(
    seed: int, length: int, catalog: Catalog
) -> None:
    records, replayer = outputs_of(catalog, seed, length)
    view = CampaignView()
    view.apply_all(records, catalog.pools)

    latest = expected_statuses(records)
    for template_id, funnel in view.funnels.items():
        mine = [status for template, status in latest.values() if template == template_id]
        assert funnel.claimed == len(mine)
        assert funnel.in_progress == mine.count("in_progress")
        assert funnel.completed == mine.count("completed")
        assert funnel.expired == mine.count("expired")
        assert funnel.in_progress + funnel.completed + funnel.expired == funnel.claimed
        kinds = Counter(r.TYPE for r in records if getattr(r, "template_id", None) == template_id)
        assert funnel.rewards_granted == kinds["reward_granted"]
        assert funnel.rewards_revoked == kinds["reward_revoked"]
        assert funnel.rewards_rejected == kinds["reward_rejected"]
        assert funnel.claims_rejected == kinds["claim_rejected"]
    # The engine's own state agrees for every task it still keeps.
    for state in replayer.states.values():  # type: ignore[attr-defined]
        for inst in state.instances:
            assert latest[inst.task_id][1] == inst.status


@given(st.integers(0, 2**32 - 1), st.integers(1, 80), st.data())
def test_copies_of_records_change_nothing(seed: int, length: int, data: st.DataObject) -> None:
    """At-least-once delivery: a crashed batch's outputs are written again."""
    records, _ = outputs_of(SMALL, seed, length)
    once = CampaignView()
    once.apply_all(records, SMALL.pools)

    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    with_copies: list[Record] = []
    for n, record in enumerate(records):
        with_copies.append(record)
        if rng.random() < 0.3:  # a batch written again: the last few records once more
            with_copies.extend(records[max(0, n - rng.randrange(4)) : n + 1])
    twice = CampaignView()
    twice.apply_all(with_copies, SMALL.pools)

    assert twice.funnels == once.funnels
    assert {p: b.series() for p, b in twice.pools.items()} == {
        p: b.series() for p, b in once.pools.items()
    }
    assert twice.copies == len(with_copies) - len(records)


@given(st.integers(0, 2**32 - 1), st.integers(1, 80))
def test_each_pool_issued_is_what_the_ledger_paid(seed: int, length: int) -> None:
    records, replayer = outputs_of(SMALL, seed, length)
    view = CampaignView()
    view.apply_all(records, SMALL.pools)
    balances = replayer.budget.balances()  # type: ignore[attr-defined]
    for pool_id in SMALL.pools:
        burn = view.pools.get(pool_id, PoolBurn())
        assert burn.issued == balances[pool_id].issued
        series = burn.series()
        assert (series[-1][1] if series else 0) == burn.issued
        rejected = sum(1 for r in records if isinstance(r, RewardRejected) and r.pool_id == pool_id)
        assert burn.rejected == rejected


@given(st.lists(st.tuples(st.integers(0, 10**13), st.integers(-500, 1000)), max_size=2000))
def test_a_burn_down_keeps_its_total_and_at_most_max_points(
    moves: list[tuple[int, int]],
) -> None:
    burn = PoolBurn()
    for at, units in sorted(moves):
        burn.add(at, units)
    series = burn.series()
    assert len(series) <= MAX_POINTS
    assert (series[-1][1] if series else 0) == sum(units for _, units in moves)
    assert [t for t, _ in series] == sorted({t for t, _ in series})
    assert all(t % burn.slice_micros == 0 for t, _ in series)


def test_an_items_pool_burns_one_unit_per_reward() -> None:
    pools = LARGE.pools  # "grand" counts items
    view = CampaignView()
    view.apply(RewardGranted("e1", "r1", "u", "t", "k", 5000, "p", "grand", "done", 10, "c"), pools)
    view.apply(RewardGranted("e2", "r2", "u", "t", "k", 5000, None, "cash", "done", 20, "c"), pools)
    view.apply(
        RewardRevoked("e3", "r2", "u", "t", "k", 5000, None, "cash", "refund", 30, "c"), pools
    )
    assert view.pools["grand"].issued == 1
    assert view.pools["cash"].issued == 0
    assert (view.pools["cash"].granted, view.pools["cash"].revoked) == (5000, 5000)
    assert view.funnels["t"].rewards_granted == 2


def test_dead_letters_keep_the_latest_twenty_and_count_all() -> None:
    view = CampaignView()
    for n in range(25):
        letter = DeadLetter(f"d{n}", f"reason {n}", f"orders/0@{n}", "{bad", None)
        view.apply(letter, {}, where=f"dead-letters/0@{n}", at_ms=1000 + n)
    view.apply(DeadLetter("d99", "binary", "orders/0@99", None, "AAEC"), {}, "dl/0@99", 5)
    assert view.dead_letter_count == 26
    assert len(view.dead_letters) == 20
    assert view.dead_letters[-1].payload == "(binary, base64) AAEC"
    assert view.dead_letters[0].reason == "reason 6"


def test_an_undecodable_record_is_counted_not_applied() -> None:
    view = CampaignView()
    view.apply(None, {})
    assert (view.unreadable, view.records, view.funnels) == (1, 0, {})
