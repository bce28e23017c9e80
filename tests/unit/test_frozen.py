"""app.frozen.fast_init: the same records as the dataclass's own __init__, still frozen."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from app.frozen import fast_init
from app.state import OrderRecord
from schemas.native import kernel
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

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        x: int

    with pytest.raises(TypeError, match="frozen"):
        fast_init(NotFrozen)


# ------------------------------------------------- the compiled constructor

_CALLS: list[tuple[tuple[object, ...], dict[str, object]]] = [
    ((1, "z", 3, 4), {}),
    ((1,), {}),
    ((), {"x": 1}),
    ((1, "z"), {}),
    ((), {"y": "z", "x": 1}),
    ((1,), {"y": "z"}),
    ((), {}),  # x missing
    ((1, "d", 3), {}),  # too many
    ((1,), {"x": 2}),  # x twice
    ((1,), {"z": 2}),  # unknown
    ((), {"y": "z"}),  # x missing, y given
]


def _python_built(cls: type, args: tuple[object, ...], kwargs: dict[str, object]) -> object:
    """What the generated Python `__init__` gives (or raises), called explicitly."""
    instance = object.__new__(cls)
    cls.__init__(instance, *args, **kwargs)  # type: ignore[misc]
    return instance


@pytest.mark.skipif(kernel is None, reason="the native kernel is not installed")
@pytest.mark.parametrize(("args", "kwargs"), _CALLS)
def test_the_compiled_constructor_builds_and_refuses_as_the_python_init_does(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    try:
        expected: object = _python_built(Sample, args, kwargs)
    except TypeError as error:
        refusal = str(error)
    else:
        built = Sample(*args, **kwargs)  # type: ignore[arg-type]
        assert built == expected
        assert type(built) is Sample
        return
    with pytest.raises(TypeError) as raised:
        Sample(*args, **kwargs)  # type: ignore[arg-type]
    assert str(raised.value) == refusal


@pytest.mark.skipif(kernel is None, reason="the native kernel is not installed")
def test_every_record_class_is_built_by_the_compiled_constructor() -> None:
    """Guards the extension point: CPython calls a class's `tp_vectorcall`
    for `cls(...)` (3.9-3.12). If a Python upgrade stopped calling it, or reset
    it, records would still be right but slow: this says so."""
    import sys

    assert (3, 11) <= sys.version_info[:2] < (3, 13), "check native/src/init.rs on this Python"
    classes = [Sample, OrderRecord, OrderPaid, RewardGranted, *_record_classes()]
    assert kernel is not None
    for cls in classes:
        assert kernel.has_constructor(cls), cls.__qualname__

    # ... and it is what runs: a class whose Python __init__ is broken still builds.
    @fast_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Probe:
        a: int

    def broken(self: object, a: int) -> None:
        raise AssertionError("the Python __init__ ran")

    Probe.__init__ = broken  # type: ignore[method-assign]
    assert Probe(3).a == 3


def _record_classes() -> list[type]:
    from schemas.records import RECORDS_BY_TYPE

    return list(RECORDS_BY_TYPE.values())


def test_records_built_all_ways_are_equal_and_hash_alike() -> None:
    """Through the class (compiled when installed), through `replace`, and
    through the Python `__init__`: the same values, still frozen."""
    order = OrderRecord(1200, 0, ("r1",), 5, "app")
    by_keywords = OrderRecord(
        amount_cents=1200, refunded_cents=0, refund_ids=("r1",), at=5, channel="app"
    )
    by_python = _python_built(OrderRecord, (1200, 0, ("r1",), 5, "app"), {})
    assert order == by_keywords == by_python
    assert hash(order) == hash(by_python)
    assert dataclasses.replace(order, at=6).at == 6
    with pytest.raises(dataclasses.FrozenInstanceError):
        order.at = 7  # type: ignore[misc]


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class Required:
    a: int
    b: int


@pytest.mark.skipif(kernel is None, reason="the native kernel is not installed")
@pytest.mark.parametrize("args", [(), (1,), (1, 2, 3)])
def test_refusals_without_defaults_are_worded_as_python_words_them(
    args: tuple[object, ...],
) -> None:
    with pytest.raises(TypeError) as python:
        _python_built(Required, args, {})
    with pytest.raises(TypeError) as compiled:
        Required(*args)  # type: ignore[arg-type]
    assert str(compiled.value) == str(python.value)


@pytest.mark.skipif(kernel is None, reason="the native kernel is not installed")
def test_compiled_records_are_left_to_reference_counting() -> None:
    """The cycle collector does not walk them (a frozen record cannot be in a
    cycle); they are freed as soon as the last reference goes."""
    import gc
    import weakref

    from app.state import UserState

    order = OrderRecord(1200, 0, (), 5, "app")
    state = UserState("u1", (), MappingProxyType({"o1": order}), MappingProxyType({}), None, None)
    assert not gc.is_tracked(order)
    assert not gc.is_tracked(state)
    assert gc.is_tracked(_python_built(OrderRecord, (1200, 0, (), 5, "app"), {}))

    @fast_init
    @dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
    class Weak:
        x: int

    value = Weak(1)
    gone = weakref.ref(value)
    del value
    assert gone() is None


@pytest.mark.skipif(kernel is None, reason="the native kernel is not installed")
def test_a_records_tuples_and_mapping_dict_are_left_to_reference_counting() -> None:
    """CPython keeps a tuple or dict tracked when it holds any collectable
    object, even an untracked record, so a cached user's tasks, slots and
    orders stayed in every collector pass; the constructor untracks those
    fields when nothing in them can lead back (docs/native.md)."""
    import gc

    from app.state import UserState

    order = OrderRecord(1200, 0, ("r1",), 5, "app")
    orders = {"o1": order}
    nested = ((("t1", len("ab")), ("t2", 3)), order)  # made at run time, tracked
    assert gc.is_tracked(nested)
    assert gc.is_tracked(nested[0])
    state = UserState("u1", nested, MappingProxyType(orders), MappingProxyType({}), None, (5, "t"))
    assert not gc.is_tracked(state.instances)
    assert not gc.is_tracked(nested[0])
    assert not gc.is_tracked(orders)
    # The proxy stays tracked: CPython's mappingproxy_dealloc unlinks it from
    # the collector unchecked and would crash on one untracked.
    assert gc.is_tracked(state.orders)

    # Anything that could lead back keeps its container tracked.
    class Plain:
        pass

    deep = ("four", "".join(["de", "ep"]))  # made at run time: a literal is a constant
    for _ in range(3):
        deep = (deep,)  # deeper than the constructor looks
    keeps = [(["a list"],), (Plain(),), deep, ({"a": []},)]
    for value in keeps:
        kept = UserState("u2", value, MappingProxyType({}), MappingProxyType({}), None, None)
        assert gc.is_tracked(kept.instances), value
    for mapping in ({"o1": []}, {1: order}, {"o1": (order, [])}):
        UserState("u3", (), MappingProxyType(mapping), MappingProxyType({}), None, None)
        assert gc.is_tracked(mapping), mapping

    # Freed by reference counting, with the collector run over what is left.
    del state, nested, orders, order, keeps, kept
    gc.collect()
