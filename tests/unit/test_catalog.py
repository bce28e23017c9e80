"""Template and pool files: every mistake named with its template and field, all at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from engine_builders import template

from app.catalog import CatalogError, parse_catalog
from taskstream.catalog_files import load_catalog

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def problems(templates: Any, pools: Any = None) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(templates, pools)
    return info.value.problems


def test_sample_catalog_loads() -> None:
    cat = load_catalog(SAMPLES / "templates.json", SAMPLES / "pools.json")
    modes = {t.reward.mode for t in cat.templates.values()}
    assert modes == {"cumulative", "per_order", "milestones", "lottery"}
    assert {t.display for t in cat.templates.values()} == {"hidden", "visible"}
    assert {t.count_by for t in cat.templates.values()} == {"order", "day"}
    assert sum(t.exclusive for t in cat.templates.values()) >= 2


def test_defaults_for_optional_fields() -> None:
    doc = template()
    for name in ("order_rule", "claim_rule", "refund_policy", "priority", "exclusive"):
        del doc[name]
    t = parse_catalog([doc]).templates["t"]
    assert (t.order_rule.min_amount_cents, t.order_rule.channels) == (0, None)
    assert (t.claim_rule.max_claims, t.refund_policy, t.priority, t.exclusive) == (
        1,
        "rollback",
        0,
        False,
    )


def test_missing_field_is_named_with_the_template_id() -> None:
    doc = template()
    del doc["target"]
    assert problems([doc]) == ["template 't' field target: missing"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"count_by": "week"}, "field count_by: unknown value 'week'"),
        ({"display": "grey"}, "field display: unknown value 'grey'"),
        ({"timezone": "Mars/Olympus"}, "field timezone: unknown IANA time zone 'Mars/Olympus'"),
        ({"active_until": "2024-03-01T00:00:00Z"}, "field active_until: must be after active_from"),
        ({"active_from": "2024-03-01T08:00:00+08:00"}, "field active_from: timestamp not in UTC"),
        ({"target": 0}, "field target: must be >= 1"),
        ({"duration_days": True}, "field duration_days: expected an integer, got True"),
        (
            {"order_rule": {"min_amount_cents": -5}},
            "field order_rule.min_amount_cents: negative amount",
        ),
        ({"order_rule": {"channels": []}}, "field order_rule.channels: must not be empty"),
        ({"claim_rule": {"max_claims": 0}}, "field claim_rule.max_claims: must be >= 1"),
        ({"reward": {"mode": "cashback"}}, "field reward.mode: unknown value 'cashback'"),
        (
            {"reward": {"mode": "cumulative", "amount_cents": -1}},
            "field reward.amount_cents: negative amount",
        ),
        (
            {"reward": {"mode": "cumulative", "amount_cents": 1, "pool_id": "nope"}},
            "field reward.pool_id: unknown pool 'nope'",
        ),
        (
            {"reward": {"mode": "per_order", "per_order_cents": [1, 2]}},
            "field reward.per_order_cents: has 2 steps, expected target = 3",
        ),
        ({"reward": {"mode": "lottery", "prizes": []}}, "field reward.prizes: empty prize table"),
        (
            {
                "reward": {
                    "mode": "lottery",
                    "prizes": [{"prize_id": "a", "amount_cents": 1, "weight": 0}],
                }
            },
            "field reward.prizes: total weight must be > 0",
        ),
        ({"exclusive": "yes"}, "field exclusive: expected true or false"),
    ],
)
def test_each_mistake_is_reported_with_template_and_field(
    overrides: dict[str, Any], expected: str
) -> None:
    found = problems([template(**overrides)])
    assert any(p.startswith("template 't'") and expected in p for p in found), found


@pytest.mark.parametrize(
    ("milestones", "expected"),
    [
        (
            [{"at": 1, "amount_cents": 1}, {"at": 1, "amount_cents": 2}],
            "reward.milestones[1].at: duplicate milestone at 1",
        ),
        (
            [{"at": 2, "amount_cents": 1}, {"at": 1, "amount_cents": 2}],
            "reward.milestones[1].at: milestones must be in increasing order",
        ),
        ([{"at": 4, "amount_cents": 1}], "reward.milestones[0].at: 4 is beyond target 3"),
        ([], "reward.milestones: must not be empty"),
        ([{"at": 1}], "reward.milestones[0].amount_cents: missing"),
    ],
)
def test_bad_milestones_are_reported(milestones: list[Any], expected: str) -> None:
    found = problems([template(reward={"mode": "milestones", "milestones": milestones})])
    assert any(expected in p for p in found), found


def test_all_problems_of_all_templates_and_pools_are_collected_and_nothing_loads() -> None:
    bad_a = template(template_id="a", target=-1, display="x")
    bad_b = template(
        template_id="b",
        reward={
            "mode": "lottery",
            "prizes": [{"prize_id": "p", "amount_cents": 1, "weight": 1, "pool_id": "ghost"}],
        },
    )
    pools = [
        {"pool_id": "cash", "total": -3, "unit": "cents"},
        {"pool_id": "x", "total": 1, "unit": "kg"},
    ]
    found = problems([bad_a, bad_b, template(template_id="fine")], pools)
    assert len(found) == 5, found
    assert any("template 'a' field target" in p for p in found)
    assert any("template 'a' field display" in p for p in found)
    assert any(
        "template 'b' field reward.prizes[0].pool_id: unknown pool 'ghost'" in p for p in found
    )
    assert any("pool 'cash' field total: negative amount" in p for p in found)
    assert any("pool 'x' field unit: unknown value 'kg'" in p for p in found)


def test_duplicate_template_and_pool_ids_are_refused() -> None:
    pools = [{"pool_id": "p", "total": 1, "unit": "cents"}] * 2
    found = problems([template(), template()], pools)
    assert "template 't' field template_id: duplicate template id" in found
    assert "pool 'p' field pool_id: duplicate pool id" in found


def test_template_without_id_is_named_by_position() -> None:
    doc = template()
    del doc["template_id"]
    assert problems([template(template_id="ok"), doc]) == ["template #1 field template_id: missing"]


def test_files_that_are_not_lists_or_not_json_are_errors(tmp_path: Path) -> None:
    assert problems({"template_id": "t"}) == [
        "templates: expected a JSON list of templates, got dict"
    ]
    broken = tmp_path / "t.json"
    broken.write_bytes(b"[{")
    with pytest.raises(CatalogError, match="not valid JSON"):
        load_catalog(broken)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.json")


def test_pool_reference_without_pools_file_is_an_error() -> None:
    doc = template(reward={"mode": "cumulative", "amount_cents": 1, "pool_id": "cash"})
    assert problems([doc]) == [
        "template 't' field reward.pool_id: unknown pool 'cash' (not in the pools file)"
    ]


def test_sample_pools_round_trip_through_orjson() -> None:
    raw = orjson.loads((SAMPLES / "pools.json").read_bytes())
    cat = parse_catalog(orjson.loads((SAMPLES / "templates.json").read_bytes()), raw)
    assert {p["pool_id"] for p in raw} == set(cat.pools)
