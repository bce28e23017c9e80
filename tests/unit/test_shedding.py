"""The render API's load limit (token bucket, in-flight cap) and fallback cache, pure."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.api.shedding import MICRO, Admission, AnswerCache, TokenBucket, mark_fallback

# Request times as gaps (µs) between requests: bursts (0), near ones, long idles.
gaps = st.lists(
    st.one_of(st.just(0), st.integers(0, 2_000), st.integers(0, 3 * MICRO)),
    min_size=1,
    max_size=300,
)


def _times(steps: list[int]) -> list[int]:
    at, times = 10 * MICRO, []
    for gap in steps:
        at += gap
        times.append(at)
    return times


@settings(max_examples=300, deadline=None, derandomize=True)
@given(rate=st.integers(1, 5_000), burst=st.integers(1, 200), steps=gaps)
def test_never_admits_more_than_rate_times_window_plus_burst(
    rate: int, burst: int, steps: list[int]
) -> None:
    bucket = TokenBucket(rate, burst)
    times = _times(steps)
    admitted = [t for t in times if bucket.take(t)]
    # Every window [admitted[i], admitted[j]]: j - i + 1 admissions.
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            assert (j - i + 1) * MICRO <= burst * MICRO + rate * window


@settings(max_examples=100, deadline=None, derandomize=True)
@given(rate=st.integers(1, 5_000), burst=st.integers(1, 200), steps=gaps)
def test_after_an_idle_time_a_full_burst_is_admitted(
    rate: int, burst: int, steps: list[int]
) -> None:
    bucket = TokenBucket(rate, burst)
    times = _times(steps)
    for t in times:
        bucket.take(t)
    refilled = times[-1] + -(-burst * MICRO // rate)  # burst / rate seconds later, rounded up
    assert all(bucket.take(refilled) for _ in range(burst))
    assert not bucket.take(refilled)


def test_rate_per_second_at_a_steady_pace() -> None:
    bucket = TokenBucket(rate=100, burst=1)
    # 1,000 requests/s offered for 10 s: 100/s pass (the first one from the full bucket).
    admitted = sum(bucket.take(n * 1_000) for n in range(10_000))
    assert admitted == 1 + 100 * 10 - 1  # 9.999 s of refill at 100/s, plus the initial token


def test_a_clock_stepping_back_refills_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.take(5 * MICRO)
    assert not bucket.take(1 * MICRO)  # earlier than the last request
    assert not bucket.take(5 * MICRO + MICRO // 2)
    assert bucket.take(6 * MICRO)


def test_admission_caps_requests_in_flight_without_spending_tokens() -> None:
    admission = Admission(rate=1_000, burst=3, concurrency=2)
    assert admission.enter(0)
    assert admission.enter(0)
    assert not admission.enter(0)  # two in flight
    admission.leave()
    assert admission.enter(0)  # the refused one above spent no token: the third
    assert admission.in_flight == 2
    admission.leave()
    admission.leave()
    assert not admission.enter(0)  # tokens spent, none refilled at the same instant
    assert admission.in_flight == 0


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="rate and burst"):
        TokenBucket(0, 1)
    with pytest.raises(ValueError, match="concurrency"):
        Admission(1, 1, 0)
    with pytest.raises(ValueError, match="size"):
        AnswerCache(-1)


def test_cache_keeps_the_most_recently_used() -> None:
    cache = AnswerCache(2)
    cache.put(("u1", "home", None), b"1")
    cache.put(("u2", "home", None), b"2")
    assert cache.get(("u1", "home", None)) == b"1"  # u1 now the most recent
    cache.put(("u3", "home", None), b"3")
    assert cache.get(("u2", "home", None)) is None
    assert cache.get(("u1", "home", None)) == b"1"
    cache.put(("u1", "home", None), b"1b")  # replaced, not added
    assert (len(cache), cache.get(("u1", "home", None))) == (2, b"1b")
    assert cache.get(("u1", "home", ())) is None  # tags are part of the key


@given(
    keys=st.lists(st.integers(0, 50), max_size=400),
    size=st.integers(0, 20),
)
@settings(max_examples=100, deadline=None, derandomize=True)
def test_cache_never_grows_past_its_size_and_holds_the_last_put(keys: list[int], size: int) -> None:
    cache = AnswerCache(size)
    for key in keys:
        cache.put(key, str(key).encode())
        assert len(cache) <= size
    if keys and size:
        assert cache.get(keys[-1]) == str(keys[-1]).encode()


@pytest.mark.parametrize("doc", [{}, {"user_id": "ü", "tasks": [{"a": 1}], "offers": []}])
def test_mark_fallback_adds_the_fields_to_the_object(doc: dict[str, object]) -> None:
    marked = orjson.loads(mark_fallback(orjson.dumps(doc), "cached"))
    assert marked == {**doc, "degraded": True, "fallback": "cached"}
