"""RFC 3339 UTC timestamps <-> integer epoch microseconds.

Inside the engine every instant is an ``int`` of microseconds since the Unix
epoch (UTC): exact for every timestamp the wire accepts (at most 6 fraction
digits), cheap to compare, and trivially serialised. On the wire they are
RFC 3339 strings with a zero UTC offset; we write the canonical form
``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` so outputs are byte-identical across runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import lru_cache

from schemas.errors import SchemaError
from schemas.native import kernel

MICROS_PER_SECOND = 1_000_000
MICROS_PER_DAY = 86_400 * MICROS_PER_SECOND

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_native_parse: Callable[[str], int | None] | None = None if kernel is None else kernel.parse_utc


@lru_cache(maxsize=4096)
def _day_number(year: int, month: int, day: int) -> int:
    """Days since the epoch; cached because logs hold few distinct dates."""
    return date(year, month, day).toordinal() - _EPOCH_ORDINAL


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_utc(text: object) -> int:
    """Parse an RFC 3339 timestamp with a zero offset into epoch microseconds.

    Raises SchemaError (without a field name; callers add it) when the text
    is not a string, not RFC 3339, names an impossible date or time, or has
    a non-zero offset (the contract is UTC everywhere).
    """
    if _native_parse is not None and type(text) is str and text.isascii():
        micros = _native_parse(text)  # the canonical shape only; else None
        if micros is not None:
            if len(text) == 20 or (text[-2] != "0" and text[20:-1].isdigit()):
                _remember(micros, text)  # see below: its own canonical text
            return micros
    return parse_python(text)


def parse_python(text: object) -> int:
    """The reference `parse_utc` (the kernel's `parse_utc` must agree with it)."""
    # Fast path for the canonical shape we write ourselves,
    # "YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z" (the bulk of any log): separators checked
    # at fixed positions, then the C parser, which refuses anything but ASCII
    # digits in between.
    if (
        type(text) is str
        and (len(text) == 20 or (22 <= len(text) <= 27 and text[19] == "."))
        and text[-1] == "Z"
        and text[10] == "T"
        and text[4] == text[7] == "-"
        and text[13] == text[16] == ":"
        and text.isascii()
    ):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return _parse_general(text)  # the careful path says precisely what is wrong
        delta = moment - _EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds
        # Canonical (no fraction, or one without trailing zeros): it is what
        # `format_utc` would write, so an output at this instant (most are at
        # their input's) reuses the text instead of formatting it again.
        if len(text) == 20 or (text[-2] != "0" and text[20:-1].isdigit()):
            _remember(micros, text)
        return micros
    return _parse_general(text)


def _parse_general(text: object) -> int:
    if not isinstance(text, str):
        raise SchemaError(f"expected an RFC 3339 UTC timestamp string, got {_kind(text)}")
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise SchemaError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if zulu is None and (off_h != "00" or off_m != "00"):
        raise SchemaError(f"timestamp not in UTC (offset {sign}{off_h}:{off_m}): {text!r}")
    try:
        days = _day_number(int(year), int(month), int(day))
    except ValueError:
        raise SchemaError(f"impossible date in timestamp {text!r}") from None
    h, m, s = int(hour), int(minute), int(second)
    # RFC 3339 allows a leap second (60); Python cannot represent it, so we refuse it.
    if h > 23 or m > 59 or s > 59:
        raise SchemaError(f"impossible time of day in timestamp {text!r}")
    micros = int(fraction.ljust(6, "0")) if fraction else 0
    return ((days * 86_400 + h * 3_600 + m * 60 + s) * MICROS_PER_SECOND) + micros


@lru_cache(maxsize=4096)
def _date_text(days: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + days).isoformat()


# Instant -> its canonical text: a memo of a pure function, filled by both
# directions (an output's `at` is nearly always its input's, whose text
# `parse_utc` has just read; a completing order writes three or four events
# at that instant). Bounded: emptied when full, never wrong, only colder.
_TEXTS: dict[int, str] = {}
_TEXTS_MAX = 16_384


def _remember(micros: int, text: str) -> None:
    if len(_TEXTS) >= _TEXTS_MAX:
        _TEXTS.clear()
    _TEXTS[micros] = text


def format_utc(micros: int) -> str:
    """The canonical wire form of an instant (fraction only when non-zero)."""
    text = _TEXTS.get(micros)
    if text is None:
        text = _format(micros)
        _remember(micros, text)
    return text


def _format(micros: int) -> str:
    if _native_format is not None and type(micros) is int:
        try:
            text = _native_format(micros)
        except OverflowError:  # beyond 64 bits: the Python reference says why
            text = None
        if text is not None:
            return text
    return format_python(micros)


_native_format: Callable[[int], str | None] | None = None if kernel is None else kernel.format_utc


def format_python(micros: int) -> str:
    """The reference: what the compiled kernel's `format_utc` must equal."""
    seconds, fraction = divmod(micros, MICROS_PER_SECOND)
    days, second_of_day = divmod(seconds, 86_400)
    hour, rest = divmod(second_of_day, 3_600)
    minute, second = divmod(rest, 60)
    text = f"{_date_text(days)}T{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += "." + f"{fraction:06d}".rstrip("0")
    return text + "Z"


def to_datetime(micros: int) -> datetime:
    """An aware UTC datetime, for time-zone arithmetic at the edges."""
    seconds, fraction = divmod(micros, MICROS_PER_SECOND)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=fraction)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
