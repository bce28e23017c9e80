"""The stream processor on a real broker gives `taskstream replay`'s answer.

One generated log of 20,000+ events (claims, orders, refunds, duplicates,
refunds stamped before their order, ticks, malformed lines) is produced to
Kafka and processed by real worker processes with RocksDB tables. Whatever
happens to the workers (two of them sharing the partitions, SIGKILLs with a
lost RocksDB folder, a third worker joining and leaving), the task events
and rewards de-duplicated by id must equal what `taskstream replay` writes
for the same log, no id may carry two contents, and every malformed line
must be in the dead-letter topic with its reason.

Every input is produced before the workers start: the four input topics are
merged in event time, and a message still in the producer's buffer when a
worker finds its topic caught up could be merged late (the synchronisation
Kafka Streams bounds with max.task.idle.ms). docs/streams.md says more.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from support.workers import TASKSTREAM, Deployment, WorkerProcess

from bench.loggen import Line, LogShape, ample_sample_pools, mixed_log

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SHAPE = LogShape(
    events=20_000,
    users=2_000,
    task_user_every=4,
    task_order_share=0.5,
    claim_share=0.03,
    refund_share=0.06,
    tick_every=500,
    seconds_per_event=110.0,
    seed=11,
)
OUTPUT_TOPICS = ("task-events", "rewards")


@dataclass(frozen=True)
class Expected:
    """What replay says the log must produce."""

    lines: list[Line]
    templates: Path
    pools: Path
    outputs: dict[str, bytes]  # event_id -> canonical JSON of each task event/reward
    dead_reasons: Counter[str]


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> Expected:
    root = tmp_path_factory.mktemp("replay")
    lines = mixed_log(SHAPE)
    log_path = root / "events.jsonl"
    log_path.write_bytes(b"".join(line.value + b"\n" for line in lines))
    pools_path = root / "pools.json"
    pools_path.write_bytes(orjson.dumps(ample_sample_pools()))
    templates = SAMPLES / "templates.json"
    out = root / "replay.jsonl"
    subprocess.run(
        [
            *(TASKSTREAM, "replay", "--templates", str(templates), "--pools", str(pools_path)),
            *("--events", str(log_path), "--out", str(out), "--no-progress"),
        ],
        check=True,
        capture_output=True,
    )
    outputs: dict[str, bytes] = {}
    dead: Counter[str] = Counter()
    for raw in out.read_bytes().splitlines():
        doc = orjson.loads(raw)
        if doc["type"] == "dead_letter":
            dead[doc["reason"]] += 1
        else:
            outputs[doc["event_id"]] = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    assert sum(dead.values()) == sum(line.malformed for line in lines) >= 50
    kinds = {orjson.loads(v)["type"] for v in outputs.values()}
    assert {"task_claimed", "task_completed", "reward_granted", "reward_revoked"} <= kinds
    return Expected(lines, templates, pools_path, outputs, dead)


class Run:
    """A deployment with its log produced, its workers and its output readers."""

    def __init__(self, kafka: str, root: Path, expected: Expected) -> None:
        self.expected = expected
        self.deployment = Deployment(kafka, root, partitions=8)
        self.deployment.create_topics()
        self.deployment.publish_templates(expected.templates, expected.pools)
        self.sent = self.deployment.produce(expected.lines)
        self.readers = {t: self.deployment.reader(t) for t in (*OUTPUT_TOPICS, "dead-letters")}
        self.workers: dict[str, WorkerProcess] = {}
        self.starts = 0

    def start(self, label: str, *, wipe: bool = False) -> WorkerProcess:
        worker = self.workers.get(label) or self.deployment.worker(label)
        if wipe:
            worker.wipe_state()
        self.workers[label] = worker.start()
        self.starts += 1
        return worker

    def outputs_seen(self) -> int:
        """Distinct task events and rewards read so far (reading what has arrived)."""
        for reader in self.readers.values():
            reader.poll(0.2)
        return len({m["event_id"] for t in OUTPUT_TOPICS for m in self.readers[t].messages})

    def wait_for_everything(self, timeout: float) -> None:
        want_outputs = set(self.expected.outputs)
        want_dead = sum(self.expected.dead_reasons.values())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.outputs_seen()
            got = {m["event_id"] for t in OUTPUT_TOPICS for m in self.readers[t].messages}
            dead = {m["event_id"] for m in self.readers["dead-letters"].messages}
            if got >= want_outputs and len(dead) >= want_dead:
                # Anything late (a re-send after a crash) must agree as well.
                time.sleep(1.0)
                self.outputs_seen()
                return
        missing = sorted(want_outputs - got)
        raise AssertionError(
            f"timed out after {timeout:.0f}s: {len(missing)} of {len(want_outputs)} outputs "
            f"and {want_dead - len(dead)} of {want_dead} dead letters missing\n"
            + "".join(f"  missing: {self._describe(i)}\n" for i in missing[:10])
            + self.worker_logs()
        )

    def _describe(self, event_id: str) -> str:
        """An expected output by what a reader needs to find its cause: type,
        user, template, the input that caused it (a full-suite run once
        timed out with 4 of 2,590 missing and nothing to say which)."""
        doc = orjson.loads(self.expected.outputs[event_id])
        fields = ("type", "user_id", "template_id", "pool_id", "caused_by", "at")
        return " ".join(f"{name}={doc[name]}" for name in fields if name in doc)

    def worker_logs(self) -> str:
        """Each worker's log tail, what each running one holds (its held
        events and input lags), then where it waits (its threads' and tasks'
        stacks): called when a wait timed out."""
        tails = [f"--- worker {w.label} ---\n{w.log_tail()}" for w in self.workers.values()]
        held = [
            f"--- worker {w.label}: held events and lags ---\n{w.held_and_lagging()}"
            for w in self.workers.values()
            if w.running()
        ]
        stacks = [
            f"--- worker {w.label}: stacks ---\n{w.stacks()}"
            for w in self.workers.values()
            if w.running()
        ]
        return "\n\n".join(tails + held + stacks)

    def assert_same_answer_as_replay(self) -> None:
        contents: dict[str, bytes] = {}
        for topic in OUTPUT_TOPICS:
            for message in self.readers[topic].messages:
                body = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
                earlier = contents.setdefault(str(message["event_id"]), body)
                assert earlier == body, f"one id, two contents:\n{earlier!r}\n{body!r}"
        extra = set(contents) - set(self.expected.outputs)
        missing = set(self.expected.outputs) - set(contents)
        assert not extra, f"{len(extra)} output(s) replay does not have: {sorted(extra)[:3]}"
        assert not missing, f"{len(missing)} output(s) missing, e.g. {sorted(missing)[:3]}"
        different = [i for i, body in contents.items() if body != self.expected.outputs[i]]
        assert not different, f"{len(different)} outputs differ from replay, e.g. {different[:3]}"

    def assert_dead_letters(self) -> None:
        letters = {str(m["event_id"]): m for m in self.readers["dead-letters"].messages}
        malformed = [line for line in self.expected.lines if line.malformed]
        assert len(letters) == len(malformed)
        assert Counter(str(m["reason"]) for m in letters.values()) == self.expected.dead_reasons
        # Each names where it was read, once, and keeps the original bytes.
        sources = Counter(str(m["source"]) for m in letters.values())
        assert max(sources.values()) == 1
        prefix = self.deployment.name + "."
        assert all(s.startswith(prefix) for s in sources), sorted(sources)[:3]
        payloads = Counter(_payload(m) for m in letters.values())
        assert payloads == Counter(line.value for line in malformed)
        # good + dead = sent: every message of every input partition was
        # consumed (the group commits every few seconds), and all but the dead
        # ones show up in replay's answer.
        deadline = time.monotonic() + 30
        while behind := self.unconsumed():
            assert time.monotonic() < deadline, f"not consumed to the end: {behind}"
            time.sleep(1.0)

    def unconsumed(self) -> dict[str, dict[int, tuple[int, int]]]:
        """input topic -> partition -> (committed, end) where the group is behind."""
        behind = {}
        for topic in ("claims", "orders", "refunds", "ticks"):
            lag = self.deployment.group_lag(topic)
            late = {p: (c, e) for p, (c, e) in lag.items() if c < e}
            if late:
                behind[topic] = late
        return behind

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        for reader in self.readers.values():
            reader.close()


def _payload(letter: dict[str, object]) -> bytes:
    import base64

    if letter.get("payload") is not None:
        return str(letter["payload"]).encode()
    return base64.b64decode(str(letter["payload_b64"]))


@pytest.fixture
def run(kafka: str, tmp_path: Path, expected: Expected) -> Iterator[Run]:
    r = Run(kafka, tmp_path, expected)
    try:
        yield r
    finally:
        r.close()


def test_two_workers_give_replays_answer(run: Run) -> None:
    run.start("a")
    run.start("b")
    run.wait_for_everything(240)
    run.assert_same_answer_as_replay()
    run.assert_dead_letters()
    logs = run.workers["a"].log_since_start() + run.workers["b"].log_since_start()
    assert "dead letter" in logs


def test_sigkills_and_a_lost_rocksdb_folder_change_nothing(run: Run) -> None:
    rng = random.Random(int(os.environ.get("TASKSTREAM_TEST_SEED", "20261123")))
    # Small batches stretch the run so that every kill lands mid-stream.
    extra = {"TASKSTREAM_BATCH_MAX": "200"}
    for label in ("a", "b"):
        run.workers[label] = run.deployment.worker(label, **extra)
        run.start(label)
    total = len(run.expected.outputs)
    kills = 0
    for fraction in (0.08, 0.2, 0.35, 0.5, 0.65, 0.8):
        deadline = time.monotonic() + 180
        while run.outputs_seen() < fraction * total:
            assert time.monotonic() < deadline, f"stalled at {fraction:.0%}\n{run.worker_logs()}"
        time.sleep(rng.uniform(0.0, 1.5))
        label = rng.choice(("a", "b"))
        run.workers[label].kill()
        kills += 1
        run.start(label, wipe=kills == 3)  # the third restart comes back on an empty disk
    assert kills >= 5
    run.wait_for_everything(150)
    run.assert_same_answer_as_replay()
    run.assert_dead_letters()


def test_a_third_worker_joins_and_leaves(run: Run) -> None:
    # One event per batch, the slowest a worker goes (every batch has its
    # fixed costs): the work then lasts ~17 s from the first output, and the
    # third worker needs ~8 s of it to start, read its partitions' changelogs
    # and run a first batch. At three events per batch the work lasted ~9 s
    # and the join raced its end: the third worker found its partitions done
    # and the test waited 180 s for a batch that never came (a fresh-clone
    # run, 2026-12-04; 1 run in 7 alone with a CPU hog).
    extra = {"TASKSTREAM_BATCH_MAX": "1"}
    for label in ("a", "b", "c"):
        run.workers[label] = run.deployment.worker(label, **extra)
    # Warm buckets (`pools open`), so few rewards wait for a grant: this test
    # is about the join and the leave (stalls under crashes: test_budget_pools).
    run.deployment.open_pools("cash", "small_budget", "grand_prizes")
    run.start("a")
    run.start("b")
    total = len(run.expected.outputs)
    deadline = time.monotonic() + 180
    # Join at the first output: the group is processing, so partitions move
    # with state, and as early as that, because outputs come in bursts (a
    # grant waits in the agent's queue behind the events fetched before it).
    while run.outputs_seen() < 1:
        assert time.monotonic() < deadline, run.worker_logs()
    run.start("c")
    deadline = time.monotonic() + 180
    while "loaded" not in run.workers["c"].log_since_start():
        assert run.outputs_seen() < total, (
            "the work ended before the third worker ran a batch: slow the workers down\n"
            + run.worker_logs()
        )
        assert time.monotonic() < deadline, run.worker_logs()
    seen_at_leave = run.outputs_seen()
    run.workers["c"].stop()  # SIGTERM: a clean leave, partitions move back
    print(f"outputs at the leave: {seen_at_leave} of {total}")
    assert seen_at_leave < total, "the leave came after the work: slow the workers down"
    run.wait_for_everything(150)
    run.assert_same_answer_as_replay()
    run.assert_dead_letters()
    assert "loaded" in run.workers["c"].log_since_start(), "the third worker never took a partition"
