"""The stream processor gives replay's answer, however the log is delivered.

The log is split by user over partitions and by type over the four input
topics; hypothesis picks how the topics are interleaved and batched, where
batches are delivered twice (redelivery after a crash) and where the
in-memory cache is lost (a restart). The de-duplicated task events and
rewards must equal replay's, and no event id may carry two contents.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from support.partition_sim import AllocatorSim, PartitionSim

from app.budget import Ledger
from app.catalog import Catalog, parse_catalog
from app.replayer import Replayer
from bench.loggen import LogShape, ample_sample_pools, generate
from schemas.codec import encode
from schemas.records import Tick
from streams.processor import (
    BUDGET,
    BUDGET_REQUESTS,
    DEAD_LETTERS,
    INPUT_ROLES,
    ROLE_OF_TYPE,
    InMessage,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def ample_catalog() -> Catalog:
    """The sample templates with pools no partition's share can run out of."""
    templates = orjson.loads((SAMPLES / "templates.json").read_bytes())
    return parse_catalog(templates, ample_sample_pools())


CATALOG = ample_catalog()
LOG = list(
    generate(
        LogShape(
            events=500,
            users=16,
            task_user_every=1,
            task_order_share=1.0,
            claim_share=0.1,
            refund_share=0.15,
            tick_every=40,
            seconds_per_event=2500.0,
            seed=7,
        )
    )
)


def replay_outputs() -> dict[str, bytes]:
    replayer = Replayer(CATALOG, Ledger(CATALOG.pools.values()))
    out: dict[str, bytes] = {}
    for event in LOG:
        for _, outcome in replayer.apply(event):
            for output in outcome.events:
                out[output.event_id] = encode(output)
    return out


EXPECTED = replay_outputs()


def partition_of(user_id: str, partitions: int) -> int:
    return zlib.crc32(user_id.encode()) % partitions


def topics_by_partition(partitions: int) -> list[dict[str, list[InMessage]]]:
    logs: list[dict[str, list[InMessage]]] = [
        {r: [] for r in INPUT_ROLES} for _ in range(partitions)
    ]
    for event in LOG:
        role = ROLE_OF_TYPE[event.TYPE]
        if type(event) is Tick:
            targets = range(partitions)  # broadcast
            key = None
        else:
            user_id = event.user_id  # type: ignore[union-attr]
            targets = range(
                partition_of(user_id, partitions), partition_of(user_id, partitions) + 1
            )
            key = user_id.encode()
        for p in targets:
            topic = logs[p][role]
            topic.append(InMessage(role, f"ts.{role}", p, len(topic), key, encode(event)))
    return logs


@settings(max_examples=40)
@given(
    partitions=st.integers(1, 3),
    seed=st.integers(0, 2**32),
    max_chunk=st.integers(1, 60),
    redeliver_every=st.integers(2, 12),
)
def test_stream_outputs_equal_replay(
    partitions: int, seed: int, max_chunk: int, redeliver_every: int
) -> None:
    rng = random.Random(seed)
    logs = topics_by_partition(partitions)
    sims = [PartitionSim(CATALOG, p, partitions) for p in range(partitions)]
    allocator = AllocatorSim(CATALOG, partitions)
    for p in range(partitions):  # the budget-grants topic: written as the run goes
        logs[p][BUDGET] = allocator.logs[p]
    roles = (*INPUT_ROLES, BUDGET)
    position = [{r: 0 for r in roles} for _ in range(partitions)]
    highwater = [{r: len(logs[p][r]) for r in INPUT_ROLES} for p in range(partitions)]

    def unread() -> bool:
        return any(position[p][r] < len(logs[p][r]) for p in range(partitions) for r in roles)

    step = 0
    restarts = 0
    while unread():
        step += 1
        p = rng.randrange(partitions)
        batch: list[InMessage] = []
        for role in rng.sample(roles, rng.randint(1, len(roles))):
            start = position[p][role]
            if step % redeliver_every == 0:
                start = max(0, start - rng.randint(1, max_chunk))  # redelivered after a crash
            end = min(len(logs[p][role]), start + rng.randint(1, max_chunk))
            batch.extend(logs[p][role][start:end])
            position[p][role] = max(position[p][role], end)
        allocator.feed(sims[p].run(batch, highwater[p]).outputs)
        # A restart: held events are fetched again. A few per run, as crashes are
        # rare next to batches (a restart every few one-message batches would
        # rewind faster than the partition advances, in a real worker too).
        if step % (redeliver_every * 3) == 0 and restarts < 4:
            restarts += 1
            for role, offset in sims[p].restart().items():
                position[p][role] = min(position[p][role], offset)
        if not unread():  # let every partition drain what it still holds back
            for q in range(partitions):
                allocator.feed(sims[q].run([], highwater[q]).outputs)
    for p in range(partitions):
        assert sims[p].record().held == {}
    assert allocator.read > 0, "the budget went through the masters"

    got: dict[str, bytes] = {}
    for sim in sims:
        for output in sim.outputs:
            if output.role in (DEAD_LETTERS, BUDGET_REQUESTS):
                continue
            event_id = orjson.loads(output.value)["event_id"]
            assert got.setdefault(event_id, output.value) == output.value, "one id, two contents"
    assert got == EXPECTED


def test_the_generated_log_exercises_every_kind_of_output() -> None:
    kinds = {orjson.loads(v)["type"] for v in EXPECTED.values()}
    assert {"task_claimed", "task_advanced", "task_completed", "reward_granted"} <= kinds
    assert {"task_expired", "reward_revoked"} & kinds
