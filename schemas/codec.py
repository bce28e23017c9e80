"""Bytes <-> records, with strict validation and version upcasting.

`decode` accepts any record type (inputs, outputs, dead letters) and raises
`SchemaError` naming the field and the problem; `decode_input` additionally
refuses anything that is not an input event. Extra fields are ignored (a
tolerant reader lets producers add fields before consumers know them);
known fields are checked strictly.

Upcasting: an event written with an older `v` is lifted one version at a
time by registered upcasters (plain dict -> dict functions) *before*
validation, so the validators only ever know the current version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, cast

import orjson

from schemas import limits
from schemas.errors import SchemaError
from schemas.fields import INPUT_KINDS, KINDS, Kind, KindSpec, _type_name
from schemas.native import kernel
from schemas.records import INPUT_RECORDS, RECORDS_BY_TYPE, InputEvent, Record
from schemas.timestamps import parse_utc

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, from_v) -> function producing the same event at v = from_v + 1.
UpcasterRegistry = Mapping[tuple[str, int], Upcaster]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register_upcaster(event_type: str, from_v: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator: register `fn` to lift `event_type` from `from_v` to `from_v + 1`."""

    def register(fn: Upcaster) -> Upcaster:
        key = (event_type, from_v)
        if key in UPCASTERS:
            raise ValueError(f"an upcaster for {event_type} v{from_v} is already registered")
        UPCASTERS[key] = fn
        return fn

    return register


FieldCheck = tuple[str, Callable[[object], Any], object]  # name, check, fast-path tag
_STR_ID = object()
_NONNEG_INT = object()
_INPUT_ID = object()  # an input's id: also within limits.MAX_ID_CHARS, printable
_INPUT_CENTS = object()  # an input's amount: 0 ..= limits.MAX_AMOUNT_CENTS
_FAST = {Kind.ID: _STR_ID, Kind.CENTS: _NONNEG_INT, Kind.COUNT: _NONNEG_INT}
_INPUT_TIME = object()  # an input's event time: within limits.MIN/MAX_EVENT_TIME
_INPUT_FAST = {Kind.ID: _INPUT_ID, Kind.CENTS: _INPUT_CENTS, Kind.TIME: _INPUT_TIME}
_MAX_ID = limits.MAX_ID_CHARS
_MAX_BYTES = limits.MAX_MESSAGE_BYTES
_MAX_CENTS = limits.MAX_AMOUNT_CENTS
_MIN_AT, _MAX_AT = limits.MIN_EVENT_TIME, limits.MAX_EVENT_TIME
FieldOut = tuple[str, Callable[[Any], Any] | None]


def _kind_of(f: dataclasses.Field[Any]) -> Kind:
    return cast(Kind, f.metadata["kind"])


def _checks(
    cls: type[Record], kinds: Mapping[Kind, KindSpec], fast: Mapping[Kind, object]
) -> tuple[FieldCheck, ...]:
    fields = dataclasses.fields(cast(Any, cls))
    return tuple((f.name, kinds[_kind_of(f)].check, fast.get(_kind_of(f))) for f in fields)


def _outs(cls: type[Record]) -> tuple[FieldOut, ...]:
    return tuple((f.name, KINDS[_kind_of(f)].to_wire) for f in dataclasses.fields(cast(Any, cls)))


