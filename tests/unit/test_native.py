"""The compiled kernel (native/, schemas/native.py) against its Python reference.

Each kernel function must give byte for byte what the Python code gives, or
None where it leaves the case to Python; never a different answer. These
properties compare the two on generated values: plain ones (which the kernel
must take, or the tests would pass with a kernel that declines everything),
edge cases (control characters, quotes, non-ASCII, surrogates, -0, floats,
big integers, impossible dates, leap days) and the fuzz's hostile messages.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.hostile import hostile_messages

from app import ids, state_codec
from app.frozen import fast_init
from app.state import OrderRecord, RewardSlot, TaskInstance, UserState
from app.state_codec import (
    STATE_FORMAT,
    decode_user_state,
    encode_user_state,
    encode_user_state_python,
)
from schemas import codec, timestamps
from schemas.errors import SchemaError
from schemas.fields import Kind
from schemas.limits import MAX_AMOUNT_CENTS, MAX_EVENT_TIME, MAX_ID_CHARS, MIN_EVENT_TIME
from schemas.native import describe, kernel
from schemas.records import INPUT_RECORDS, RECORDS_BY_TYPE, OrderPaid, Record, TaskClaim, Tick
from streams.partition_state import Output, Redo, _redo_body_python, decode_redo, encode_redo

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.skipif(kernel is None, reason="native kernel not built")


def test_make_setup_builds_the_kernel() -> None:
    # Not skipped: `make setup` must have built it, or every figure in
    # BENCHMARKS.md is off by the kernel's share.
    assert kernel is not None, describe()


# ----------------------------------------------------------------- ids

TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


@PROPS
@given(st.lists(TEXT, min_size=1, max_size=5))
def test_digest_is_the_reference(parts: list[str]) -> None:
    assert kernel is not None
    assert kernel.digest(*parts) == ids.digest_python(*parts)


def test_digest_refuses_a_surrogate_as_python_does() -> None:
    assert kernel is not None
    with pytest.raises(UnicodeEncodeError):
        ids.digest_python("a\ud800")
    with pytest.raises(UnicodeEncodeError):
        kernel.digest("a\ud800")


# ---------------------------------------------------------- timestamps

YEAR_1 = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
YEAR_10000 = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z


@PROPS
@given(st.integers(min_value=YEAR_1, max_value=YEAR_10000 - 1))
def test_format_is_the_reference(micros: int) -> None:
    assert kernel is not None
    assert kernel.format_utc(micros) == timestamps.format_python(micros)


@PROPS
@given(st.integers(min_value=YEAR_1, max_value=YEAR_10000 - 1))
def test_parse_reads_every_canonical_text(micros: int) -> None:
    assert kernel is not None
    text = timestamps.format_python(micros)
    assert kernel.parse_utc(text) == micros == timestamps.parse_python(text)


def test_format_outside_python_dates_is_left_to_python() -> None:
    assert kernel is not None
    assert kernel.format_utc(YEAR_1 - 1) is None
    assert kernel.format_utc(YEAR_10000) is None
    with pytest.raises(OverflowError):
        kernel.format_utc(2**70)
    assert timestamps.format_utc(0) == "1970-01-01T00:00:00Z"


DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=1)


@st.composite
def shaped_texts(draw: st.DrawFn) -> str:
    """Canonical-looking texts with arbitrary digits: impossible dates included."""
    year = draw(st.sampled_from(["0000", "0001", "1900", "2000", "2023", "2024", "2100", "9999"]))
    month = draw(st.integers(0, 13))
    day = draw(st.integers(0, 32))
    hour, minute, second = (
        draw(st.integers(0, 25)),
        draw(st.integers(0, 61)),
        draw(st.integers(0, 61)),
    )
    fraction = draw(st.sampled_from(["", ".0", ".5", ".000001", ".123450", ".999999", ".1234567"]))
    end = draw(st.sampled_from(["Z", "Z", "z", "+00:00"]))
    sep = draw(st.sampled_from(["T", "T", "t", " "]))
    return f"{year}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{fraction}{end}"


def _python_parse(text: str) -> int | None:
    try:
        return timestamps.parse_python(text)
    except SchemaError:
        return None


@PROPS
@given(shaped_texts())
def test_parse_never_disagrees(text: str) -> None:
    assert kernel is not None
    native = kernel.parse_utc(text)
    python = _python_parse(text)
    if native is not None:
        assert native == python, text
    try:
        assert timestamps.parse_utc(text) == python
    except SchemaError:
        assert python is None


# ------------------------------------------------------------ the reader

ASCII_ID = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)
ANY_ID = st.one_of(
    ASCII_ID.filter(lambda s: len(s) <= MAX_ID_CHARS),
    st.text(min_size=0, max_size=8),  # non-ASCII, control characters, empty
    st.just("x" * (MAX_ID_CHARS + 1)),
    st.integers(),
    st.none(),
)
PLAIN_AT = st.integers(MIN_EVENT_TIME, MAX_EVENT_TIME - 1).map(timestamps.format_python)
ANY_AT = st.one_of(
    PLAIN_AT,
    shaped_texts(),
    st.just("1999-12-31T23:59:59.999999Z"),
    st.just("2100-01-01T00:00:00Z"),
    st.integers(),
)
ANY_CENTS = st.one_of(
    st.integers(0, MAX_AMOUNT_CENTS),
    st.sampled_from([0, MAX_AMOUNT_CENTS, MAX_AMOUNT_CENTS + 1, -1, 2**64, 1.0, True, "5"]),
)


def _plain(cls: type[Record], draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": cls.TYPE, "v": cls.V}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = f.metadata["kind"]
        if kind is Kind.ID:
            doc[f.name] = draw(ASCII_ID.filter(lambda s: len(s) <= MAX_ID_CHARS))
        elif kind is Kind.CENTS:
            doc[f.name] = draw(st.integers(0, MAX_AMOUNT_CENTS))
        elif kind is Kind.TIME:
            doc[f.name] = draw(PLAIN_AT)
        else:
            doc[f.name] = draw(st.lists(ASCII_ID.filter(lambda s: len(s) <= 20), max_size=4))
    return doc


@st.composite
def plain_inputs(draw: st.DrawFn) -> bytes:
    return orjson.dumps(_plain(draw(st.sampled_from(INPUT_RECORDS)), draw))


@st.composite
def odd_inputs(draw: st.DrawFn) -> bytes:
    """A plain input with one field (or the version) swapped for an odd value,
    an extra field, or a field dropped."""
    cls = draw(st.sampled_from(INPUT_RECORDS))
    doc = _plain(cls, draw)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    change = draw(st.sampled_from(["id", "cents", "at", "v", "extra", "drop", "tags"]))
    name = draw(st.sampled_from(names))
    if change == "id":
        doc[name] = draw(ANY_ID)
    elif change == "cents":
        doc[name] = draw(ANY_CENTS)
    elif change == "at":
        doc[name] = draw(ANY_AT)
    elif change == "v":
        doc["v"] = draw(st.sampled_from([0, 2, 1.0, "1", None, True]))
    elif change == "extra":
        doc["note"] = draw(st.one_of(st.integers(), st.text(), st.lists(st.integers())))
    elif change == "drop":
        del doc[name]
    else:
        doc[name] = draw(st.one_of(st.lists(ANY_ID, max_size=3), st.just(["t"] * 65)))
    try:
        return orjson.dumps(doc)
    except TypeError:  # an integer beyond 64 bits (2**64, st.integers()): still JSON text
        return json.dumps(doc).encode()


def _python_read(raw: bytes) -> Record | None:
    try:
        return codec.decode_input_python(raw)
    except SchemaError:
        return None


def _native_read(raw: bytes) -> Record | None:
    reader = codec.native_input_reader()
    assert reader is not None
    return reader.read(raw)  # type: ignore[no-any-return]


@PROPS
@given(plain_inputs())
def test_reader_takes_every_plain_input(raw: bytes) -> None:
    record = _native_read(raw)
    assert record is not None, raw
    assert record == _python_read(raw)
    assert type(record) is type(_python_read(raw))
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.event_id = "x"  # type: ignore[misc]  # built without __init__, still frozen


@PROPS
@given(odd_inputs())
def test_reader_never_disagrees_on_odd_inputs(raw: bytes) -> None:
    record = _native_read(raw)
    if record is not None:
        assert record == _python_read(raw), raw
    python = _python_read(raw)
    assert (codec.decode_input(raw) if python is not None else None) == python


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"tick","v":1,"event_id":"t","at":"2026-01-01T00:00:00Z","at":"2026-01-02T00:00:00Z"}',
        b' {"type":"tick","v":1,"event_id":"t","at":"2026-01-01T00:00:00Z"}\n ',
        b'{"type":"order_paid","v":1,"event_id":"e","order_id":"o","user_id":"u",'
        b'"amount_cents":-0,"channel":"c","at":"2026-01-01T00:00:00Z"}',
        b'{"type":"order_paid","v":1,"event_id":"e","order_id":"o","user_id":"u",'
        b'"amount_cents":1000,"channel":"c","at":"2026-01-01T00:00:00Z","x":123456789012345678901234567890}',
        b'{"type":"tick","v":1,"event_id":"t","at":"2026-01-01T00:00:00Z","x":"\\ud800"}',
        b'{"type":"tick","v":1,"event_id":"\\u0074","at":"2026-01-01T00:00:00Z"}',
        b'{"type":"tick","v":1,"event_id":"t\\n","at":"2026-01-01T00:00:00Z"}',
        b'{"type":"tick","v":1,"event_id":"t","at":"2024-02-29T23:59:59.000001Z"}',
        b'{"type":"tick","v":1,"event_id":"t","at":"2023-02-29T00:00:00Z"}',
        b'{"type":"tick","v":1,"event_id":"t","at":"2026-01-01T00:00:00Z"} x',
        b'{"type":"reward_granted","v":1}',
        b"[1]",
        b"\xef\xbb\xbf{}",
    ],
)
def test_reader_edge_cases(raw: bytes) -> None:
    record = _native_read(raw)
    python = _python_read(raw)
    if record is not None:
        assert record == python
    try:
        assert codec.decode_input(raw) == python
    except SchemaError:
        assert python is None


def test_reader_agrees_on_the_fuzz_messages() -> None:
    rng = random.Random(5)
    near = [
        TaskClaim("c1", "u1", "tpl", 1_700_000_000_000_000, ("vip",)),
        OrderPaid("o1", "ord1", "u1", 1_000, "app", 1_700_000_000_000_001),
        Tick("t1", 1_700_000_000_000_002),
    ]
    taken = 0
    for message in hostile_messages(rng, near, 2_000):
        if message.value is None or len(message.value) > 64 * 1024:
            continue
        record = _native_read(message.value)
        if record is not None:
            taken += 1
            assert record == _python_read(message.value), message.what
    assert taken > 0  # wrong-topic and wrong-key messages are valid events


# ------------------------------------------------------------ the writer

ANY_TEXT = st.text(max_size=12)  # control characters, quotes, non-ASCII


def _value(kind: Kind, draw: st.DrawFn) -> Any:
    if kind in (Kind.ID, Kind.TEXT):
        return draw(ANY_TEXT)
    if kind in (Kind.OPT_ID, Kind.OPT_TEXT):
        return draw(st.one_of(st.none(), ANY_TEXT))
    if kind in (Kind.CENTS, Kind.COUNT):
        return draw(st.integers(-(2**63), 2**63 - 1))
    if kind is Kind.TIME:
        return draw(st.integers(YEAR_1, YEAR_10000 - 1))
    return tuple(draw(st.lists(ANY_TEXT, max_size=3)))


@st.composite
def records(draw: st.DrawFn) -> Record:
    cls = draw(st.sampled_from(list(RECORDS_BY_TYPE.values())))
    values = [_value(f.metadata["kind"], draw) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(*values)


@PROPS
@given(records())
def test_writer_is_the_reference(record: Record) -> None:
    write = codec.native_record_writers()[type(record)]
    assert write(record) == codec.encode_python(record)
    assert codec.encode(record) == codec.encode_python(record)


def test_writer_leaves_odd_values_to_python() -> None:
    write = codec.native_record_writers()[Tick]
    assert write(Tick("t", True)) is None  # orjson writes a bool as true
    assert write(Tick("t", 2**70)) is None
    assert write(Tick("\ud800", 0)) is None  # orjson refuses it, and so does encode
    with pytest.raises(TypeError):
        codec.encode(Tick("\ud800", 0))
    assert codec.encode(Tick("t", True)) == codec.encode_python(Tick("t", True))


def test_writer_escapes_every_ascii_character_as_orjson() -> None:
    text = "".join(chr(c) for c in range(0x80)) + "\u2028é😀"
    record = Tick(text, 0)
    assert codec.native_record_writers()[Tick](record) == orjson.dumps(
        {"type": "tick", "v": 1, "event_id": text, "at": "1970-01-01T00:00:00Z"}
    )


# ------------------------------------------------------- the user state

I64 = st.integers(-(2**63), 2**63 - 1)
SLOTS = st.builds(
    RewardSlot,
    st.integers(0, 9),
    st.sampled_from(["granted", "rejected", "revoked"]),
    ANY_TEXT,
    I64,
    st.none() | ANY_TEXT,
    st.none() | ANY_TEXT,
    I64,
    st.integers(0, 9),
)
INSTANCES = st.builds(
    TaskInstance,
    ANY_TEXT,
    ANY_TEXT,
    ANY_TEXT,
    I64,
    I64,
    st.sampled_from(["in_progress", "completed", "expired"]),
    st.integers(0, 99),
    st.lists(st.tuples(ANY_TEXT, I64), max_size=3).map(tuple),
    st.lists(SLOTS, max_size=3).map(tuple),
)
ORDERS = st.builds(OrderRecord, I64, I64, st.lists(ANY_TEXT, max_size=2).map(tuple), I64, ANY_TEXT)
STATES = st.builds(
    UserState,
    ANY_TEXT,
    st.lists(INSTANCES, max_size=3).map(tuple),
    st.dictionaries(ANY_TEXT, ORDERS, max_size=3).map(MappingProxyType),
    st.dictionaries(
        ANY_TEXT, st.lists(st.tuples(ANY_TEXT, I64, I64), max_size=2).map(tuple), max_size=2
    ).map(MappingProxyType),
    st.none() | I64,
    st.none() | st.tuples(I64, ANY_TEXT),
)


@PROPS
@given(STATES)
def test_state_encoder_is_the_reference(state: UserState) -> None:
    assert kernel is not None
    assert kernel.encode_user_state(STATE_FORMAT, state) == encode_user_state_python(state)
    assert decode_user_state(encode_user_state(state)) == state


def test_state_encoder_leaves_odd_values_to_python() -> None:
    assert kernel is not None
    state = UserState("u", (), MappingProxyType({}), MappingProxyType({}), 2**64, None)
    assert kernel.encode_user_state(STATE_FORMAT, state) is None
    with pytest.raises(TypeError):  # orjson: an int beyond 64 bits
        encode_user_state(state)
    odd = UserState("u", (), MappingProxyType({1: None}), MappingProxyType({}), None, None)
    assert kernel.encode_user_state(STATE_FORMAT, odd) is None  # type: ignore[dict-item]


class _Orders(Mapping[str, OrderRecord]):
    """A mapping that is neither a dict nor a MappingProxyType of one."""

    def __init__(self, items: dict[str, OrderRecord]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> OrderRecord:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class _SlotsOnly:
    """An order-like record without a compiled constructor: read by attribute."""

    amount_cents: int
    refunded_cents: int
    refund_ids: tuple[str, ...]
    at: int
    channel: str


def test_state_encoder_reads_any_mapping_and_record_like_the_reference() -> None:
    """The encoder reads fast_init records from their slots and dicts (or
    proxies of them) without items(); anything else it reads the slow way,
    to the same bytes."""
    assert kernel is not None
    order = OrderRecord(1200, 0, ("r1",), 5, "app")
    plain = {"o1": order, "o2": OrderRecord(900, 900, (), 6, "web")}
    for orders in (plain, MappingProxyType(plain), _Orders(plain)):
        state = UserState("u", (), orders, MappingProxyType({}), 7, ("c", 1))  # type: ignore[arg-type]
        assert kernel.encode_user_state(STATE_FORMAT, state) == encode_user_state_python(state)
    alike = UserState(
        "u",
        (),
        {"o1": _SlotsOnly(1, 0, (), 2, "x")},
        {},
        None,
        None,  # type: ignore[dict-item]
    )
    assert kernel.encode_user_state(STATE_FORMAT, alike) == encode_user_state_python(alike)
    with pytest.raises(AttributeError, match="at"):
        kernel.encode_user_state(
            STATE_FORMAT,
            UserState("u", (), {"o1": object()}, {}, None, None),  # type: ignore[dict-item]
        )


def _state_reader() -> Any:
    reader = state_codec._native_state_reader()
    assert reader is not None
    return reader


@PROPS
@given(STATES)
def test_state_reader_is_the_reference(state: UserState) -> None:
    raw = encode_user_state_python(state)
    native = _state_reader().read(raw)
    assert native is not None
    python = state_codec.decode_user_state_python(raw)
    assert native == python == state
    assert list(native.orders) == list(python.orders)  # the order of the keys, too
    assert encode_user_state_python(native) == raw
    assert type(native.orders) is type(python.orders)
    with pytest.raises(dataclasses.FrozenInstanceError):
        native.user_id = "x"  # built without __init__, still frozen


@pytest.mark.parametrize(
    "raw",
    [
        b'[1,"u",[],{},{},null,null]',
        b'[1,"u",[],{},{},1.5,null]',  # a float: left to Python
        b'[1,"u",[],{},{},true,null]',
        b'[1.0,"u",[],{},{},null,null]',
        b'[2,"u",[],{},{},null,null]',
        b'[1,"u",[],{},{},null,[5,"c",7]]',
        b'[1,"u",[],{},{},null,["a","b"]]',
        b'[1,"u",[],{"o":[1,0,[],5,"app"],"o":[2,0,[],5,"app"]},{},null,null]',
        b'[1,"u",[],{"o":[1,0,[],5]},{},null,null]',
        b'[1,"u",[["t","tpl","c",1,2,"in_progress",1,[["o",0]],[]]],{},{},2,null]',
        b'[1,"u",[["t","tpl","c",1,2,"in_progress",1,[["o",0,9]],[]]],{},{},2,null]',
        b'[1,"u",[],{},{"o":[["r",5,6]]},null,null]',
        b'[1,"u",[],{},{"o":[["r",5]]},null,null]',
        b'[1,"u",[],[],{},null,null]',
        b'[1,"u",[],{},{},null]',
        b"[]",
        b"{}",
    ],
)
def test_state_reader_edge_cases(raw: bytes) -> None:
    native = _state_reader().read(raw)
    try:
        python = state_codec.decode_user_state_python(raw)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError):
        assert native is None
        return
    if native is not None:
        assert native == python


def test_readers_build_only_classes_with_a_compiled_constructor() -> None:
    """The readers build records through `app.frozen.fast_init`'s compiled
    constructor, field by field name; a class without one, or a field list
    that leaves a field unset, is refused when the reader is made."""
    assert kernel is not None

    @dataclasses.dataclass(frozen=True, slots=True)
    class Plain:
        event_id: str

    with pytest.raises(ValueError, match="no compiled constructor"):
        kernel.InputReader([("plain", 1, Plain, [("event_id", "id")])], 10, 10, 0, 10, 1)

    @fast_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Two:
        event_id: str
        user_id: str

    with pytest.raises(ValueError, match="every field"):
        kernel.InputReader([("two", 1, Two, [("event_id", "id")])], 10, 10, 0, 10, 1)
    reader = kernel.InputReader(
        [("two", 1, Two, [("user_id", "id"), ("event_id", "id")])], 10, 10, 0, 10, 1
    )
    assert reader.read(b'{"type":"two","v":1,"event_id":"e","user_id":"u"}') == Two("e", "u")


# ---------------------------------------------------------------- redo body

_KEYS = st.binary(max_size=40)
_OUTPUTS = st.builds(
    Output,
    st.sampled_from(["task_events", "rewards", "dead_letters", "budget_requests", "é-role"]),
    st.none() | _KEYS,
    st.binary(max_size=300),
    st.none() | st.integers(min_value=0, max_value=2**31 - 1),
)
_REDOS = st.builds(
    Redo,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.lists(st.tuples(_KEYS, st.none() | st.binary(max_size=600)), max_size=20).map(tuple),
    st.lists(_OUTPUTS, max_size=20).map(tuple),
)


@PROPS
@given(_REDOS)
def test_redo_body_is_the_reference(redo: Redo) -> None:
    assert kernel is not None
    native = kernel.redo_body(redo.seq, redo.writes, redo.outputs)
    assert native is not None  # plain values: never declined
    assert native == _redo_body_python(redo)
    assert decode_redo(encode_redo(redo)) == redo


def test_redo_body_leaves_what_struct_refuses_to_python() -> None:
    """Declined (None), so the reference runs and raises as it always has."""
    assert kernel is not None
    fine = Output("rewards", b"k", b"v", None)
    declined = [
        (2**63, (), ()),  # seq beyond `q`
        (True, (), ()),  # a bool where an integer belongs
        (1, ((b"k", "text"),), ()),  # a str value
        (1, ((b"k",),), ()),  # not a pair
        (1, [(b"k", b"v")], ()),  # a list of writes
        (1, ((bytearray(b"k"), b"v"),), ()),  # not exact bytes
        (1, (), (Output("rewards", b"k", b"v", 2**31),)),  # partition beyond `i`
        (1, (), (Output("x" * 70_000, b"k", b"v", None),)),  # role beyond `H`
        (1, (), (Output("\ud800", b"k", b"v", None),)),  # a role UTF-8 cannot write
        (1, (), (Output("rewards", b"k", None, None),)),  # type: ignore[arg-type]
        (1, (), (fine, "not an output")),
    ]
    for seq, writes, outputs in declined:
        assert kernel.redo_body(seq, writes, outputs) is None, (seq, writes, outputs)
    # What struct packs, the kernel writes too, even values the worker never
    # makes (a negative partition reads back as "by key": the format's -1).
    odd = Redo(-5, ((b"", b""),), (Output("", None, b"", -7), fine))
    assert kernel.redo_body(odd.seq, odd.writes, odd.outputs) == _redo_body_python(odd)
