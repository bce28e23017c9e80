"""A real worker fed thousands of hostile messages mixed with a good log keeps going.

A generated good log (bench.loggen, with duplicates and early refunds) is
produced to Kafka interleaved with hostile raw messages (tests/support/
hostile.py: truncated, not UTF-8, wrong types, huge numbers, ids with
control characters, deep nesting, messages just over the size limit,
duplicate keys, wrong topic, wrong or null key, null values, and some on the
budget topics). One worker processes it all. Then:

- the worker process is still running;
- every hostile message is exactly one dead letter, found by its source
  (topic/partition@offset), with a reason, and no good message is one; on
  the input topics the reason is the one `decode_message` (which replay and
  the audit share) gives;
- the task events and rewards equal `taskstream replay` of the good lines;
- the worker's group has consumed every input topic to its end (lag 0).

Bounded for `make test`: 3,000 hostile messages with a fixed seed. A longer
run (what `make chaos` does): TASKSTREAM_FUZZ_EXAMPLES=20000, and
TASKSTREAM_FUZZ_SEED to vary the messages.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.hostile import BUDGET_REQUESTS, Hostile, hostile_messages
from support.workers import TASKSTREAM, Deployment, TopicReader, WorkerProcess

from bench.loggen import LogShape, ample_sample_pools, generate, mixed_log
from schemas.errors import SchemaError
from streams.processor import BUDGET, decode_message
from taskstream.kafka_io import producer, route

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
HOSTILE = int(os.environ.get("TASKSTREAM_FUZZ_EXAMPLES", "3000"))
SEED = int(os.environ.get("TASKSTREAM_FUZZ_SEED", "20261123"))
PARTITIONS = 4
SHAPE = LogShape(
    events=3_000,
    users=300,
    task_user_every=3,
    task_order_share=0.5,
    claim_share=0.04,
    refund_share=0.06,
    tick_every=300,
    seconds_per_event=600.0,
    seed=23,
)
OUTPUT_TOPICS = ("task-events", "rewards")
INPUT_TOPICS = ("claims", "orders", "refunds", "ticks", BUDGET, BUDGET_REQUESTS)


@dataclass
class Fuzzed:
    deployment: Deployment
    worker: WorkerProcess
    readers: dict[str, TopicReader]
    expected: dict[str, bytes]  # event_id -> canonical JSON, from replay of the good lines
    hostile: dict[str, Hostile]  # source (topic/partition@offset) -> the message sent there


def _replay(root: Path, good: list[bytes], pools: Path) -> dict[str, bytes]:
    events, out = root / "good.jsonl", root / "replay.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in good))
    subprocess.run(
        [
            *(TASKSTREAM, "replay", "--templates", str(SAMPLES / "templates.json")),
            *("--pools", str(pools), "--events", str(events), "--out", str(out), "--no-progress"),
        ],
        check=True,
        capture_output=True,
    )
    expected = {}
    for raw in out.read_bytes().splitlines():
        doc = orjson.loads(raw)
        assert doc["type"] != "dead_letter", doc  # the good lines are all good
        expected[doc["event_id"]] = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return expected


def _produce(deployment: Deployment, good: list[bytes], hostile: list[Hostile]) -> dict[str, Any]:
    """Good lines routed as `taskstream produce` does, a hostile message after
    every few of them; returns source -> hostile message, from delivery reports."""
    settings = deployment.settings
    client = producer(settings)
    landed: dict[str, Hostile] = {}
    failures: list[str] = []

    def send(topic: str, value: bytes | None, key: bytes | None, partition: int = -1,
             hostile: Hostile | None = None) -> None:  # fmt: skip
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            elif hostile is not None:
                landed[f"{msg.topic()}/{msg.partition()}@{msg.offset()}"] = hostile

        while True:
            try:
                client.produce(topic, value, key, partition=partition, on_delivery=report)
                break
            except BufferError:
                client.poll(0.1)
        client.poll(0)

    every = max(1, len(good) // max(1, len(hostile)))
    pending = iter(hostile)
    for n, line in enumerate(good):
        routed = route(settings, line)
        if routed.broadcast:
            for partition in range(PARTITIONS):
                send(routed.topic, routed.value, None, partition)
        else:
            send(routed.topic, routed.value, routed.key)
        if n % every == 0:
            for bad in [next(pending, None) for _ in range(max(1, len(hostile) // len(good)))]:
                if bad is not None:
                    part = -1 if bad.partition is None else bad.partition
                    send(settings.topic(bad.role), bad.value, bad.key, part, bad)
    for bad in pending:
        part = -1 if bad.partition is None else bad.partition
        send(settings.topic(bad.role), bad.value, bad.key, part, bad)
    assert client.flush(60) == 0, "producer could not deliver every message"
    assert not failures, failures[:3]
    assert len(landed) == len(hostile)
    return landed


@pytest.fixture(scope="module")
def fuzzed(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    root = tmp_path_factory.mktemp("fuzz")
    good = [line.value for line in mixed_log(SHAPE) if not line.malformed]
    pools = root / "pools.json"
    pools.write_bytes(orjson.dumps(ample_sample_pools()))
    expected = _replay(root, good, pools)
    rng = random.Random(SEED)
    bad = hostile_messages(
        rng, list(generate(SHAPE)), HOSTILE, budget_share=0.03, partitions=PARTITIONS
    )
    deployment = Deployment(kafka, root, partitions=PARTITIONS)
    deployment.create_topics()
    deployment.publish_templates(SAMPLES / "templates.json", pools)
    landed = _produce(deployment, good, bad)
    readers = {t: deployment.reader(t) for t in (*OUTPUT_TOPICS, "dead-letters")}
    worker = deployment.worker("fuzz").start()
    try:
        yield Fuzzed(deployment, worker, readers, expected, landed)
    finally:
        worker.stop()
        for reader in readers.values():
            reader.close()


def _wait_for_everything(run: Fuzzed, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for reader in run.readers.values():
            reader.poll(0.3)
        outputs = {m["event_id"] for t in OUTPUT_TOPICS for m in run.readers[t].messages}
        dead = {m["source"] for m in run.readers["dead-letters"].messages}
        if outputs >= run.expected.keys() and dead >= run.hostile.keys():
            time.sleep(1.0)  # anything late must agree as well
            for reader in run.readers.values():
                reader.poll(0.3)
            return
        if time.monotonic() > deadline or not run.worker.running():
            raise AssertionError(
                f"{len(run.expected.keys() - outputs)} outputs and "
                f"{len(run.hostile.keys() - dead)} dead letters missing after {timeout:.0f}s "
                f"(worker running: {run.worker.running()})\n{run.worker.log_tail()}"
            )


def _reason(bad: Hostile) -> str | None:
    try:
        decode_message(bad.role, bad.key, bad.value)
    except SchemaError as exc:
        return str(exc)
    return None


def test_the_worker_survives_and_dead_letters_every_hostile_message(fuzzed: Fuzzed) -> None:
    _wait_for_everything(fuzzed, timeout=45 + HOSTILE / 100)
    assert fuzzed.worker.running(), fuzzed.worker.log_tail()
    letters: dict[str, dict[str, Any]] = {}
    for letter in fuzzed.readers["dead-letters"].messages:
        earlier = letters.setdefault(str(letter["source"]), letter)
        assert earlier == letter, "one source, two dead letters"
    assert letters.keys() == fuzzed.hostile.keys()  # every bad one, and only those
    prefix = fuzzed.deployment.name + "."
    for source, letter in letters.items():
        bad = fuzzed.hostile[source]
        assert letter["reason"], source
        if bad.role not in (BUDGET, BUDGET_REQUESTS):
            assert letter["reason"] == _reason(bad), (source, bad.what)
        assert source.startswith(prefix + bad.role + "/")
    kinds = {bad.what for bad in fuzzed.hostile.values()}
    assert {"truncated", "junk", "wrong key", "null value (tombstone)"} <= kinds
    assert any("over the size limit" in k for k in kinds)
    assert "engine failed" not in fuzzed.worker.log_since_start()


def test_the_good_events_give_replays_answer(fuzzed: Fuzzed) -> None:
    _wait_for_everything(fuzzed, timeout=45 + HOSTILE / 100)
    contents: dict[str, bytes] = {}
    for topic in OUTPUT_TOPICS:
        for message in fuzzed.readers[topic].messages:
            body = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
            earlier = contents.setdefault(str(message["event_id"]), body)
            assert earlier == body, f"one id, two contents:\n{earlier!r}\n{body!r}"
    assert contents.keys() == fuzzed.expected.keys()
    different = [i for i, body in contents.items() if body != fuzzed.expected[i]]
    assert not different, f"{len(different)} outputs differ from replay, e.g. {different[:3]}"
    kinds = {orjson.loads(v)["type"] for v in contents.values()}
    assert {"task_claimed", "task_completed", "reward_granted"} <= kinds


def test_every_input_is_consumed_to_its_end(fuzzed: Fuzzed) -> None:
    _wait_for_everything(fuzzed, timeout=45 + HOSTILE / 100)
    deadline = time.monotonic() + 30
    while True:
        behind = {}
        for topic in INPUT_TOPICS:
            lag = fuzzed.deployment.group_lag(topic)
            late = {p: (c, e) for p, (c, e) in lag.items() if c < e}
            if late:
                behind[topic] = late
        if not behind:
            break
        assert time.monotonic() < deadline, f"lag left: {behind}"
        time.sleep(1.0)
    assert fuzzed.worker.running()
