"""Telling that this process was frozen, from its own event loop's beat.

A worker stopped by SIGSTOP, a debugger or a suspended VM comes back
believing it still owns its partitions, with events it fetched and high
watermarks it learnt before. Away for longer than part of the session
timeout, the group may have moved those partitions to another worker
already, and processing its stale buffer would emit outputs in another
order than the new owner's (the fault suite saw it). `FreezeWatch` is fed
by a short timer on the worker's loop: a gap between two beats far longer
than the timer's period is a freeze (our batches never block the loop for
seconds), and processing then waits `hold_for` seconds, long enough for
the consumer to learn from its heartbeats whether it still belongs to the
group (if not, the rebalance drops the stale buffer).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FreezeWatch:
    freeze_after: float  # a gap between beats longer than this is a freeze
    hold_for: float  # how long processing waits after one
    last_beat: float | None = None  # None until the first beat (start-up is slow)
    hold_until: float = 0.0

    def beat(self, now: float) -> float | None:
        """Record a beat; the length of the freeze it ends, if it ends one."""
        last, self.last_beat = self.last_beat, now
        if last is None or now - last <= self.freeze_after:
            return None
        self.hold_until = max(self.hold_until, now + self.hold_for)
        return now - last

    def hold(self, now: float) -> float:
        """Seconds processing must still wait (0: go on)."""
        return max(0.0, self.hold_until - now)
