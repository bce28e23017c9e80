"""Sleep until a deadline or until someone says there is new work.

The worker's timer loop (streams/agents.py, `release_idle_waits`) used to
look every 10 ms whether an idle wait had ended or a batch was due to
settle: a hundred wake-ups a second, busy or not, ~0.03 CPU s per second of
an idle worker's main thread (its whole idle cost was 0.047). It now
sleeps until the earliest of those deadlines (`Worker.seconds_to_next_look`),
and a fetch that sets a new one wakes it (`Wakeup.set`).

One waiter at a time, in the event loop's thread; no task is created per
wait (asyncio.wait_for would make one).
"""

from __future__ import annotations

import asyncio


class Wakeup:
    """An event that a single waiter waits for with a timeout."""

    def __init__(self) -> None:
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Wake the waiter now, or make its next wait return at once."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Until `set` or `timeout` seconds; True if woken by `set` (since
        the last wait returned)."""
        if self._woken:
            self._woken = False
            # Still let the loop run its other tasks once: a waiter woken
            # before every wait would otherwise never give way to them.
            await asyncio.sleep(0)
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        woken, self._woken = self._woken, False
        return woken


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
