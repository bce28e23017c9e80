"""Fencing a zombie's changelog writes: the rules, on plain values.

A worker frozen past the session timeout (SIGSTOP, a stalled VM, a long GC
pause of the host) loses its partitions to another worker, but whatever its
producer had queued before the freeze still goes out when it resumes. Seen
in the fault suite: worker a, stopped right after it queued a batch's
changelog writes, sent them 10 s later, after worker b had taken the
partition over and written newer values of the same keys. Two harms:

1. The changelog's last value of those keys was a's older one, so whoever
   rebuilt the partition from it next had stale users.
2. a's own database recorded the offsets of those late writes as "applied
   up to here", so when a got the partition back, faust's recovery started
   after them and never applied b's writes in between.

Kafka Streams fences zombies with transactions; faust's transactions do
not cover this agent's batches. Instead, every changelog write carries the
writer's **epoch** (a header): the consumer group generation in which it
owns the partition (generations only grow while the group exists). The
rules, applied by `streams.fenced_store`:

- Recovery applies a changelog message only if its epoch is not below the
  highest epoch already applied to that partition: a write of an earlier
  owner that lands after a newer owner's writes is a zombie's, skipped.
- A writer checks that the acknowledgements of its own writes follow one
  another offset by offset (`AckTracker`). A gap means someone else wrote
  to the partition between two of its writes: one of the two was a zombie,
  so this database is not a faithful copy any more. It stops advancing its
  recorded offset and is marked distrusted; the next time the partition is
  assigned here, the database is emptied and rebuilt from the whole
  changelog (with the epoch rule).
- The writer that saw the gap reads it: if every write in it has a lower
  epoch than its own, it is the newer owner and writes its current value
  of each of those keys again, since log compaction keeps only a key's
  last record (the late one) and would drop the owner's.

What is left (docs/streams.md): a late write landing after the new owner's
recovery but before the new owner's first write is not below anything
before it, so a replay in that moment keeps it; the new owner's rewrite
after its first write supersedes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

EPOCH_HEADER = "taskstream-epoch"


def own_epoch(generation: int, highest_seen: int) -> int:
    """The epoch this worker writes a partition with in `generation`.

    The generation, while it is above every epoch the partition has seen.
    If it is not (the group was deleted and started again at 1), a number
    above everything seen, still growing with the generation.
    """
    if generation > highest_seen:
        return generation
    return highest_seen + max(generation, 1)


def epoch_header(epoch: int) -> dict[str, bytes]:
    return {EPOCH_HEADER: str(epoch).encode()}


def epoch_of(headers: Any) -> int | None:
    """The epoch a changelog message carries (None: written before fencing)."""
    if not headers:
        return None
    items: Iterable[tuple[Any, Any]] = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name == EPOCH_HEADER and value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def keeps(epoch: int | None, highest_seen: int) -> bool:
    """Recovery's rule: apply a message unless an earlier owner wrote it
    after a newer owner's writes (messages without an epoch predate fencing)."""
    return epoch is None or epoch >= highest_seen


@dataclass
class AckTracker:
    """The offsets of one partition's own changelog writes, as acknowledged.

    `next_offset` is where the next own write must land if nobody else
    writes in between; None until known (then the first acknowledgement is
    compared with what the database had recorded).
    """

    next_offset: int | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (expected, got)

    def acknowledged(self, offset: int, recorded: int | None) -> bool:
        """An own write landed at `offset`; `recorded` is the offset the
        database says it holds everything up to. False: there was a gap."""
        expected = self.next_offset
        if expected is None:
            if recorded is None:
                # Nothing of the changelog is recorded here: recovery found it
                # empty (its first offset need not be 0, after retention or
                # DeleteRecords). The first own write sets where we are.
                self.next_offset = offset + 1
                return True
            expected = recorded + 1
        if offset < expected:
            return True  # already covered (recovery read it back): nothing to advance
        if offset > expected:
            self.gaps.append((expected, offset))
            return False
        self.next_offset = offset + 1
        return True

    def acknowledged_run(self, offsets: list[int]) -> bool:
        """Own writes landed at `offsets`, each right after the one before,
        starting where the next was expected: advance past them all in one
        step (the usual case). False, with nothing changed, for anything
        else: then each goes through `acknowledged`."""
        first = self.next_offset
        if first is None or not offsets or offsets != list(range(first, first + len(offsets))):
            return False
        self.next_offset = offsets[-1] + 1
        return True

    def caught_up_to(self, offset: int) -> None:
        """Recovery applied the changelog up to `offset`."""
        self.next_offset = offset + 1