def _compile(name: str, source: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    """One function from generated source (as dataclasses builds __init__):
    the record's fields unrolled, no per-field loop, lookup or tag test."""
    exec(compile(source, f"<schemas.codec {name}>", "exec"), namespace)
    return cast(Callable[..., Any], namespace[name])


def _wire_writer(
    cls: type[Record], outs: tuple[FieldOut, ...]
) -> Callable[[Record], dict[str, Any]]:
    """`to_wire` for one record type: a dict display of its fields in order."""
    namespace: dict[str, Any] = {}
    items = [f'"type": {cls.TYPE!r}', f'"v": {cls.V!r}']
    for n, (name, convert) in enumerate(outs):
        if convert is None:
            items.append(f"{name!r}: record.{name}")
        else:
            namespace[f"convert_{n}"] = convert
            items.append(f"{name!r}: convert_{n}(record.{name})")
    source = f"def to_wire(record):\n    return {{{', '.join(items)}}}\n"
    return cast(Callable[[Record], dict[str, Any]], _compile("to_wire", source, namespace))


# Computed once at import: the hot path only runs these.
_CHECKS: dict[str, tuple[FieldCheck, ...]] = {}
_OUTS: dict[type[Record], tuple[FieldOut, ...]] = {}
_WRITERS: dict[type[Record], Callable[[Record], dict[str, Any]]] = {}
for _cls in RECORDS_BY_TYPE.values():
    _CHECKS[_cls.TYPE], _OUTS[_cls] = _checks(_cls, KINDS, _FAST), _outs(_cls)
    _WRITERS[_cls] = _wire_writer(_cls, _OUTS[_cls])
# `decode_input` (what upstream systems send) also holds the input events to
# the explicit limits (docs/limits.md); `decode` reads any record as the
# contract's kinds describe it (outputs, budget messages, or an input on the
# wrong topic, which its reader refuses for that reason).
_INPUT_CHECKS = {cls.TYPE: _checks(cls, INPUT_KINDS, _INPUT_FAST) for cls in INPUT_RECORDS}
_INPUT_TYPES = frozenset(cls.TYPE for cls in INPUT_RECORDS)
_MISSING = object()

_FAST_TESTS = {  # a fast-path tag -> the test its value must pass, inlined
    _INPUT_ID: "type({v}) is str and 0 < len({v}) <= MAX_ID and {v}.isprintable()",
    _STR_ID: "type({v}) is str and {v}",
    _INPUT_CENTS: "type({v}) is int and 0 <= {v} <= MAX_CENTS",
    _NONNEG_INT: "type({v}) is int and {v} >= 0",
}


def _fast_reader(
    cls: type[Record], checks: tuple[FieldCheck, ...]
) -> Callable[[dict[str, Any]], Any]:
    """An input type's reader for the common case, its checks unrolled: the
    current version with every field valid gives the record; anything else
    gives None, and `_from_wire` (the one place that words errors and
    upcasts) reads the message again."""
    namespace: dict[str, Any] = {
        "cls": cls,
        "parse_utc": parse_utc,
        "SchemaError": SchemaError,
        "MISSING": _MISSING,
        "MAX_ID": _MAX_ID,
        "MAX_CENTS": _MAX_CENTS,
        "MIN_AT": _MIN_AT,
        "MAX_AT": _MAX_AT,
    }
    body = [
        "def read(doc):",
        "    get = doc.get",
        '    version = get("v")',
        f"    if type(version) is not int or version != {cls.V!r}:",
        "        return None",
    ]
    for n, (name, check, fast) in enumerate(checks):
        v = f"v{n}"
        body.append(f"    {v} = get({name!r}, MISSING)")
        if fast in _FAST_TESTS:
            body += [f"    if not ({_FAST_TESTS[fast].format(v=v)}):", "        return None"]
        elif fast is _INPUT_TIME:
            body += [
                f"    if type({v}) is not str:",
                "        return None",
                "    try:",
                f"        {v} = parse_utc({v})",
                "    except SchemaError:",
                "        return None",
                f"    if not (MIN_AT <= {v} < MAX_AT):",
                "        return None",
            ]
        else:
            namespace[f"check_{n}"] = check
            body += [
                f"    if {v} is MISSING:",
                "        return None",
                "    try:",
                f"        {v} = check_{n}({v})",
                "    except SchemaError:",
                "        return None",
            ]
    body.append(f"    return cls({', '.join(f'v{n}' for n in range(len(checks)))})")
    return _compile("read", "\n".join(body) + "\n", namespace)


_INPUT_READERS = {cls.TYPE: _fast_reader(cls, _INPUT_CHECKS[cls.TYPE]) for cls in INPUT_RECORDS}

# The compiled kernel's counterparts (schemas/native.py): the input reader
# reads the plain cases of every input type whose fields it knows (printable
# ASCII ids, canonical timestamps) and gives None for the rest; a record
# writer per type writes what `encode` below would, or None on a value of an
# unexpected type. Both leave every error and every odd case to the code below.
_NATIVE_INPUT_KINDS = {Kind.ID: "id", Kind.CENTS: "cents", Kind.TIME: "time", Kind.TAGS: "tags"}
_NATIVE_OUTPUT_KINDS = {
    Kind.ID: "text",
    Kind.TEXT: "text",
    Kind.OPT_ID: "optional_text",
    Kind.OPT_TEXT: "optional_text",
    Kind.CENTS: "integer",
    Kind.COUNT: "integer",
    Kind.TIME: "time",
    Kind.TAGS: "tags",
}


def native_input_reader() -> Any:
    """The kernel's reader of the input types, or None without the kernel."""
    if kernel is None:
        return None
    types = []
    for cls in INPUT_RECORDS:
        kinds = [(f.name, _kind_of(f)) for f in dataclasses.fields(cast(Any, cls))]
        if all(kind in _NATIVE_INPUT_KINDS for _, kind in kinds):
            fields = [(name, _NATIVE_INPUT_KINDS[kind]) for name, kind in kinds]
            types.append((cls.TYPE, cls.V, cls, fields))
    return kernel.InputReader(types, _MAX_ID, _MAX_CENTS, _MIN_AT, _MAX_AT, limits.MAX_TAGS)


def native_record_writers() -> dict[type[Record], Callable[[Record], bytes | None]]:
    """The kernel's writer of each record type (empty without the kernel)."""
    if kernel is None:
        return {}
    writers = {}
    for cls in RECORDS_BY_TYPE.values():
        fields = [
            (f.name, _NATIVE_OUTPUT_KINDS[_kind_of(f)]) for f in dataclasses.fields(cast(Any, cls))
        ]
        writers[cls] = kernel.RecordWriter(cls.TYPE, cls.V, fields).write
    return writers


_NATIVE_READER = native_input_reader()
_NATIVE_WRITERS = native_record_writers()


def parse_json_object(raw: bytes | str) -> dict[str, Any]:
    """Parse one JSON message that must be an object."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"malformed JSON: {exc}") from None
    if type(doc) is not dict:
        raise SchemaError(f"expected a JSON object, got {_type_name(doc)}")
    return doc


def decode(raw: bytes | str, upcasters: UpcasterRegistry = UPCASTERS) -> Record:
    """Decode and validate one message of any record type."""
    return from_wire(parse_json_object(raw), upcasters)


def decode_input(raw: bytes | str, upcasters: UpcasterRegistry = UPCASTERS) -> InputEvent:
    """Decode one input event (task_claim, order_paid, order_refunded, tick),
    held to the limits of `schemas.limits`: a message over the size limit is
    refused before it is parsed."""
    if type(raw) is not bytes or len(raw) > _MAX_BYTES:  # the size check, inlined for bytes
        limits.check_message_size(raw)
    elif _NATIVE_READER is not None:
        native = _NATIVE_READER.read(raw)
        if native is not None:
            return cast(InputEvent, native)
    return _decode_input_json(raw, upcasters)


def decode_input_python(raw: bytes | str, upcasters: UpcasterRegistry = UPCASTERS) -> InputEvent:
    """The reference `decode_input`, without the kernel's reader (tests compare the two)."""
    limits.check_message_size(raw)
    return _decode_input_json(raw, upcasters)


def _decode_input_json(raw: bytes | str, upcasters: UpcasterRegistry) -> InputEvent:
    doc = parse_json_object(raw)
    event_type = doc.get("type")
    # `type(...) is str` first: a list or an object is unhashable (found by the fuzz).
    if type(event_type) is str:
        read = _INPUT_READERS.get(event_type)
        if read is not None:
            record = read(doc)
            if record is not None:
                return cast(InputEvent, record)
        elif event_type in RECORDS_BY_TYPE:
            raise SchemaError(f"type: {event_type!r} is an output event, not an input")
    return cast(InputEvent, _from_wire(doc, upcasters, _INPUT_CHECKS))


def from_wire(doc: dict[str, Any], upcasters: UpcasterRegistry = UPCASTERS) -> Record:
    """Validate an already-parsed JSON object into its record."""
    return _from_wire(doc, upcasters, _CHECKS)


def _from_wire(
    doc: dict[str, Any], upcasters: UpcasterRegistry, checks: Mapping[str, tuple[FieldCheck, ...]]
) -> Record:
    event_type = doc.get("type", _MISSING)
    if event_type is _MISSING:
        raise SchemaError("type: missing field")
    if type(event_type) is not str:
        raise SchemaError(f"type: expected a string, got {_type_name(event_type)}")
    cls = RECORDS_BY_TYPE.get(event_type)
    if cls is None:
        raise SchemaError(f"type: unknown event type {event_type!r}")
    version = doc.get("v", _MISSING)
    if version is _MISSING:
        raise SchemaError(f"{event_type}.v: missing field")
    if type(version) is not int:
        raise SchemaError(f"{event_type}.v: expected an integer, got {_type_name(version)}")
    if version != cls.V:
        doc = _upcast(doc, event_type, version, cls.V, upcasters)
    values: list[Any] = []
    for name, check, fast in checks[event_type]:
        value = doc.get(name, _MISSING)
        # Inline the commonest checks (non-empty string ids, non-negative ints):
        # decoding is most of the cost of a replay.
        if fast is _INPUT_ID:
            if type(value) is str and 0 < len(value) <= _MAX_ID and value.isprintable():
                values.append(value)
                continue
        elif fast is _INPUT_TIME:
            if type(value) is str:
                try:
                    micros = parse_utc(value)
                except SchemaError as exc:
                    raise SchemaError(f"{event_type}.{name}: {exc}") from None
                if _MIN_AT <= micros < _MAX_AT:
                    values.append(micros)
                    continue
        elif fast is _STR_ID:
            if type(value) is str and value:
                values.append(value)
                continue
        elif fast is _INPUT_CENTS:
            if type(value) is int and 0 <= value <= _MAX_CENTS:
                values.append(value)
                continue
        elif fast is _NONNEG_INT and type(value) is int and value >= 0:
            values.append(value)
            continue
        if value is _MISSING:
            raise SchemaError(f"{event_type}.{name}: missing field")
        try:
            values.append(check(value))
        except SchemaError as exc:
            raise SchemaError(f"{event_type}.{name}: {exc}") from None
    return cls(*values)


def _upcast(
    doc: dict[str, Any], event_type: str, version: int, current: int, upcasters: UpcasterRegistry
) -> dict[str, Any]:
    if version > current:
        raise SchemaError(
            f"{event_type}.v: unsupported v {version} (this build reads up to v{current})"
        )
    while version < current:
        step = upcasters.get((event_type, version))
        if step is None:
            raise SchemaError(
                f"{event_type}.v: unsupported v {version} (no upcaster from v{version})"
            )
        doc = step(dict(doc))
        version += 1
        doc["v"] = version
    return doc


def to_wire(record: Record) -> dict[str, Any]:
    """The JSON object of a record: `type` and `v` first, then its fields in order."""
    return _WRITERS[type(record)](record)


def encode(record: Record) -> bytes:
    """One record as compact JSON bytes (no newline), identical on every run."""
    write = _NATIVE_WRITERS.get(type(record))
    if write is not None:
        raw = write(record)
        if raw is not None:
            return raw
    return encode_python(record)


def encode_python(record: Record) -> bytes:
    """The reference `encode` (each kernel writer must give the same bytes)."""
    return orjson.dumps(_WRITERS[type(record)](record))


# ------------------------------------------------------------- upcasters


@register_upcaster("refill_requested", 1)
def _refill_requested_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """v2 added the worker's clock over the payments; a v1 request had none."""
    doc["wall_span_us"] = 0
    return doc
