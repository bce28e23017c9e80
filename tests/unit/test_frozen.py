"""app.frozen.fast_init: the same records as the dataclass's own __init__, still frozen."""

from __future__ import annotations

import dataclasses

import pytest

from app.frozen import fast_init
from app.state import OrderRecord
from schemas.records import OrderPaid, RewardGranted


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    x: int
    y: str = "d"


def test_positional_keyword_and_default_arguments_build_the_same_value() -> None:
    assert Sample(1) == Sample(x=1) == Sample(1, "d") == Sample(y="d", x=1)
    assert hash(Sample(1)) == hash(Sample(x=1, y="d"))
    assert dataclasses.replace(Sample(1), y="z") == Sample(1, "z")
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample(1, "d", 3)  # type: ignore[call-arg]


def test_the_records_stay_frozen() -> None:
    order = OrderPaid("e1", "o1", "u1", 1200, "app", 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        order.amount_cents = 1  # type: ignore[misc]
    assert order == OrderPaid(
        event_id="e1", order_id="o1", user_id="u1", amount_cents=1200, channel="app", at=5
    )
    assert OrderRecord.__init__.__qualname__ == "OrderRecord.__init__"
    assert [f.name for f in dataclasses.fields(RewardGranted)][:2] == ["event_id", "reward_id"]


def test_what_it_cannot_build_exactly_is_refused() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="plain init fields"):
        fast_init(WithFactory)

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        x: int

    with pytest.raises(TypeError, match="slotted"):
        fast_init(NoSlots)
