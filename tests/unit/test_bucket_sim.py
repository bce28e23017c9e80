"""Bucketed replay (`replay --partitions N`) against the single-counter replay.

With every budget message delivered at once, progressive bucketing must pay
exactly what one counter per pool pays: a reward is refused only when the
whole pool cannot pay it, wherever its users hash. So on any log, with pools
scarce enough to run dry, the outputs are the same events.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit.engine_builders import claim, order, t, template

from app.bucket_sim import PartitionedReplayer
from app.bucketing import balance_sheet
from app.budget import Ledger
from app.catalog import Catalog, parse_catalog
from app.replayer import Replayer
from bench.loggen import LogShape, generate
from schemas.codec import encode
from schemas.records import InputEvent
from streams.kafka.partitioner import partition_for

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
TEMPLATES = orjson.loads((SAMPLES / "templates.json").read_bytes())


def _scarce(cash: int, small: int, items: int) -> Catalog:
    return parse_catalog(
        TEMPLATES,
        [
            {"pool_id": "cash", "total": cash, "unit": "cents"},
            {"pool_id": "small_budget", "total": small, "unit": "cents"},
            {"pool_id": "grand_prizes", "total": items, "unit": "items"},
        ],
    )


def _outputs(replayer: Replayer | PartitionedReplayer, log: list[InputEvent]) -> list[bytes]:
    return [
        encode(output)
        for event in log
        for _, outcome in replayer.apply(event)
        for output in outcome.events
    ]


def _bucketed(catalog: Catalog, partitions: int) -> PartitionedReplayer:
    return PartitionedReplayer(
        catalog, partitions, lambda user: partition_for(user.encode(), partitions)
    )


@settings(max_examples=25, deadline=None)
@given(
    partitions=st.integers(1, 8),
    seed=st.integers(0, 2**32),
    cash=st.integers(0, 20_000),
    small=st.integers(0, 3_000),
    items=st.integers(0, 3),
)
def test_bucketed_replay_pays_what_one_counter_pays(partitions, seed, cash, small, items) -> None:
    catalog = _scarce(cash, small, items)
    log = list(
        generate(
            LogShape(
                events=400,
                users=24,
                task_user_every=1,
                task_order_share=1.0,
                claim_share=0.12,
                refund_share=0.15,
                tick_every=50,
                seconds_per_event=2500.0,
                seed=seed,
            )
        )
    )
    expected = _outputs(Replayer(catalog, Ledger(catalog.pools.values())), log)
    bucketed = _bucketed(catalog, partitions)
    got = _outputs(bucketed, log)
    assert sorted(got) == sorted(expected)
    for pool_id, master in bucketed.network.masters.items():
        buckets = [p.buckets.bucket(pool_id) for p in bucketed.parts]
        sheet = balance_sheet(master, buckets)
        assert sheet.balanced, sheet
        assert sheet.in_flight == 0, sheet


@pytest.mark.parametrize("partitions", [10, 3, 1])
@pytest.mark.parametrize("users", [["a", "b", "c", "d", "e"], [f"user-{i}" for i in range(9)]])
def test_article_case_through_the_engine(partitions: int, users: list[str]) -> None:
    """1,000 cents; 10-cent rewards spread over every partition take 700 and
    leave fragments in the buckets; of the 100-cent rewards exactly three pay."""
    catalog = parse_catalog(
        [
            template(
                template_id="small",
                target=1,
                reward={"mode": "cumulative", "amount_cents": 10, "pool_id": "hot"},
            ),
            template(
                template_id="big",
                target=1,
                reward={"mode": "cumulative", "amount_cents": 100, "pool_id": "hot"},
            ),
        ],
        [{"pool_id": "hot", "total": 1_000, "unit": "cents"}],
    )
    log: list[InputEvent] = []
    for i in range(70):
        user = f"small-{i}"
        log += [claim("small", t(2), user=user), order(f"o-{user}", at=t(3), user=user)]
    for user in users:
        log += [claim("big", t(4), user=user), order(f"o-{user}", at=t(5), user=user)]
    bucketed = _bucketed(catalog, partitions)
    outputs = [orjson.loads(o) for o in _outputs(bucketed, log)]
    big = [o for o in outputs if o.get("template_id") == "big" and "reward" in o["type"]]
    assert [o["type"] for o in big].count("reward_granted") == 3
    assert [o["type"] for o in big].count("reward_rejected") == len(users) - 3
    master = bucketed.network.masters["hot"]
    sheet = balance_sheet(master, [p.buckets.bucket("hot") for p in bucketed.parts])
    assert sheet.issued == 1_000
    assert sheet.balanced
