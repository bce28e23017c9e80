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
"""

from __future__ import annotations

from typing import Any

from faust.tables import manager as faust_manager
from faust.tables import recovery as faust_recovery


class Recovery(faust_recovery.Recovery):
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


class TableManager(faust_manager.TableManager):
    """faust's table manager whose recovery is `Recovery` above."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery  # type: ignore[return-value]
