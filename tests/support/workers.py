"""Real worker processes, a producer and an output reader for integration tests.

Each test gets its own app id and topic prefix, so tests share the session's
broker without seeing each other's topics, groups or changelogs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from bench.loggen import Line
from streams.config import Settings
from taskstream.broker import free_port
from taskstream.kafka_io import ensure_topics, group_offsets, producer, route

TASKSTREAM = str(Path(sys.executable).with_name("taskstream"))


@dataclass
class Deployment:
    """One isolated taskstream deployment on the shared test broker."""

    bootstrap: str
    root: Path
    partitions: int = 8
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    # event_id -> (partition, offset) of every event sent with produce()
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "TASKSTREAM_APP_ID": self.name,
            "TASKSTREAM_TOPIC_PREFIX": f"{self.name}.",
            "TASKSTREAM_PARTITIONS": str(self.partitions),
            # The broker's floor: a killed worker's partitions move in ~6 s.
            "TASKSTREAM_SESSION_TIMEOUT": "6",
            # A progress line (events/s, lag) every 2 s in each worker log.
            "TASKSTREAM_PROGRESS_SECONDS": "2",
        }

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def create_topics(self) -> None:
        ensure_topics(self.settings)

    def worker(self, label: str, **extra_env: str) -> WorkerProcess:
        data_dir = self.root / f"worker-{label}"
        env = {
            **os.environ,
            **self.env,
            "TASKSTREAM_DATA_DIR": str(data_dir),
            "TASKSTREAM_STORE": "rocksdb://",
            "TASKSTREAM_WEB_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        return WorkerProcess(label, env, data_dir, self.root / f"worker-{label}.log")

    def publish_templates(self, templates: Path, pools: Path | None = None) -> None:
        args = [TASKSTREAM, "templates", "publish", "--templates", str(templates)]
        if pools is not None:
            args += ["--pools", str(pools)]
        subprocess.run(args, env={**os.environ, **self.env}, check=True, capture_output=True)

    def produce(self, lines: Iterable[bytes | Line], *, in_order: bool = True) -> int:
        """Send input lines as `taskstream produce` does (keyed by user, ticks to
        every partition; a `Line` with a raw topic goes there as-is). Returns the
        number of Kafka messages sent; remembers where each event_id landed.

        `in_order` (default): as an upstream that keeps each user's events in
        order across topics (DESIGN's precondition; `taskstream produce`
        does the same): a user's next event is sent only once the previous
        one is acknowledged (acks=all: readable), and a tick only once
        everything before it is, and before anything after it (docs/DEPLOY.md
        "Producing in order"). Without it, events in flight together may be
        appended in either order, and the workers apply late what comes late
        (recorded: docs/streams.md "Late inputs")."""
        settings = self.settings
        client = producer(settings)
        sent = 0
        in_flight: set[bytes] = set()  # users with an event not acknowledged yet

        def settle() -> None:
            assert client.flush(60) == 0, "producer could not deliver every message"
            in_flight.clear()

        def landed(err: object, msg: Any) -> None:
            assert err is None, err
            try:
                event_id = orjson.loads(msg.value()).get("event_id")
            except (orjson.JSONDecodeError, AttributeError):
                return
            self.positions[event_id] = (msg.partition(), msg.offset())

        def send(topic: str, value: bytes, key: bytes | None, partition: int = -1) -> None:
            nonlocal sent
            while True:
                try:
                    client.produce(topic, value, key, partition=partition, on_delivery=landed)
                    break
                except BufferError:
                    client.poll(0.1)
            client.poll(0)
            sent += 1

        for line in lines:
            item = line if isinstance(line, Line) else Line(line)
            if item.raw_topic is not None:
                send(settings.topic(item.raw_topic), item.value, item.raw_key)
                continue
            routed = route(settings, item.value)
            if routed.broadcast:
                if in_order:
                    settle()
                for partition in range(self.partitions):
                    send(routed.topic, routed.value, None, partition)
                if in_order:
                    settle()
            else:
                if in_order and routed.key is not None:
                    if routed.key in in_flight:
                        settle()
                    in_flight.add(routed.key)
                send(routed.topic, routed.value, routed.key)
        assert client.flush(60) == 0, "producer could not deliver every message"
        return sent

    def open_pools(self, *pool_ids: str) -> None:
        """`taskstream pools open` for each pool: every bucket gets a first grant."""
        for pool_id in pool_ids:
            subprocess.run(
                [TASKSTREAM, "pools", "open", pool_id],
                env={**os.environ, **self.env},
                check=True,
                capture_output=True,
            )

    def pools_status(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """`taskstream pools status --json`: (exit code, pool id -> its sheet)."""
        done = subprocess.run(
            [TASKSTREAM, "pools", "status", "--json", "--no-progress"],
            env={**os.environ, **self.env},
            capture_output=True,
            check=False,
        )
        assert done.returncode in (0, 3), done.stderr.decode()
        sheets = [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]
        return done.returncode, {sheet["pool_id"]: sheet for sheet in sheets}

    def group_lag(self, short_topic: str = "orders") -> dict[int, tuple[int, int]]:
        """partition -> (committed offset of the workers' group, log end offset)."""
        return group_offsets(self.settings, short_topic)

    def cli(
        self, *args: str, timeout: float = 120, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`taskstream ARGS...` against this deployment: exit code, stdout, stderr."""
        return subprocess.run(
            [TASKSTREAM, *args],
            cwd=cwd,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def reader(self, short_topic: str) -> TopicReader:
        return TopicReader(self.bootstrap, self.settings.topic(short_topic))


class WorkerProcess:
    """A `taskstream worker` in its own process, logs to a file."""

    def __init__(self, label: str, env: dict[str, str], data_dir: Path, log_path: Path) -> None:
        self.label = label
        self.env = env
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.log_offset = log.tell()
        self.proc = subprocess.Popen(
            [TASKSTREAM, "worker", "--loglevel", "info"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit, no flush."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def wipe_state(self) -> None:
        """Delete the worker's local RocksDB folder (as if its disk were lost)."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_since_start(self) -> str:
        """What this run of the worker logged (the file is shared by restarts)."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        # The progress line repeats every few seconds: keep only its last one,
        # so the tail shows what happened rather than a wall of counters.
        all_lines = text.splitlines()
        progress = [line for line in all_lines if "progress:" in line]
        events = [line for line in all_lines if "progress:" not in line]
        return "\n".join(events[-lines:] + progress[-1:])

    def held_and_lagging(self) -> str:
        """The worker's non-zero `taskstream_held_events` (events accepted but
        not applied: behind event-time order or a stall on a pool's master)
        and input lags, from its /metrics: what a test whose outputs stopped
        short with every input read needs to tell a stall from a loss."""
        if not self.running():
            return "(not running)"
        url = f"http://127.0.0.1:{self.web_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError as exc:
            return f"(metrics not readable: {exc})"
        wanted = ("taskstream_held_events{", "taskstream_input_lag_messages{")
        lines = [
            line
            for line in text.splitlines()
            if line.startswith(wanted) and float(line.rsplit(" ", 1)[1]) != 0
        ]
        return "\n".join(lines) or "(nothing held, no input lag)"

    def stacks(self, settle_seconds: float = 3.0) -> str:
        """Every thread's and asyncio task's stack in the running worker (mode's
        SIGUSR1 handler writes them to its stderr, our log): what a test that
        timed out needs to say *where* a worker waits, not only that it does."""
        if not self.running():
            return "(not running)"
        before = self.log_path.stat().st_size
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + settle_seconds
        size = before
        while time.monotonic() < deadline:
            time.sleep(0.3)
            grown = self.log_path.stat().st_size
            if grown > before and grown == size:
                break  # written and no longer growing
            size = grown
        with self.log_path.open("rb") as log:
            log.seek(before)
            dump = log.read().decode(errors="replace")
        # mode's part: threads (kept), then tasks with every local (dropped:
        # cut at the first `async for`); ours: each task's whole await chain.
        threads, _, rest = dump.partition("\nTASKS")
        start = rest.find(" asyncio task(s) of this thread's loop")
        return threads + "\n" + rest[rest.rfind("\n", 0, start) + 1 :] if start >= 0 else dump

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def web_port(self) -> int:
        """The port of this worker's faust web server (render API, metrics)."""
        return int(self.env["TASKSTREAM_WEB_PORT"])

    @property
    def web_url(self) -> str:
        """The worker's own web server: /metrics, /health, /ready."""
        return f"http://{self.env.get('TASKSTREAM_WEB_HOST', '127.0.0.1')}:{self.web_port}"

    @property
    def api_url(self) -> str:
        """Its render API process, the URL it advertises to the group (canonical_url)."""
        return f"http://{self.env.get('TASKSTREAM_WEB_HOST', '127.0.0.1')}:{self.web_port + 1}"


class TopicReader:
    """Reads a topic from the beginning, keeping every message it has seen."""

    def __init__(self, bootstrap: str, topic: str, *, quiet: bool = False) -> None:
        self.topic = topic
        self.messages: list[dict[str, object]] = []
        self._next: dict[int, int] = {}  # partition -> offset after the last message read
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                # quiet: no librdkafka lines on stderr (a broker restart on
                # purpose would print dozens of "connection refused").
                **({"log_level": 0} if quiet else {}),
            }
        )
        # Assigned, not subscribed: no consumer group to rejoin after a broker
        # restart (a subscribed reader of the short fault suite once stopped
        # reading for good after one, while the workers' outputs were whole).
        # The topic may not exist yet: assigned at the first poll that finds it.
        self._assigned = False

    def _assign(self) -> bool:
        if not self._assigned:
            found = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if found is None or found.error is not None or not found.partitions:
                return False
            self._consumer.assign(
                [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(found.partitions)]
            )
            self._assigned = True
        return True

    def poll(self, seconds: float = 0.5) -> int:
        """Read what is there now; return how many new messages arrived."""
        before = len(self.messages)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self._assign():
                time.sleep(0.1)
                continue
            batch = self._consumer.consume(num_messages=1000, timeout=0.2)
            for message in batch:
                if message.error():
                    if message.error().code() in (
                        KafkaError._PARTITION_EOF,
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                    ):
                        continue
                    raise RuntimeError(message.error())
                self.messages.append(orjson.loads(message.value()))
                self._next[message.partition()] = message.offset() + 1
        return len(self.messages) - before

    def read_to_end(self, timeout: float = 60.0) -> None:
        """Read until every partition's end offset as of now (a fixed time
        would stop early on a loaded machine, before the assignment even)."""
        metadata = self._consumer.list_topics(self.topic, timeout=10)
        partitions = metadata.topics[self.topic].partitions
        ends = {
            p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            for p in partitions
        }
        deadline = time.monotonic() + timeout
        while any(self._next.get(p, low) < high for p, (low, high) in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic} not read to {ends} in {timeout}s")
            self.poll(0.2)

    def wait_until(
        self,
        done: Callable[[list[dict[str, object]]], bool],
        timeout: float,
        *,
        why: str,
        workers: Iterable[WorkerProcess] = (),
        deployment: Deployment | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.5)
            if done(self.messages):
                return
        logs = "\n\n".join(f"--- worker {w.label} ---\n{w.log_tail()}" for w in workers)
        if deployment is not None:
            lag = deployment.group_lag()
            logs += "\n--- input partitions: (committed, end) ---\n" + ", ".join(
                f"{p}: {c}/{e}" for p, (c, e) in sorted(lag.items())
            )
        raise AssertionError(
            f"timed out after {timeout}s waiting for {why} on {self.topic} "
            f"({len(self.messages)} messages seen)\n{logs}"
        )

    def close(self) -> None:
        self._consumer.close()


def produce_raw(
    deployment: Deployment, short_topic: str, items: Iterable[tuple[bytes, bytes]]
) -> None:
    """Send (key, value) pairs as they are, bypassing routing (for bad input)."""
    client = producer(deployment.settings)
    for key, value in items:
        client.produce(deployment.settings.topic(short_topic), value, key)
    assert client.flush(30) == 0
