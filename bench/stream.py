"""`python -m bench stream`: the stream processor end to end on a real broker.

Three measurements, each on a fresh deployment (own topics and group) of the
same local broker, with `taskstream worker` processes as users run them:

- **throughput**: a backlog of generated events (claims, orders, refunds,
  ticks to every partition) is produced first; then 1 (and 2) workers start.
  Throughput = input messages / (time the group's committed input offsets
  reach the end - time of the first output message). The committed offsets
  are the processor's own positions (streams/kafka/positions.py), so
  "committed to the end" means every input is in the table.
- **latency**: one worker runs; orders, claims and refunds are produced at a
  steady rate: half of one worker's throughput on a backlog of the very log
  the latency run then produces live (`--latency-events`, 600,000: heavier
  per event than the throughput log, half its orders count for a task, and
  heavier the longer it runs, as more users hold a task and their states
  grow), unless --rate is given (then `--latency-events` of the log, or
  `--latency-seconds` at that rate). Before it, `--latency-warmup` seconds
  of the same load with users of their own warm the broker and the
  deployment. For
  every output caused by an order (task_advanced, task_completed,
  reward_granted) latency = the output message's timestamp (CreateTime:
  when the worker handed it to librdkafka) - the order message's timestamp
  (the broker's append time: the input topics are LogAppendTime), one
  machine's clock. `--latency-dump FILE` writes every one of them, to see
  when in the run the slow ones came.
- **memory**: one worker takes one claim from each of N users (so N users
  have state in RocksDB); the worker's resident set size (VmRSS, VmHWM) and
  the RocksDB folder size after it has processed them all.

Results go to stdout as Markdown rows; BENCHMARKS.md keeps them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import (
    Consumer,
    KafkaException,
    TopicPartition,
)

from bench.loggen import START, LogShape, ample_sample_pools, generate
from schemas.codec import encode
from schemas.records import InputEvent, TaskClaim, Tick
from streams.config import INPUT_TOPICS, Settings
from taskstream import broker
from taskstream.kafka_io import ensure_topics, group_offsets, producer, route

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
TASKSTREAM = str(Path(sys.executable).with_name("taskstream"))
OUTPUTS = ("task-events", "rewards", "dead-letters")
# The latency log's length when the capacity is measured on it (`main`).
LATENCY_EVENTS = 600_000


def say(message: str) -> None:
    print(f"[bench stream] {message}", file=sys.stderr, flush=True)


@dataclass
class Deployment:
    bootstrap: str
    root: Path
    partitions: int = 8

    def __post_init__(self) -> None:
        self.name = f"b{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": self.bootstrap,
            "TASKSTREAM_APP_ID": self.name,
            "TASKSTREAM_TOPIC_PREFIX": f"{self.name}.",
            "TASKSTREAM_PARTITIONS": str(self.partitions),
            "TASKSTREAM_COMMIT_INTERVAL": "0.5",
            "TASKSTREAM_PROGRESS_SECONDS": "5",
        }
        self.settings = Settings.from_env(self.env)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.web_ports: dict[int, int] = {}  # worker pid -> its /metrics port
        ensure_topics(self.settings)
        pools_path = self.root / f"{self.name}-pools.json"
        pools_path.write_bytes(orjson.dumps(ample_sample_pools()))
        subprocess.run(
            [
                *(TASKSTREAM, "templates", "publish"),
                *("--templates", str(SAMPLES / "templates.json"), "--pools", str(pools_path)),
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )
        # Warm buckets, as a deployment opens its pools before a campaign: a
        # cold bucket makes its partition's first reward wait for a grant that
        # queues behind the backlog already fetched (see BENCHMARKS.md).
        for pool in ("cash", "small_budget", "grand_prizes"):
            subprocess.run(
                [TASKSTREAM, "pools", "open", pool], env=self.env, check=True, capture_output=True
            )

    def start_worker(self, label: str) -> subprocess.Popen[bytes]:
        web_port = broker.free_port()
        env = {
            **self.env,
            "TASKSTREAM_DATA_DIR": str(self.root / f"{self.name}-{label}"),
            "TASKSTREAM_WEB_PORT": str(web_port),
        }
        log = (self.root / f"{self.name}-{label}.log").open("wb")
        proc = subprocess.Popen(
            [TASKSTREAM, "worker", "--loglevel", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(proc)
        self.web_ports[proc.pid] = web_port
        return proc

    def stop(self) -> None:
        for proc in self.workers:
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def produce(self, events: Iterable[InputEvent], rate: float | None = None) -> dict[str, int]:
        """Send events as `taskstream produce` does; return order event_id -> the
        message's timestamp in the log (ms). With `rate`, pace to that many events/s.

        Every message is encoded and routed before the first is sent, so the
        paced loop only hands records to librdkafka: the load generator shares
        the machine's two cores with the worker and the broker, and when it
        encoded, routed and decoded its delivery reports while pacing it took
        half a core at 21,000 events/s (BENCHMARKS.md "stream")."""
        client = producer(self.settings)
        stamps: dict[str, int] = {}
        orders_topic = self.settings.topic("orders")

        def landed(event_id: str) -> Any:
            def record(err: Any, msg: Any) -> None:
                if err is None:
                    stamps[event_id] = msg.timestamp()[1]

            return record

        records: list[tuple[str, bytes, bytes | None, list[int], str | None]] = []
        for event in events:
            routed = route(self.settings, encode(event))
            targets = list(range(self.partitions)) if routed.broadcast else [-1]
            event_id = event.event_id if routed.topic == orders_topic else None
            key = None if routed.broadcast else routed.key
            records.append((routed.topic, routed.value, key, targets, event_id))
        produce = client.produce
        began = time.monotonic()
        for n, (topic, value, key, targets, event_id) in enumerate(records):
            if rate is not None:
                ahead = began + n / rate - time.monotonic()
                if ahead > 0.001:  # sleep in steps of a millisecond or more, not per event
                    time.sleep(ahead)
            for partition in targets:
                while True:
                    try:
                        if event_id is None:
                            produce(topic, value, key, partition)
                        else:
                            produce(topic, value, key, partition, on_delivery=landed(event_id))
                        break
                    except BufferError:
                        client.poll(0.05)
            if n % 256 == 0:
                client.poll(0)
        client.flush(120)
        return stamps

    def input_counts(self) -> tuple[int, int]:
        """(committed, end) summed over every input partition."""
        for _ in range(120):
            try:
                return self._input_counts()
            except KafkaException as exc:  # a fresh broker's group coordinator loads
                say(f"offsets not readable yet: {exc.args[0].str()}")
                time.sleep(0.5)
        return self._input_counts()

    def _input_counts(self) -> tuple[int, int]:
        committed = end = 0
        for short in INPUT_TOPICS:
            for done, last in group_offsets(self.settings, short).values():
                committed += max(done, 0)
                end += last
        return committed, end

    def wait_consumed(self, timeout: float) -> float:
        """Block until every input is committed; return the time (epoch s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            committed, end = self.input_counts()
            if committed >= end:
                return time.time()
            time.sleep(0.25)
        raise TimeoutError(f"inputs not consumed within {timeout:.0f}s ({committed}/{end})")

    def outputs(self) -> Iterator[tuple[str, dict[str, Any], int]]:
        """Every output message so far: (short topic, document, CreateTime ms)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        try:
            for short in OUTPUTS:
                topic = self.settings.topic(short)
                for p in range(self.partitions):
                    tp = TopicPartition(topic, p)
                    low, high = consumer.get_watermark_offsets(tp, timeout=10)
                    if high <= low:
                        continue
                    consumer.assign([TopicPartition(topic, p, low)])
                    seen = low
                    while seen < high:
                        for msg in consumer.consume(5000, 2.0):
                            value, offset = msg.value(), msg.offset()
                            if msg.error() or value is None or offset is None:
                                continue
                            seen = offset + 1
                            yield short, orjson.loads(value), msg.timestamp()[1]
        finally:
            consumer.close()


@contextlib.contextmanager
def bench_broker(prefix: str) -> Iterator[tuple[str, Path]]:
    """A scratch folder and a broker for one benchmark: KAFKA_BOOTSTRAP's, or
    a local one started for it; the broker we started is stopped and the
    folder removed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    spec = None
    if not bootstrap:
        spec = broker.BrokerSpec.create(port=broker.free_port(), home=root / "broker")
        bootstrap = broker.up(spec, die_with_parent=True).bootstrap
    try:
        yield bootstrap, root
    finally:
        if spec is not None:
            broker.down(spec)
        shutil.rmtree(root, ignore_errors=True)


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def stat_cpu(stat_path: Path) -> tuple[str, float]:
    """(name, CPU seconds: user + system) from a /proc `stat` file: a
    process's (every thread) or one thread's (`/proc/<pid>/task/<tid>/stat`)."""
    stat = stat_path.read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far."""
    return stat_cpu(Path(f"/proc/{pid}/stat"))[1]


def broker_pid(root: Path) -> int | None:
    """The broker bench_broker started under `root` (None: an outside one)."""
    pid_file = root / "broker" / "broker.pid"
    return int(pid_file.read_text().strip()) if pid_file.exists() else None


def cpu_parties(dep: Deployment, root: Path) -> dict[str, int]:
    """The processes whose CPU a latency run shares the machine's cores
    among: the workers, the broker we started (if any), this process (the
    producer)."""
    parties = {f"worker {n + 1}": proc.pid for n, proc in enumerate(dep.workers)}
    broker = broker_pid(root)
    if broker is not None:
        parties["broker"] = broker
    parties["producer (this process)"] = os.getpid()
    return parties


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def throughput(bootstrap: str, root: Path, workers: int, shape: LogShape) -> float:
    dep = Deployment(bootstrap, root)
    try:
        began = time.monotonic()
        dep.produce(generate(shape))
        _, end = dep.input_counts()
        say(f"{workers} worker(s): produced {end} messages in {time.monotonic() - began:.1f}s")
        for n in range(workers):
            dep.start_worker(chr(ord("a") + n))
        done = dep.wait_consumed(900)
        first = min(ts for _, _, ts in dep.outputs()) / 1000
        rate = end / (done - first)
        say(f"{workers} worker(s): {end} messages in {done - first:.1f}s = {rate:,.0f} msg/s")
        return rate
    finally:
        dep.stop()


def latency_shape(events: int) -> LogShape:
    """The latency run's log: more of the orders count for a task than in the
    throughput log (half, not a fifth), more claims, and no ticks (each
    would go to every partition; the ticks topic stays silent)."""
    return LogShape(
        events=events,
        users=100_000,
        task_user_every=10,
        task_order_share=0.5,
        claim_share=0.05,
        tick_every=10**9,
        seed=5,
    )


def warm_up_log(shape: LogShape, events: int) -> tuple[list[InputEvent], int]:
    """`events` of the latency log's shape as a warm-up: users and event ids
    of their own ("w" prefixed), so no measured output is theirs and no
    measured user holds their state, and event times from the log's start;
    with the event-time span they take, by which the measured log is shifted
    so that no measured event is later than one already applied (a late
    input skips the event-time merge, which would flatter the figure)."""
    # Denser in event time than the measured log, so the two stay within
    # the sample templates' month together.
    warm = replace(
        shape, events=events, seed=shape.seed + 1, seconds_per_event=shape.seconds_per_event / 10
    )
    renamed: list[InputEvent] = []
    latest = START
    for event in generate(warm):
        latest = max(latest, event.at)
        if isinstance(event, Tick):
            renamed.append(event)
        else:
            renamed.append(
                replace(event, event_id=f"w{event.event_id}", user_id=f"w{event.user_id}")
            )
    return renamed, latest - START + 1


def shifted(events: Iterable[InputEvent], micros: int) -> Iterator[InputEvent]:
    for event in events:
        yield replace(event, at=event.at + micros)


def latency(
    bootstrap: str,
    root: Path,
    rate: float,
    events: int,
    dump: Path | None = None,
    warmup: float = 15.0,
) -> dict[str, float]:
    """Order -> output latencies over `events` of the latency log produced
    live at `rate` events/s; with
    `dump`, every measured output also goes to that file as a CSV line
    (order's timestamp ms, output's timestamp ms, output type), to see
    when in the run the slow ones came."""
    dep = Deployment(bootstrap, root)
    try:
        dep.start_worker("a")
        # Warm-up: the worker is assigned its partitions and has the catalog.
        # (claims of their own ids, so no warm-up output looks like a measured one)
        dep.produce(
            TaskClaim(f"warm-{n}", f"w{n:05d}", "clear_box_per_order", 1_700_000_000_000_000, ())
            for n in range(2000)
        )
        dep.wait_consumed(120)
        shape = latency_shape(events)
        # Warm-up load at the measured rate on this deployment's own topics:
        # a fresh broker JIT-compiles for its first ~10 s under load (more
        # than a core of two), and a fresh deployment's partitions answered
        # their first second of writes slowly (librdkafka deliveries of 100-
        # 430 ms, the worker's settles waiting on them), which alone was
        # over 1 % of a 30 s run's outputs and so its p99.
        warm, warm_span = warm_up_log(shape, int(rate * warmup))
        if warm:
            began = time.monotonic()
            dep.produce(warm, rate=rate)
            dep.wait_consumed(300)
            say(f"warmed up: {len(warm):,} events in {time.monotonic() - began:.1f}s")
        parties = cpu_parties(dep, root)
        cpu_before = {name: cpu_seconds(pid) for name, pid in parties.items()}
        began = time.monotonic()
        stamps = dep.produce(shifted(generate(shape), warm_span), rate=rate)
        dep.wait_consumed(300)
        span = time.monotonic() - began
        cores = {
            name: (cpu_seconds(pid) - cpu_before[name]) / span for name, pid in parties.items()
        }
        say(
            f"CPU while producing and consuming ({span:.1f}s), in cores: "
            + ", ".join(f"{name} {used:.2f}" for name, used in cores.items())
            + f"; together {sum(cores.values()):.2f} of {os.cpu_count()}"
        )
        gaps: dict[str, list[int]] = {}
        rows: list[str] = []
        for _, doc, ts in dep.outputs():
            sent = stamps.get(str(doc.get("caused_by")))
            if sent is not None:
                gaps.setdefault(str(doc["type"]), []).append(ts - sent)
                rows.append(f"{sent},{ts},{doc['type']}")
        if dump is not None:
            dump.write_text("order_ms,output_ms,type\n" + "\n".join(sorted(rows)) + "\n")
            say(f"{len(rows):,} latencies written to {dump}")
        every = sorted(g for values in gaps.values() for g in values)
        if not every:
            raise RuntimeError("no output was caused by a measured order: run longer")
        rewards = sorted(gaps.get("reward_granted", []))
        result = {
            "rate": rate,
            "outputs": len(every),
            "p50": statistics.median(every),
            "p99": every[int(len(every) * 0.99)],
            "max": every[-1],
            "rewards": len(rewards),
            "reward_p50": statistics.median(rewards) if rewards else float("nan"),
            "reward_p99": rewards[int(len(rewards) * 0.99)] if rewards else float("nan"),
            "cores": sum(cores.values()),
        }
        say(f"latency at {rate:,.0f} ev/s: {result}")
        return result
    finally:
        dep.stop()


def memory(bootstrap: str, root: Path, users: int) -> tuple[int, int, float]:
    dep = Deployment(bootstrap, root)
    try:
        proc = dep.start_worker("a")
        base = 1_750_000_000_000_000
        claims = (
            TaskClaim(f"m{n:08d}", f"u{n:07d}", "clear_box_per_order", base + n, ())
            for n in range(users)
        )
        dep.produce(claims)
        dep.wait_consumed(1800)
        time.sleep(2)
        rss, hwm = rss_kib(proc.pid)
        size = folder_mib(root / f"{dep.name}-a")
        say(
            f"{users:,} users: RSS {rss / 1024:.0f} MiB (peak {hwm / 1024:.0f}), "
            f"RocksDB {size:.0f} MiB"
        )
        return rss, hwm, size
    finally:
        dep.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench stream")
    parser.add_argument("--events", type=int, default=200_000, help="backlog size")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rate", type=float, help="latency run's events/s (default: half)")
    parser.add_argument(
        "--latency-events",
        type=int,
        help="events of the latency log (default 600,000): the capacity run takes them as a "
        "backlog, then the latency run produces the same events live at half that capacity; "
        "with --rate, the latency run's events instead of rate x --latency-seconds",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=30.0,
        help="with --rate and no --latency-events: the latency run's length "
        "(rate x seconds events)",
    )
    parser.add_argument(
        "--latency-dump",
        type=Path,
        help="write every measured latency to this CSV file (order ms, output ms, type)",
    )
    parser.add_argument(
        "--latency-warmup",
        type=float,
        default=15.0,
        help="seconds of load at the latency run's rate, on the measured deployment "
        "(users of its own, earlier event times), before the measured run",
    )
    parser.add_argument("--memory-users", default="100000,1000000")
    parser.add_argument("--skip", default="", help="comma list of: throughput,latency,memory")
    args, _ = parser.parse_known_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    rows: list[str] = []
    with bench_broker("bench-stream-") as (bootstrap, root):
        shape = LogShape(events=args.events, users=args.users, seed=20261123)
        if "throughput" not in skip:
            for workers in (1, 2):
                rate = throughput(bootstrap, root, workers, shape)
                rows.append(
                    f"| throughput, {workers} worker(s), {args.events:,} events "
                    f"| {rate:,.0f} msg/s |"
                )
        if "latency" not in skip:
            rate = args.rate
            if rate is None:
                # Half of one worker's capacity on the latency run's own log
                # (heavier per event than the throughput log above), all of
                # it: the work per event grows along it, as more of its
                # orders reach a user with a task and those users' states
                # grow (a capacity taken on its first 200,000 events left
                # the worker's event loop 86-89 % busy from the middle of a
                # 675,000-event run at "half" of it, BENCHMARKS.md "stream").
                events = args.latency_events or LATENCY_EVENTS
                capacity = throughput(bootstrap, root, 1, latency_shape(events))
                rows.append(
                    f"| throughput, 1 worker, {events:,} events of the latency run's log "
                    f"| {capacity:,.0f} msg/s |"
                )
                rate = capacity / 2
            else:
                events = args.latency_events or int(rate * args.latency_seconds)
            lat = latency(bootstrap, root, rate, events, args.latency_dump, args.latency_warmup)
            rows.append(
                f"| latency at {rate:,.0f} ev/s, {lat['outputs']:,} order-caused outputs | "
                f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms |"
            )
            rows.append(
                f"| latency order -> reward_granted ({lat['rewards']:,} rewards) | "
                f"p50 {lat['reward_p50']:.0f} ms, p99 {lat['reward_p99']:.0f} ms |"
            )
            rows.append(
                f"| CPU during the latency run (worker + broker + producer) | "
                f"{lat['cores']:.2f} of {os.cpu_count()} cores |"
            )
        if "memory" not in skip:
            for users in (int(u) for u in args.memory_users.split(",")):
                rss, hwm, size = memory(bootstrap, root, users)
                rows.append(
                    f"| memory, {users:,} users with state | RSS {rss / 1024:.0f} MiB "
                    f"(peak {hwm / 1024:.0f} MiB), RocksDB folder {size:.0f} MiB |"
                )
    print("| measurement | result |\n|---|---|")
    print("\n".join(rows))
    return 0
