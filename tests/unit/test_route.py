"""`taskstream produce`'s routing never fails on a line it cannot route: it says why."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import Settings
from taskstream.kafka_io import UnroutableEvent, route

SETTINGS = Settings()
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)


@settings(max_examples=300, derandomize=True)
@given(kind=JSON, user=JSON)
def test_any_type_field_is_routed_or_refused_with_a_reason(kind: object, user: object) -> None:
    line = orjson.dumps({"type": kind, "user_id": user})
    try:
        routed = route(SETTINGS, line)
    except UnroutableEvent as exc:
        reason = str(exc)
    else:
        assert routed.topic.startswith(SETTINGS.topic_prefix)
        return
    assert reason


@pytest.mark.parametrize("line", [b"[]", b"{", b'{"type": []}', b'{"type": {"a": 1}}', b"null"])
def test_hostile_lines_are_unroutable(line: bytes) -> None:
    with pytest.raises(UnroutableEvent):
        route(SETTINGS, line)
