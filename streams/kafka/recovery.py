"""faust's table recovery, seeking the inputs before it resumes them (repair 2).

Symptom: after a SIGKILL mid-burst, the restarted worker processed some
events of a partition *after* later ones of the same partition (offsets
jumped ahead, then back), so a per-partition "already applied" check took
the earlier ones for duplicates (the root of faust-streaming issue 216).

Cause: `Recovery._resume_streams` makes the input partitions active first
and only then awaits `perform_seek()`. While that seek travels to the
consumer thread, the fetcher hands out records from wherever aiokafka's
position had drifted; the seek then rewinds.

Repair: seek first, activate the input partitions after, so the first
record the worker sees is at the committed offset. Installed through
faust's `TableManager` setting (`App(TableManager=...)`), for this app only.

Bulk restore
------------
faust hands every changelog record to the recovery one at a time: a faust
Message and Event, the conductor, a queue hop, and per record a scan of
every recovering partition's remaining count (`need_recovery`) plus two
debug f-strings built whatever the log level. A worker taking over two
partitions read ~60,000 records in 5.4 s that way, most of a join's time.
`Recovery.restore` takes a whole fetch of an active changelog partition in
one call and does what faust's `_slurp_changelogs` does per record, once
per fetch: the offset check, the table's buffer (flushed as one RocksDB
write batch at `recovery_buffer_size`), and the end-of-recovery signal.
Standby partitions (this app runs none) and tables with an
`on_changelog_event` callback still go faust's way.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import monotonic
from typing import Any, NamedTuple

from faust.tables import manager as faust_manager
from faust.tables import recovery as faust_recovery
from faust.types import TP


class ChangelogRecord(NamedTuple):
    """One fetched changelog record, shaped as the faust Event whose
    `message` the stores read (`apply_changelog_batch`: tp, partition,
    offset, key, value, headers) without building a Message and an Event."""

    tp: TP
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any

    @property
    def message(self) -> ChangelogRecord:
        return self


class Recovery(faust_recovery.Recovery):
    """faust's recovery with the seek repair and the bulk restore."""

    async def _resume_streams(self, generation_id: int = 0) -> None:
        """faust's `Recovery._resume_streams` with the seek moved before the
        input partitions become active; otherwise unchanged."""
        app: Any = self.app
        consumer = app.consumer
        await app.on_rebalance_complete.send()
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        else:
            self.log.info("Resuming streams with empty assignment")
        self.completed.set()
        self.log.info("Resuming flow...")
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    def _set_recovery_started(self) -> None:
        """faust's, and the end signal of the last recovery cleared. `restore`
        sets that signal from the fetch loop; faust's changelog loop
        (`_slurp_changelogs`), which clears it before it waits for a record,
        gets none here and wakes only every 5 s. So a recovery starting
        within 5 s of the last one's end found the signal still set and was
        "done" at once, reading nothing: a worker taking over a partition it
        had no copy of served it empty (the third-worker test, 3 runs of 15
        under load: a partition moved 3.6 s after a recovery, 58 of its
        outputs never came)."""
        super()._set_recovery_started()
        self.signal_recovery_end.clear()

    def takes(self, tp: TP) -> bool:
        """Whether `restore` takes this changelog partition's records now:
        an active one being recovered, of a table without a changelog
        callback (faust awaits that per record)."""
        if tp not in self.active_tps:
            return False
        table = self.tp_to_table.get(tp)
        return table is not None and not getattr(table, "_on_changelog_event", None)

    def restore(self, tp: TP, records: Sequence[Any]) -> int:
        """`_slurp_changelogs`' work for a fetch of `tp` (aiokafka
        ConsumerRecords in offset order, `takes(tp)` true): records at or
        below the offset already seen are dropped, the rest join the
        table's buffer, which is applied whenever it holds
        `recovery_buffer_size` records; once no active partition has
        anything left the buffers are applied and the recovery's end is
        signalled, as faust does after each record. Returns how many
        records were new."""
        seen = self.active_offsets.get(tp)
        start = 0
        if seen is not None:
            while start < len(records) and records[start].offset <= seen:
                start += 1
        now = monotonic()
        self._active_events_received_at[tp] = now
        fresh = records[start:]
        if fresh:
            self._buffer(tp, fresh, now)
        if self.in_recovery and not self.need_recovery():
            self.flush_buffers()
            self._set_recovery_ended()
            self.signal_recovery_end.set()
        return len(fresh)

    def _buffer(self, tp: TP, fresh: Sequence[Any], now: float) -> None:
        table = self.tp_to_table[tp]
        partition = tp.partition
        buffer: list[Any] = self.buffers[table]  # Event-shaped records beside faust Events
        buffer.extend(
            ChangelogRecord(tp, partition, r.offset, r.key, r.value, r.headers) for r in fresh
        )
        self.active_offsets[tp] = fresh[-1].offset
        size = self.buffer_sizes.get(tp)
        if size is None:
            size = self.buffer_sizes[tp] = table.recovery_buffer_size
        if len(buffer) >= size:
            table.apply_changelog_batch(buffer)
            buffer.clear()
            self._last_flush_at = now
        # faust's estimate of the time left (its recovery log lines) samples
        # the time per record.
        done = monotonic()
        last = self._last_active_event_processed_at
        if last is not None:
            self._processing_times.append((done - last) / len(fresh))
            if len(self._processing_times) > self.num_samples_required_for_estimate:
                self._processing_times.popleft()
        self._last_active_event_processed_at = done


class TableManager(faust_manager.TableManager):
    """faust's table manager whose recovery is `Recovery` above."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery  # type: ignore[return-value]
