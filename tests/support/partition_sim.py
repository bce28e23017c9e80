"""Drive `streams.processor` the way the agent does, over a dict instead of a table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from app.bucketing import allocate, new_master
from app.catalog import Catalog
from schemas.codec import decode, encode
from streams.partition_state import (
    USER_PREFIX,
    Output,
    PartitionRecord,
    decode_partition,
    decode_user,
    next_deadline_of_record,
    partition_key,
    user_key,
)
from streams.processor import (
    BUDGET,
    BUDGET_REQUESTS,
    BatchResult,
    InMessage,
    PartitionCache,
    process_batch,
    rebuild_deadlines,
    writes_for,
)


class PartitionSim:
    """One partition's table and cache; `run` is one batch, applied like the agent does."""

    def __init__(
        self,
        catalog: Catalog,
        partition: int = 0,
        partitions: int = 1,
        max_pending: int = 20_000,
        users_max: int = 3,  # small: the tests cross evictions of the user cache
    ) -> None:
        self.catalog = catalog
        self.partition = partition
        self.partitions = partitions
        self.max_pending = max_pending
        self.users_max = users_max
        self.store: dict[bytes, bytes] = {}
        self.cache = PartitionCache(users_max=users_max)
        self.outputs: list[Output] = []

    def record(self) -> PartitionRecord:
        raw = self.store.get(partition_key(self.partition))
        return PartitionRecord(self.partition) if raw is None else decode_partition(raw)

    def restart(self) -> dict[str, int]:
        """Lose everything in memory, as a worker restart does; return where each
        input must be fetched again from (the shell rewinds the consumer there)."""
        self.cache = PartitionCache(
            deadlines=rebuild_deadlines(
                (key[len(USER_PREFIX) :].decode(), next_deadline_of_record(value))
                for key, value in self.store.items()
                if key.startswith(USER_PREFIX)
            ),
            users_max=self.users_max,
        )
        return self.cache.load(self.record())

    def run(
        self,
        messages: Iterable[InMessage],
        highwater: Mapping[str, int | None],
        *,
        now: float = 0.0,
        max_idle: float = 0.0,
        highwater_seen: Mapping[str, float | None] | None = None,
    ) -> BatchResult:
        if not self.cache.loaded:
            self.cache.load(self.record())
        result = process_batch(
            self.record(),
            messages,
            catalog=self.catalog,
            partitions=self.partitions,
            load_user=lambda user_id: decode_user(self.store.get(user_key(user_id))),
            cache=self.cache,
            highwater=highwater,
            highwater_seen=highwater_seen,
            max_pending=self.max_pending,
            now=now,
            max_idle=max_idle,
        )
        for key, value in writes_for(result):
            if value is None:
                self.store.pop(key, None)
            else:
                self.store[key] = value
        self.outputs.extend(result.outputs)
        for user_id, state in self.cache.users.items():  # the cache never disagrees with the table
            assert state == decode_user(self.store.get(user_key(user_id))), user_id
        assert len(self.cache.users) <= self.users_max
        return result


class AllocatorSim:
    """The pools' masters for processor tests: reads the budget requests the
    partitions emit and appends the answers to each partition's budget-grants
    log (which the test delivers like any other input)."""

    def __init__(self, catalog: Catalog, partitions: int) -> None:
        self.masters = {
            pool_id: new_master(pool_id, pool.total, partitions)
            for pool_id, pool in catalog.pools.items()
        }
        self.logs: list[list[InMessage]] = [[] for _ in range(partitions)]
        self.read = 0  # how many budget requests were read

    def feed(self, outputs: Iterable[Output]) -> None:
        for output in outputs:
            if output.role != BUDGET_REQUESTS:
                continue
            self.read += 1
            message = decode(output.value)
            master, replies = allocate(self.masters[message.pool_id], message)  # type: ignore[arg-type,union-attr]
            self.masters[master.pool_id] = master
            for reply in replies:
                log = self.logs[reply.partition]
                log.append(
                    InMessage(
                        BUDGET,
                        "ts.budget-grants",
                        reply.partition,
                        len(log),
                        reply.pool_id.encode(),
                        encode(reply),
                    )
                )
