"""Load shedding of the render API, pure: a token bucket, an in-flight cap, an LRU of answers.

    Admission(rate, burst, concurrency)   enter(now_us) -> bool, leave()
    TokenBucket(rate, burst)              take(now_us) -> bool
    AnswerCache(size)                     put(key, body), get(key) -> body | None

No clock, no I/O: the caller passes `now` (integer microseconds, any
monotonic origin). Every check is O(1), so a worker can refuse work far
above its capacity for the price of a few integer operations.

The bucket counts in micro-tokens (one request = 1,000,000) so refilling is
exact integer arithmetic: `rate` requests/s adds `rate` micro-tokens per
microsecond. Over any window of length T (µs) it admits at most
rate * T / 10**6 + burst requests (tests/unit/test_shedding.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

MICRO = 1_000_000  # micro-tokens per request; also µs per second


class TokenBucket:
    """`rate` requests per second on average, at most `burst` at once."""

    __slots__ = ("capacity", "last", "level", "rate")

    def __init__(self, rate: int, burst: int) -> None:
        if rate < 1 or burst < 1:
            raise ValueError(f"rate and burst must be >= 1, got {rate} and {burst}")
        self.rate = rate
        self.capacity = burst * MICRO
        self.level = self.capacity  # starts full
        self.last: int | None = None

    def take(self, now: int) -> bool:
        """One request at `now` (µs): True and a token spent, or False."""
        if self.last is not None and now > self.last:
            # min() first keeps the product small after a long idle time.
            elapsed = min(now - self.last, self.capacity)
            self.level = min(self.capacity, self.level + elapsed * self.rate)
        if self.last is None or now > self.last:
            self.last = now  # a clock stepping back refills nothing
        if self.level < MICRO:
            return False
        self.level -= MICRO
        return True


class Admission:
    """The per-worker limit: at most `concurrency` requests in flight and
    `rate`/s (bursts of `burst`). `enter` True obliges one `leave`."""

    __slots__ = ("bucket", "concurrency", "in_flight")

    def __init__(self, rate: int, burst: int, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.bucket = TokenBucket(rate, burst)
        self.concurrency = concurrency
        self.in_flight = 0

    def enter(self, now: int) -> bool:
        # The in-flight cap first: a refused request must not spend a token.
        if self.in_flight >= self.concurrency or not self.bucket.take(now):
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)


class AnswerCache:
    """The last `size` answers by key, least recently used evicted first."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = size
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: Hashable, body: bytes) -> None:
        if self.size == 0:
            return
        self._entries[key] = body
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def get(self, key: Hashable) -> bytes | None:
        body = self._entries.get(key)
        if body is not None:
            self._entries.move_to_end(key)
        return body


def mark_fallback(body: bytes, kind: str) -> bytes:
    """A JSON object's bytes with `"degraded": true, "fallback": kind` added
    (no parse: the object's closing brace is replaced)."""
    tail = b'"degraded":true,"fallback":"' + kind.encode() + b'"}'
    inner = body.rstrip()[:-1].rstrip()
    return inner + (b"," if not inner.endswith(b"{") else b"") + tail
