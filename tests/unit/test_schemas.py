"""Wire contract: strict decoding, canonical encoding, JSON Schema files, upcasting."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import decode, decode_input, encode, from_wire, to_wire
from schemas.errors import SchemaError
from schemas.fields import KINDS
from schemas.jsonschema import JSON_DIR, render, schema_for
from schemas.records import ALL_RECORDS, OrderPaid, TaskClaim, Tick
from schemas.timestamps import _format, _parse_general, format_utc, parse_utc, to_datetime
from taskstream.catalog_files import load_catalog
from taskstream.replay import replay_lines

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
ORDER = {
    "type": "order_paid",
    "v": 1,
    "event_id": "e1",
    "order_id": "o1",
    "user_id": "u1",
    "amount_cents": 1999,
    "channel": "next_day_pickup",
    "at": "2024-03-01T10:00:00Z",
}


def with_(**changes: Any) -> bytes:
    doc = dict(ORDER)
    for name, value in changes.items():
        if value is ...:
            del doc[name]
        else:
            doc[name] = value
    return orjson.dumps(doc)


def test_order_paid_decodes_into_its_record() -> None:
    event = decode_input(orjson.dumps(ORDER))
    assert event == OrderPaid("e1", "o1", "u1", 1999, "next_day_pickup", parse_utc(ORDER["at"]))


def test_encode_is_canonical_and_round_trips() -> None:
    raw = orjson.dumps({**ORDER, "at": "2024-03-01T10:00:00.250+00:00", "extra": 1})
    event = decode_input(raw)
    assert encode(event) == with_(at="2024-03-01T10:00:00.25Z")
    assert decode(encode(event)) == event


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "expected a JSON object, got array"),
        (with_(type=...), "type: missing field"),
        (with_(type="order_shipped"), "type: unknown event type 'order_shipped'"),
        (with_(v=...), "order_paid.v: missing field"),
        (with_(v="1"), "order_paid.v: expected an integer, got string"),
        (with_(v=7), "order_paid.v: unsupported v 7"),
        (with_(v=0), "order_paid.v: unsupported v 0 (no upcaster from v0)"),
        (with_(user_id=...), "order_paid.user_id: missing field"),
        (with_(user_id=""), "order_paid.user_id: empty string"),
        (with_(user_id=42), "order_paid.user_id: expected a non-empty string, got integer"),
        (
            with_(amount_cents=True),
            "order_paid.amount_cents: boolean where an integer amount is expected",
        ),
        (
            with_(amount_cents=12.5),
            "order_paid.amount_cents: expected an integer amount, got number",
        ),
        (with_(amount_cents=-1), "order_paid.amount_cents: negative amount -1"),
        (with_(at="2024-03-01 10:00"), "order_paid.at: not an RFC 3339 timestamp"),
        (with_(at="2024-03-01T10:00:00+08:00"), "order_paid.at: timestamp not in UTC"),
        (with_(at="2024-02-30T10:00:00Z"), "order_paid.at: impossible date"),
        (with_(at="2024-03-01T24:00:00Z"), "order_paid.at: impossible time of day"),
        (with_(at=1709287200), "order_paid.at: expected an RFC 3339 UTC timestamp string, got int"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode_input(raw)
    assert message in str(info.value)


def test_user_tags_must_be_a_list_of_strings() -> None:
    claim = {
        "type": "task_claim",
        "v": 1,
        "event_id": "e",
        "user_id": "u",
        "template_id": "t",
        "at": "2024-03-01T00:00:00Z",
    }
    assert decode_input(orjson.dumps({**claim, "user_tags": ["a"]})) == TaskClaim(
        "e", "u", "t", parse_utc(claim["at"]), ("a",)
    )
    with pytest.raises(
        SchemaError, match=r"task_claim.user_tags: item 1: expected a string, got integer"
    ):
        decode_input(orjson.dumps({**claim, "user_tags": ["a", 1]}))


def test_output_event_is_not_accepted_as_input() -> None:
    raw = b'{"type":"task_expired","v":1}'
    with pytest.raises(SchemaError, match="is an output event"):
        decode_input(raw)


def test_upcaster_lifts_an_old_version_before_validation() -> None:
    # A fake history: v0 ticks called their time "time" instead of "at".
    def tick_v0_to_v1(doc: dict[str, Any]) -> dict[str, Any]:
        doc["at"] = doc.pop("time")
        return doc

    upcasters = {("tick", 0): tick_v0_to_v1}
    old = b'{"type":"tick","v":0,"event_id":"t1","time":"2024-03-01T00:00:00Z"}'
    assert decode_input(old, upcasters) == Tick("t1", parse_utc("2024-03-01T00:00:00Z"))
    with pytest.raises(SchemaError, match="unsupported v 0"):
        decode_input(old)  # the real registry has no such upcaster
    bad = b'{"type":"tick","v":0,"event_id":"t1","time":"yesterday"}'
    with pytest.raises(SchemaError, match=r"tick\.at: not an RFC 3339"):
        decode_input(bad, upcasters)  # the upcast event is validated like any other


def test_timestamps_round_trip_through_the_canonical_form() -> None:
    for text in ("1970-01-01T00:00:00Z", "2024-02-29T23:59:59.999999Z", "1999-12-31T00:00:00.1Z"):
        assert format_utc(parse_utc(text)) == text


# ------------------------------------------------------------ JSON Schema


def test_checked_in_json_schema_files_match_the_records() -> None:
    on_disk = {p.stem for p in JSON_DIR.glob("*.json")}
    assert on_disk == {cls.TYPE for cls in ALL_RECORDS}
    for cls in ALL_RECORDS:
        path = JSON_DIR / f"{cls.TYPE}.json"
        assert path.read_bytes() == render(cls), (
            f"{path} is stale: run python -m schemas.jsonschema"
        )


def validate(instance: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """The JSON Schema subset our generated schemas use (checked by the next test)."""
    errors: list[str] = []
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "null": lambda v: v is None,
        }
        if not any(checks[n](instance) for n in names):
            return [f"{path}: not of type {types}"]
    if isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            errors.append(f"{path}: too short")
        if len(instance) > schema.get("maxLength", len(instance)):
            errors.append(f"{path}: too long")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            errors.append(f"{path}: does not match pattern")
    if isinstance(instance, int) and "minimum" in schema and instance < schema["minimum"]:
        errors.append(f"{path}: below minimum")
    if isinstance(instance, int) and "maximum" in schema and instance > schema["maximum"]:
        errors.append(f"{path}: above maximum")
    if isinstance(instance, list) and len(instance) > schema.get("maxItems", len(instance)):
        errors.append(f"{path}: too many items")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors += validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(instance, dict):
        errors += [
            f"{path}.{name}: missing" for name in schema.get("required", []) if name not in instance
        ]
        for name, sub in schema.get("properties", {}).items():
            if name in instance:
                errors += validate(instance[name], sub, f"{path}.{name}")
    return errors


KNOWN_KEYWORDS = {
    "$schema", "$id", "title", "description", "type", "required", "properties",
    "additionalProperties", "const", "minLength", "minimum", "pattern", "items",
    "maxLength", "maximum", "maxItems",
}  # fmt: skip


def keywords(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key == "properties":
            for sub in value.values():
                found |= keywords(sub)
        elif key == "items":
            found |= keywords(value)
    return found


def test_the_mini_validator_knows_every_keyword_the_schemas_use() -> None:
    for cls in ALL_RECORDS:
        assert keywords(schema_for(cls)) <= KNOWN_KEYWORDS


def sample_outputs() -> list[bytes]:
    catalog = load_catalog(SAMPLES / "templates.json", SAMPLES / "pools.json")
    lines: list[bytes] = []
    replay_lines((SAMPLES / "events.jsonl").open("rb"), catalog, lines.append)
    return lines


def test_sample_inputs_and_outputs_validate_against_their_json_schema() -> None:
    lines = [line for line in (SAMPLES / "events.jsonl").read_bytes().splitlines() if line.strip()]
    inputs = []
    for line in lines:
        try:
            decode_input(line)
        except SchemaError:
            continue  # the sample's deliberately broken lines
        inputs.append(orjson.loads(line))
    assert 0 < len(inputs) < len(lines)
    outputs = [orjson.loads(line) for line in sample_outputs()]
    assert {d["type"] for d in outputs} >= {
        "task_claimed", "claim_rejected", "task_advanced", "task_completed", "task_expired",
        "task_rolled_back", "reward_granted", "reward_revoked", "reward_rejected", "dead_letter",
    }  # fmt: skip
    for doc in inputs + outputs:
        schema = orjson.loads((JSON_DIR / f"{doc['type']}.json").read_bytes())
        assert validate(doc, schema) == [], doc


def test_json_schema_and_decoder_agree_on_bad_values() -> None:
    schema = orjson.loads((JSON_DIR / "order_paid.json").read_bytes())
    for bad in ({"amount_cents": -1}, {"at": "2024-03-01T10:00:00+08:00"}, {"user_id": ""}):
        doc = {**ORDER, **bad}
        assert validate(doc, schema) != []
        with pytest.raises(SchemaError):
            from_wire(doc)


def test_every_record_round_trips_through_to_wire() -> None:
    for line in sample_outputs():
        record = decode(line)
        assert orjson.dumps(to_wire(record)) == line.rstrip(b"\n")


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST = parse_utc("0001-01-02T00:00:00Z")
LATEST = parse_utc("9999-12-30T23:59:59.999999Z")


@given(st.integers(EARLIEST, LATEST))
def test_timestamps_round_trip_and_both_parsers_agree(micros: int) -> None:
    text = format_utc(micros)
    assert parse_utc(text) == micros
    assert _parse_general(text) == micros
    assert to_datetime(micros) == EPOCH + timedelta(microseconds=micros)


@given(st.text(alphabet="0123456789-:TZz+. ", min_size=18, max_size=28))
def test_the_fast_timestamp_path_accepts_exactly_what_the_careful_parser_accepts(
    text: str,
) -> None:
    def outcome(parse: Callable[[object], int]) -> object:
        try:
            return parse(text)
        except SchemaError:
            return "refused"

    assert outcome(parse_utc) == outcome(_parse_general)


@given(
    st.one_of(
        st.text(alphabet="0123456789-:TZz+. ", min_size=18, max_size=28),
        st.integers(EARLIEST, LATEST).map(lambda m: _format(m)[:-1] + "0" * (m % 3) + "Z"),
    )
)
def test_a_parsed_text_is_reused_as_formatted_text_only_when_it_is_canonical(text: str) -> None:
    """parse_utc lends its input text to format_utc's memo: only ever the
    text format_utc would have written itself."""
    try:
        micros = parse_utc(text)
    except SchemaError:
        return
    assert format_utc(micros) == _format(micros)


def test_the_generated_wire_writers_write_what_the_field_specs_say() -> None:
    """Each record type's unrolled `to_wire` against a plain loop over its fields."""

    def by_the_specs(record: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": record.TYPE, "v": record.V}
        for f in dataclasses.fields(record):
            convert = KINDS[f.metadata["kind"]].to_wire
            value = getattr(record, f.name)
            doc[f.name] = value if convert is None else convert(value)
        return doc

    lines = sample_outputs() + (SAMPLES / "events.jsonl").read_bytes().splitlines()
    seen = set()
    for line in lines:
        try:
            record = decode(line)
        except SchemaError:
            continue
        seen.add(type(record))
        assert list(to_wire(record).items()) == list(by_the_specs(record).items())
    assert len(seen) >= 12
