"""Atomic batches on a faust table: the redo record, the writes, the sends.

The allocator agent's (the processor's worker writes its batches through
streams.worker.state_store, one RocksDB write batch and the librdkafka
producer, with the same redo record). faust writes each key to
the changelog separately, so a crash can leave some keys of a batch written
and others not; the redo record (every write and output of the batch, one
changelog message, written first) makes the batch atomic: after a crash
`finish_cut_batch` re-applies it and re-sends its outputs (same ids and
bytes; consumers de-duplicate).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import faust
import faust.types
from faust.streams import _current_event

from streams.partition_state import Output, Redo, decode_redo, encode_redo

log = logging.getLogger("taskstream.worker")

Table = faust.types.TableT[Any, Any]


Events = Sequence[faust.EventT[bytes]]
PartitionStep = Callable[[int, Events], Awaitable[list[Awaitable[Any]]]]


async def run_by_partition(
    by_partition: Mapping[int, Events], step: PartitionStep, forget: Callable[[int], object]
) -> None:
    """Run `step` for each partition's events, then wait until every output
    of the batch is at the broker (before faust acks the inputs, and before
    the next batch replaces any partition's redo record). `forget(partition)`
    drops what the agent keeps in memory for a partition whose step failed.
    """
    deliveries: list[Awaitable[Any]] = []
    for partition, events in sorted(by_partition.items()):
        # Table reads and writes go to the current event's partition: make it
        # one of this partition's events while we work on it.
        token = _current_event.set(weakref.ref(events[-1]))
        try:
            deliveries += await step(partition, events)
        except Exception:
            forget(partition)  # rebuilt from the table next time
            raise
        finally:
            _current_event.reset(token)
    if deliveries:
        await asyncio.gather(*deliveries)


def apply_writes(table: Table, writes: Iterable[tuple[bytes, bytes | None]]) -> None:
    for key, value in writes:
        if value is None:
            if key in table:
                del table[key]
        else:
            table[key] = value


async def send_all(
    topics: Mapping[str, faust.TopicT], outputs: Iterable[Output]
) -> list[Awaitable[Any]]:
    """Hand the outputs to the producer; the returned futures resolve on delivery."""
    deliveries: list[Awaitable[Any]] = []
    for output in outputs:
        topic = topics[output.role]
        deliveries.append(
            await topic.send(key=output.key, value=output.value, partition=output.partition)
        )
    return deliveries


async def commit_batch(
    table: Table,
    topics: Mapping[str, faust.TopicT],
    redo_key: bytes,
    seq: int,
    writes: list[tuple[bytes, bytes | None]],
    outputs: tuple[Output, ...],
) -> list[Awaitable[Any]]:
    """Write the batch (redo record first) and start sending its outputs."""
    table[redo_key] = encode_redo(Redo(seq, tuple(writes), outputs))
    apply_writes(table, writes)
    return await send_all(topics, outputs)


async def finish_cut_batch(
    table: Table,
    topics: Mapping[str, faust.TopicT],
    redo_key: bytes,
    stored_seq: int,
    what: str,
) -> list[Awaitable[Any]]:
    """After an assignment: if the last batch was cut short by a crash (its
    redo record is newer than the stored record, seq `stored_seq`), write it
    again; send its outputs again either way (they may not have arrived)."""
    raw = table.get(redo_key)
    if raw is None:
        return []
    redo = decode_redo(raw)
    if redo.seq > stored_seq:
        log.warning(
            "%s: batch %d was cut short by a crash; re-applying its %d write(s)",
            what,
            redo.seq,
            len(redo.writes),
        )
        apply_writes(table, redo.writes)
    return await send_all(topics, redo.outputs)
