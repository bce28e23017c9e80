"""Field kinds of the wire contract: how each is checked, and its JSON Schema.

A record declares each field's kind in its dataclass metadata; decoding,
encoding and the checked-in JSON Schema files are all derived from those
declarations, so they cannot drift apart (a unit test regenerates the files
and compares).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from schemas import limits
from schemas.errors import SchemaError
from schemas.timestamps import format_utc, parse_utc

RFC3339_UTC_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]00:00)$"


class Kind(Enum):
    ID = "id"  # non-empty string
    TEXT = "text"  # any string
    OPT_ID = "opt_id"  # non-empty string or null
    OPT_TEXT = "opt_text"  # string or null
    CENTS = "cents"  # integer >= 0 (money is integer cents)
    COUNT = "count"  # integer >= 0
    TIME = "time"  # RFC 3339 UTC string on the wire, epoch microseconds inside
    TAGS = "tags"  # list of strings


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _check_id(value: object) -> str:
    if type(value) is not str:
        raise SchemaError(f"expected a non-empty string, got {_type_name(value)}")
    if not value:
        raise SchemaError("empty string")
    return value


def _check_text(value: object) -> str:
    if type(value) is not str:
        raise SchemaError(f"expected a string, got {_type_name(value)}")
    return value


def _check_opt_id(value: object) -> str | None:
    return None if value is None else _check_id(value)


def _check_opt_text(value: object) -> str | None:
    return None if value is None else _check_text(value)


def _check_nonnegative(value: object, what: str) -> int:
    # `type(...) is int` refuses bool (True is an int in Python, never in money).
    if type(value) is not int:
        if isinstance(value, bool):
            raise SchemaError(f"boolean where an integer {what} is expected")
        raise SchemaError(f"expected an integer {what}, got {_type_name(value)}")
    if value < 0:
        raise SchemaError(f"negative {what} {value}")
    return value


def _check_cents(value: object) -> int:
    return _check_nonnegative(value, "amount")


def _check_count(value: object) -> int:
    return _check_nonnegative(value, "count")


def _check_tags(value: object) -> tuple[str, ...]:
    if type(value) is not list:
        raise SchemaError(f"expected a list of strings, got {_type_name(value)}")
    for index, tag in enumerate(value):
        if type(tag) is not str:
            raise SchemaError(f"item {index}: expected a string, got {_type_name(tag)}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class KindSpec:
    check: Callable[[object], Any]  # wire value -> Python value, or SchemaError
    to_wire: Callable[[Any], Any] | None  # Python value -> wire value (None: as is)
    json_schema: dict[str, Any]


def _tags_to_wire(tags: tuple[str, ...]) -> list[str]:
    return list(tags)


KINDS: dict[Kind, KindSpec] = {
    Kind.ID: KindSpec(_check_id, None, {"type": "string", "minLength": 1}),
    Kind.TEXT: KindSpec(_check_text, None, {"type": "string"}),
    Kind.OPT_ID: KindSpec(_check_opt_id, None, {"type": ["string", "null"], "minLength": 1}),
    Kind.OPT_TEXT: KindSpec(_check_opt_text, None, {"type": ["string", "null"]}),
    Kind.CENTS: KindSpec(_check_cents, None, {"type": "integer", "minimum": 0}),
    Kind.COUNT: KindSpec(_check_count, None, {"type": "integer", "minimum": 0}),
    Kind.TIME: KindSpec(parse_utc, format_utc, {"type": "string", "pattern": RFC3339_UTC_PATTERN}),
    Kind.TAGS: KindSpec(_check_tags, _tags_to_wire, {"type": "array", "items": {"type": "string"}}),
}


# ------------------------------------------------------------ input limits
#
# Input events (what upstream systems send) are held to the explicit limits
# of `schemas.limits` (docs/limits.md) on top of their kinds' checks. Outputs
# and budget messages are written by this program and keep the plain kinds.


def _check_input_id(value: object) -> str:
    return limits.check_id_text(_check_id(value))


def _check_input_cents(value: object) -> int:
    return limits.check_amount(_check_cents(value))


def _check_input_time(value: object) -> int:
    return limits.check_event_time(parse_utc(value), value)  # type: ignore[arg-type]


def _check_input_tags(value: object) -> tuple[str, ...]:
    if type(value) is list:
        limits.check_tag_count(len(value))
    tags = _check_tags(value)
    for index, tag in enumerate(tags):
        try:
            _check_input_id(tag)
        except SchemaError as exc:
            raise SchemaError(f"item {index}: {exc}") from None
    return tags


_ID_LIMITS = {"minLength": 1, "maxLength": limits.MAX_ID_CHARS}
INPUT_KINDS: dict[Kind, KindSpec] = {
    **KINDS,
    Kind.ID: KindSpec(_check_input_id, None, {"type": "string", **_ID_LIMITS}),
    Kind.CENTS: KindSpec(
        _check_input_cents,
        None,
        {"type": "integer", "minimum": 0, "maximum": limits.MAX_AMOUNT_CENTS},
    ),
    Kind.TIME: KindSpec(
        _check_input_time, format_utc, {"type": "string", "pattern": RFC3339_UTC_PATTERN}
    ),
    Kind.TAGS: KindSpec(
        _check_input_tags,
        _tags_to_wire,
        {
            "type": "array",
            "items": {"type": "string", **_ID_LIMITS},
            "maxItems": limits.MAX_TAGS,
        },
    ),
}
