"""`python -m bench peer`: one taskstream worker against one Quix Streams worker.

The workload of GitHub issue 14 (bench/peer_log.py): 200,000 input messages
(--events) of 40,000 users (--users), each user claiming the cumulative
template of bench/peer_templates.json once, orders in rounds, 5% of them
refunded in full later, 1% of the messages re-sent. The same bytes
(schemas.codec.encode, keyed by user_id, routed by taskstream.kafka_io.route)
are produced as a backlog to each system's own fresh topics (8 partitions)
on the same local broker (or KAFKA_BOOTSTRAP's); then:

- taskstream: one `taskstream worker` process, started as bench/stream.py's
  Deployment.start_worker starts it (same environment), after the template
  and an ample pool are published and the pool opened;
- Quix Streams: one process of bench/peer_quix.py run by the Python of
  `.cache/peer-venv` (quixstreams 3.28.1, installed there if missing).

Each runs until every reward the pure reference (peer_log.expected_rewards)
expects is on its output topic and its group has committed every input; then
it is stopped. The output topics are created with LogAppendTime, so a
reward's timestamp is when the broker appended it. Measured:

- events/s (reward span) = input messages / (last reward - first reward);
  the first reward comes only when users have 3 orders, about 3/5 into the
  log, so this is no processing rate by itself, but it is the same for both
  systems (the issue's measure);
- events/s (wall) = input messages / (last reward - process start), start-up
  included (Quix spends about 10 s of it assigning partitions: py-spy shows
  its on_assign in get_watermark_offsets, once per partition);
- CPU s = utime + stime of the worker (all threads; children too, none
  expected) from /proc/<pid>/stat when its last expected reward has been
  seen (also read again just before stopping, on stderr); peak RSS = VmHWM.

Neither works through a backlog's partitions evenly (stderr lists each input
partition's first and last reward), so the reward span covers a different
share of each one's work; CPU µs/event is the steadier comparison.

With --quix-checkpoint S a third system runs in each round: the same Quix
worker with `commit_interval=S`. Quix checkpoints its state (changelog
records and RocksDB) and commits offsets every 5 s by default, so a key
changed many times in between is written once; taskstream writes every
changed user durably with each batch (its redo record, RocksDB write batch
and changelog records, acknowledged within SETTLE_SECONDS = 50 ms). S = 0.05
compares the two at one durability cadence.

Both systems must emit the same (user_id, reward type) counts, and the
reference's: otherwise exit 1. --repeat N runs N rounds, each system once
per round in turns (the order alternating), and reports medians, and each
round's ratios with their medians (steadier when the machine drifts
between rounds). The Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from bench.peer_log import (
    GRANTED,
    POOLS,
    REVOKED,
    TEMPLATES,
    PeerShape,
    PeerTemplate,
    describe,
    expected_rewards,
    generate,
    wire,
)
from bench.stream import bench_broker, broker_pid, cpu_seconds, stat_cpu
from streams.config import CLAIMS, ORDERS, REFUNDS, REWARDS, TICKS, Settings
from streams.kafka.partitioner import partition_for
from taskstream import broker
from taskstream.kafka_io import admin, ensure_topics, group_offsets, producer, route

ROOT = Path(__file__).resolve().parents[1]
TASKSTREAM = str(Path(sys.executable).with_name("taskstream"))
PEER_VENV = ROOT / ".cache" / "peer-venv"
QUIX_VERSION = "3.28.1"
QUIX_APP = Path(__file__).resolve().with_name("peer_quix.py")
PARTITIONS = 8
READ = (CLAIMS, ORDERS, REFUNDS)  # the inputs both workers read (the log has no ticks)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[bench peer] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ systems


def create_topics(settings: Settings, names: list[str], log_append: set[str]) -> None:
    """Our topics of `names` (short names), 8 partitions; LogAppendTime for `log_append`."""
    topics = [
        NewTopic(
            settings.topic(name),
            num_partitions=settings.partitions,
            replication_factor=settings.replication or -1,  # 0 (auto): the broker's default
            config={"message.timestamp.type": "LogAppendTime"} if name in log_append else {},
        )
        for name in names
    ]
    client = admin(settings)  # kept alive until every future is done
    for name, future in client.create_topics(topics, operation_timeout=30).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"cannot create {name}: {exc}") from None


@dataclass
class System:
    label: str
    settings: Settings  # its topics (prefix), its group (app_id)
    root: Path
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / f"{self.settings.app_id}.log"

    @property
    def output_topic(self) -> str:
        return self.settings.topic(REWARDS)

    def start(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def written(self) -> dict[str, int]:
        """Bytes in the broker's log files of each topic this system wrote
        (its inputs left out), as far as the broker we started under our root
        shows them; {} for an outside broker."""
        data = self.root / "broker" / "data"
        inputs = {self.settings.topic(name) for name in (CLAIMS, ORDERS, REFUNDS, TICKS)}
        sizes: Counter[str] = Counter()
        for folder in data.glob(f"*{self.settings.app_id}*"):
            topic = folder.name.rpartition("-")[0]
            if topic not in inputs:
                sizes[topic] += sum(f.stat().st_size for f in folder.glob("*.log"))
        return dict(sizes)


class Taskstream(System):
    """A deployment as bench/stream.py's Deployment makes one, with our template."""

    def __init__(
        self,
        bootstrap: str,
        root: Path,
        templates: Path = TEMPLATES,
        pools: Path = POOLS,
        label: str = "taskstream",
    ) -> None:
        name = f"t{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": bootstrap,
            "TASKSTREAM_APP_ID": name,
            "TASKSTREAM_TOPIC_PREFIX": f"{name}.",
            "TASKSTREAM_PARTITIONS": str(PARTITIONS),
            "TASKSTREAM_COMMIT_INTERVAL": "0.5",
            "TASKSTREAM_PROGRESS_SECONDS": "5",
        }
        super().__init__(label, Settings.from_env(self.env), root)
        # The rewards topic first, with the broker's append time; the rest as
        # the worker would create them.
        create_topics(self.settings, [REWARDS], {REWARDS})
        ensure_topics(self.settings)
        publish = ["templates", "publish", "--templates", str(templates), "--pools", str(pools)]
        opened = [["pools", "open", p["pool_id"]] for p in orjson.loads(pools.read_bytes())]
        for command in [publish, *opened]:  # warm buckets, as Deployment does
            done = subprocess.run([TASKSTREAM, *command], env=self.env, capture_output=True)
            if done.returncode:
                raise RuntimeError(
                    f"taskstream {shlex.join(command)} failed ({done.returncode}):\n"
                    + (done.stdout + done.stderr).decode(errors="replace")[-3000:]
                )

    def start(self) -> subprocess.Popen[bytes]:
        env = {
            **self.env,
            "TASKSTREAM_DATA_DIR": str(self.root / f"{self.settings.app_id}-a"),
            "TASKSTREAM_WEB_PORT": str(broker.free_port()),
        }
        return subprocess.Popen(
            [TASKSTREAM, "worker", "--loglevel", "warning"],
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )


class Quix(System):
    def __init__(
        self, bootstrap: str, root: Path, python: Path, commit_interval: float | None = None
    ) -> None:
        name = f"q{uuid.uuid4().hex[:8]}"
        settings = Settings(
            bootstrap=bootstrap, app_id=name, topic_prefix=f"{name}.", partitions=PARTITIONS
        )
        label = f"Quix Streams {QUIX_VERSION}"
        if commit_interval is not None:
            label += f", checkpoint every {commit_interval:g} s"
        super().__init__(label, settings, root)
        self.python = python
        self.commit_interval = commit_interval
        create_topics(self.settings, [CLAIMS, ORDERS, REFUNDS, TICKS, REWARDS], {REWARDS})

    def start(self) -> subprocess.Popen[bytes]:
        s = self.settings
        return subprocess.Popen(
            [
                *(str(self.python), str(QUIX_APP)),
                *("--bootstrap", s.bootstrap, "--group", s.app_id, "--prefix", s.topic_prefix),
                *("--output", self.output_topic, "--template", str(TEMPLATES)),
                *("--state-dir", str(self.root / f"{s.app_id}-state")),
                *(
                    ()
                    if self.commit_interval is None
                    else ("--commit-interval", str(self.commit_interval))
                ),
            ],
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )


def peer_python() -> Path:
    """The Python of .cache/peer-venv, with quixstreams QUIX_VERSION (installed if missing)."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        say(f"creating {PEER_VENV.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('quixstreams'))"]
    found = subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip()
    if found != QUIX_VERSION:
        say(f"installing quixstreams=={QUIX_VERSION} into {PEER_VENV.relative_to(ROOT)}")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"quixstreams=={QUIX_VERSION}"],
            check=True,
        )
    return python


# ---------------------------------------------------------------- measuring


def produce(settings: Settings, lines: list[bytes]) -> float:
    """The backlog, routed as `taskstream produce` routes it; return seconds taken."""
    client = producer(settings)
    failed: list[str] = []

    def landed(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    began = time.monotonic()
    for line in lines:
        routed = route(settings, line)
        while True:
            try:
                client.produce(routed.topic, routed.value, routed.key, on_delivery=landed)
                break
            except BufferError:
                client.poll(0.05)
        client.poll(0)
    if client.flush(120) or failed:
        raise RuntimeError(f"backlog not delivered: {failed[:3]}")
    return time.monotonic() - began


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS KiB) of the process, its threads and its children."""
    ticks = hwm = 0
    for n, each in enumerate([pid, *descendants(pid)]):
        stat = Path(f"/proc/{each}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (every thread)
        if n == 0:
            ticks += int(fields[13]) + int(fields[14])  # children it has waited for
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return ticks / CLOCK_TICKS, hwm


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (threads of one name summed) of the process
    and its children: which thread a run's CPU went to."""
    by_name: defaultdict[str, float] = defaultdict(float)
    for each in [pid, *descendants(pid)]:
        for task in Path(f"/proc/{each}/task").glob("*"):
            try:
                name, cpu = stat_cpu(task / "stat")
            except OSError:
                continue  # the thread ended meanwhile
            by_name[name] += cpu
    return dict(by_name)


def inputs_committed(settings: Settings) -> bool:
    try:
        return all(
            max(done, 0) >= end
            for short in READ
            for done, end in group_offsets(settings, short).values()
        )
    except KafkaException:
        return False  # the group coordinator is still loading


@dataclass
class Result:
    label: str
    events: int
    started: float  # epoch s, just before the process started
    first_ms: int  # broker append time of the first reward
    last_ms: int
    cpu_s: float
    hwm_kib: int
    counts: Counter[tuple[str, str]]
    copies: int  # reward messages seen again (same reward_id and type)
    partitions: dict[int, tuple[int, int]]  # input partition -> first, last reward (ms)
    stop_s: float
    cpu_at_stop: float
    cpu_at_first: float  # CPU seconds when its first reward was seen (start-up)
    threads: dict[str, float]  # CPU seconds by thread name when the last reward was seen
    broker_cpu: float | None  # the broker's CPU seconds from start to the last reward
    produce_s: float = 0.0  # how long producing its backlog took

    @property
    def span_rate(self) -> float:
        return self.events / max((self.last_ms - self.first_ms) / 1000, 1e-3)

    @property
    def wall_s(self) -> float:
        return self.last_ms / 1000 - self.started

    @property
    def wall_rate(self) -> float:
        return self.events / self.wall_s

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6


def output_watcher(system: System, name: str) -> Consumer:
    """A consumer of the system's output topic from its beginning, in no group."""
    watcher = Consumer(
        {
            "bootstrap.servers": system.settings.bootstrap,
            "group.id": f"{name}-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    watcher.assign(
        [TopicPartition(system.output_topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
    )
    return watcher


def run(system: System, events: int, want: int, timeout: float) -> Result:
    """Start the worker, follow its output topic until it is done, stop it."""
    watcher = output_watcher(system, "peer-watch")
    seen: set[tuple[str, str]] = set()
    counts: Counter[tuple[str, str]] = Counter()
    spans: dict[int, tuple[int, int]] = {}  # input partition -> first, last reward (ms)
    copies = 0

    def take(batch: list[Any]) -> int:
        """Count the new rewards of a batch; return how many were new."""
        nonlocal copies
        new = 0
        for msg in batch:
            if msg.error() or msg.value() is None:
                continue
            kind, ts = msg.timestamp()
            if kind != 2:  # confluent_kafka.TIMESTAMP_LOG_APPEND_TIME
                raise RuntimeError(f"{system.output_topic}: not LogAppendTime ({kind})")
            doc = orjson.loads(msg.value())
            key = (str(doc["reward_id"]), str(doc["type"]))
            if key in seen:
                copies += 1
                continue
            seen.add(key)
            new += 1
            user = str(doc["user_id"])
            counts[user, key[1]] += 1
            p = partition_for(user.encode(), PARTITIONS)
            lo, hi = spans.get(p, (ts, ts))
            spans[p] = (min(lo, ts), max(hi, ts))
        return new

    sample: tuple[float, int] | None = None
    first_cpu: float | None = None
    threads: dict[str, float] = {}
    broker = broker_pid(system.root)
    broker_began = None if broker is None else cpu_seconds(broker)
    broker_cpu: float | None = None
    started = time.time()
    proc = system.start()
    say(f"{system.label}: worker pid {proc.pid} started; waiting for {want:,} rewards")
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    next_check = next_report = time.monotonic() + 1.0
    try:
        while True:
            if take(watcher.consume(5000, 0.2)):
                last_new = time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{system.label} exited with {proc.returncode}; its log:\n"
                    + system.log_path.read_text(errors="replace")[-3000:]
                )
            now = time.monotonic()
            if first_cpu is None and seen:
                first_cpu = usage(proc.pid)[0]
            if sample is None and len(seen) >= want:
                sample = usage(proc.pid)
                threads = thread_cpu(proc.pid)
                if broker is not None and broker_began is not None:
                    broker_cpu = cpu_seconds(broker) - broker_began
                last_s = max((hi for _, hi in spans.values()), default=0) / 1000 - started
                say(f"{system.label}: all {want:,} rewards out, {last_s:.1f}s after start")
            if now >= next_report:
                elapsed = now - deadline + timeout
                say(f"{system.label}: {len(seen):,}/{want:,} rewards after {elapsed:.0f}s")
                next_report = now + 10
            if now >= next_check and (sample is not None or now - last_new > 5):
                next_check = now + 1.0
                if inputs_committed(system.settings):
                    if sample is None:  # fewer than expected: one more grace period
                        if now - last_new > 10:
                            sample = usage(proc.pid)
                            threads = thread_cpu(proc.pid)
                            break
                        continue
                    break
            if now > deadline:
                raise TimeoutError(
                    f"{system.label}: {len(seen):,}/{want:,} rewards after {timeout:.0f}s"
                )
        # Anything else it sends now would be an extra reward: read up to the end.
        take(watcher.consume(5000, 1.0))
        at_stop = usage(proc.pid)[0]
    finally:
        watcher.close()
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            say(f"{system.label}: still running 60s after SIGTERM: killed")
            proc.kill()
            proc.wait()
        stop_s = time.monotonic() - began
    assert sample is not None
    return Result(
        system.label,
        events,
        started,
        min((lo for lo, _ in spans.values()), default=0),
        max((hi for _, hi in spans.values()), default=0),
        sample[0],
        sample[1],
        counts,
        copies,
        spans,
        stop_s,
        at_stop,
        0.0 if first_cpu is None else first_cpu,
        threads,
        broker_cpu,
    )


def warm_up(system: System, lines: list[bytes], want: int, timeout: float) -> None:
    """An untimed run on its own topics before the measured ones: the first
    run on a fresh broker also pays for the broker's JIT compilation and
    first segments (its CPU: ~11 s against ~3.5 s in later runs of the same
    log), and would otherwise always be ours."""
    produce(system.settings, lines)
    result = run(system, len(lines), want, timeout)
    broker = "unknown" if result.broker_cpu is None else f"{result.broker_cpu:.1f}s"
    say(
        f"warm-up run ({system.label}, not counted): {result.span_rate:,.0f} ev/s (span), "
        f"CPU {result.cpu_s:.1f}s, broker CPU {broker}"
    )


def log_problems(system: System) -> list[str]:
    lines = system.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if "Traceback" in line or "ERROR" in line or "[E]" in line]


# ---------------------------------------------------------------- reporting


def by_type(counts: Counter[tuple[str, str]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (_, kind), n in counts.items():
        out[kind] += n
    return out


def differences(a: Counter[tuple[str, str]], b: Counter[tuple[str, str]]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{u} {k}: {a[u, k]} vs {b[u, k]}" for u, k in keys if a[u, k] != b[u, k]]


def median_row(results: list[Result]) -> dict[str, float]:
    return {
        "span": statistics.median(r.span_rate for r in results),
        "wall": statistics.median(r.wall_rate for r in results),
        "cpu": statistics.median(r.cpu_s for r in results),
        "cpu_ev": statistics.median(r.cpu_us_per_event for r in results),
        "rss": statistics.median(r.hwm_kib / 1024 for r in results),
    }


def round_ratios(ours: list[Result], theirs: list[Result]) -> str:
    """Each round's ratios (its runs came in turns, a minute or two apart)
    and their medians: a drift of the machine between rounds, which moves
    every system's figures together, cancels out of each round's ratio but
    not out of the ratio of medians taken across rounds."""
    rounds = list(zip(ours, theirs, strict=True))
    cpu = [a.cpu_s / b.cpu_s for a, b in rounds]
    span = [a.span_rate / b.span_rate for a, b in rounds]
    return (
        f"CPU {' / '.join(f'{x:.2f}' for x in cpu)} (median **{statistics.median(cpu):.2f}**), "
        f"events/s (span) {' / '.join(f'{x:.2f}' for x in span)} "
        f"(median **{statistics.median(span):.2f}**)"
    )


def command_line() -> str:
    exe = sys.executable
    with contextlib.suppress(ValueError):
        exe = os.path.relpath(exe)
    return shlex.join([exe, "-m", "bench", *sys.argv[1:]])


def taskstream_tree() -> str:
    """The commit the worker runs, and whether streams/ or app/ differ from it."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "streams", "app", "schemas", "taskstream"],
        capture_output=True,
        text=True,
    )
    changed = len(dirty.stdout.splitlines())
    note = f" + {changed} uncommitted change(s) in its code" if changed else ""
    return f"taskstream at {head.stdout.strip() or '?'}{note}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench peer")
    parser.add_argument("--events", type=int, default=200_000, help="input messages")
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, alternating")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    parser.add_argument("--logs", type=Path, help="copy the workers' logs to this folder")
    parser.add_argument(
        "--pools",
        action="store_true",
        help="taskstream alone on the same log three ways: no pool, an ample pool, a hot pool "
        "(every reward paid from one finite pool over 8 partitions, refilled by its master)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the untimed first run that warms the broker up (a fresh broker's JIT "
        "compilation and first segments cost it ~7 extra CPU s in whichever run comes first)",
    )
    parser.add_argument(
        "--quix-checkpoint",
        type=float,
        metavar="SECONDS",
        help="also run Quix with this commit_interval (its state checkpoint: changelog and "
        "RocksDB written, offsets committed; default 5 s). Ours writes every changed user "
        "durably each batch (settled within 50 ms): 0.05 compares the two at one cadence",
    )
    args, _ = parser.parse_known_args(argv)
    if args.pools:
        return pool_variants(args)
    print(f"command: `{command_line()}`\n")
    began = time.monotonic()
    tree = taskstream_tree()

    python = peer_python()
    shape = PeerShape(events=args.events, users=args.users, seed=args.seed)
    log = generate(shape)
    lines = wire(log)
    expected = expected_rewards(log, PeerTemplate.load())
    want = sum(expected.values())
    kinds = describe(log)
    say(
        f"log: {len(lines):,} messages = {kinds}; reference: {dict(by_type(expected))} "
        f"({len({u for u, _ in expected}):,} users rewarded)"
    )

    results: dict[str, list[Result]] = {}
    problems = 0
    with bench_broker("bench-peer-") as (bootstrap, root):
        if args.warmup:
            warm_up(Taskstream(bootstrap, root), lines, want, args.timeout)
        for n in range(args.repeat):
            systems: list[System] = [Taskstream(bootstrap, root), Quix(bootstrap, root, python)]
            if args.quix_checkpoint is not None:
                systems.append(Quix(bootstrap, root, python, args.quix_checkpoint))
            for system in systems if n % 2 == 0 else systems[::-1]:
                seconds = produce(system.settings, lines)
                say(f"{system.label}: produced the backlog in {seconds:.1f}s")
                result = run(system, len(lines), want, args.timeout)
                result.produce_s = seconds
                results.setdefault(system.label, []).append(result)
                issues = log_problems(system)
                first_s = result.first_ms / 1000 - result.started
                say(
                    f"{system.label} run {n + 1}: first reward {first_s:.1f}s after start, "
                    f"last {result.wall_s:.1f}s; {result.span_rate:,.0f} ev/s (span), "
                    f"{result.wall_rate:,.0f} ev/s (wall); CPU {result.cpu_s:.1f}s "
                    f"({result.cpu_at_stop:.1f}s at stop); "
                    f"peak RSS {result.hwm_kib / 1024:.0f} MiB; stopped in {result.stop_s:.1f}s; "
                    f"{result.copies} repeated reward message(s); "
                    f"{len(issues)} error line(s) in its log"
                )
                for line in issues[:5]:
                    say(f"  {line[:300]}")
                written = system.written()
                say(
                    f"  wrote {sum(written.values()) / 2**20:.1f} MiB to the broker: "
                    + ", ".join(
                        f"{topic.removeprefix(system.settings.topic_prefix)} {size / 2**20:.1f}"
                        for topic, size in sorted(written.items(), key=lambda kv: -kv[1])
                        if size >= 2**16
                    )
                )
                say(
                    f"  CPU at the first reward {result.cpu_at_first:.1f}s; the broker's "
                    f"CPU from start to the last reward "
                    + ("unknown" if result.broker_cpu is None else f"{result.broker_cpu:.1f}s")
                    + "; by thread: "
                    + ", ".join(
                        f"{name} {cpu:.1f}s"
                        for name, cpu in sorted(result.threads.items(), key=lambda kv: -kv[1])
                        if cpu >= 0.05
                    )
                )
                say(
                    "  rewards by input partition, first-last (s after start): "
                    + ", ".join(
                        f"p{p} {lo / 1000 - result.started:.1f}-{hi / 1000 - result.started:.1f}"
                        for p, (lo, hi) in sorted(result.partitions.items())
                    )
                )
                if args.logs:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    shutil.copy(system.log_path, args.logs / system.log_path.name)

    labels = list(results)
    ts_label, qx_label = labels[0], labels[1]
    ts, qx = results[ts_label], results[qx_label]
    print(
        f"{len(lines):,} input messages ({kinds.get('task_claim', 0):,} claims, "
        f"{kinds.get('order_paid', 0):,} orders, {kinds.get('order_refunded', 0):,} refunds, "
        f"{kinds.get('resends', 0):,} re-sends), {args.users:,} users, {PARTITIONS} partitions, "
        f"one worker each; {args.repeat} run(s) each, medians; {os.cpu_count()} cores; "
        f"{tree}\n"
    )
    print("| rewards | taskstream | Quix Streams | reference |\n|---|---|---|---|")
    for kind in (GRANTED, REVOKED):
        print(
            f"| {kind} | {by_type(ts[-1].counts)[kind]:,} | {by_type(qx[-1].counts)[kind]:,} "
            f"| {by_type(expected)[kind]:,} |"
        )
    print(
        f"| (user, type) pairs | {len(ts[-1].counts):,} | {len(qx[-1].counts):,} "
        f"| {len(expected):,} |\n"
    )
    print(
        "| system | events/s (first→last reward) | events/s (start→last reward) | CPU s "
        "| CPU µs/event | peak RSS MiB |\n|---|---|---|---|---|---|"
    )
    rows = {label: median_row(results[label]) for label in labels}
    for label in labels:
        r = rows[label]
        print(
            f"| {label} | {r['span']:,.0f} | {r['wall']:,.0f} | {r['cpu']:.1f} "
            f"| {r['cpu_ev']:.0f} | {r['rss']:.0f} |"
        )
    a = rows[ts_label]
    for label in labels[1:]:
        b = rows[label]
        ratios = " | ".join(f"{a[k] / b[k]:.2f}" for k in ("span", "wall", "cpu", "cpu_ev", "rss"))
        peer = label.replace(f"Quix Streams {QUIX_VERSION}", "Quix")
        print(f"| taskstream / {peer} | {ratios} |")
    print()
    for label in labels[1:]:
        peer = label.replace(f"Quix Streams {QUIX_VERSION}", "Quix")
        print(f"- per round, taskstream / {peer}: {round_ratios(ts, results[label])}")
    print(
        "\n| run | backlog produced | first reward | last reward | stopped in |"
        "\n|---|---|---|---|---|"
    )
    for label, runs in results.items():
        for n, r in enumerate(runs, 1):
            print(
                f"| {label} #{n} | {r.produce_s:.1f} s | {r.first_ms / 1000 - r.started:.1f} s "
                f"| {r.wall_s:.1f} s | {r.stop_s:.1f} s |"
            )
    print(
        "\n(first/last reward: seconds after the worker process started; "
        f"whole benchmark {time.monotonic() - began:.0f} s)"
    )

    for label, runs in results.items():
        for n, result in enumerate(runs, 1):
            diff = differences(result.counts, expected)
            if diff:
                problems += 1
                say(f"{label} run {n}: {len(diff)} (user, type) differ from the reference")
                for line in diff[:5]:
                    say(f"  {line} (this run vs the reference)")
    diff = differences(ts[-1].counts, qx[-1].counts)
    if diff:
        problems += 1
        say(f"taskstream and Quix differ in {len(diff)} (user, type), e.g. {diff[:5]}")
    if problems:
        say("FAIL: the systems do not agree (see above)")
        return 1
    say("both systems emitted the reference's rewards")
    return 0


# ------------------------------------------------------------- pool variants


def pool_files(root: Path, demand_cents: int) -> dict[str, tuple[Path, Path]]:
    """(templates, pools) for: no pool, the shipped ample pool, a hot pool.

    The hot pool holds 1.25x the log's demand: every reward draws on it, its
    buckets start with total / (8 partitions x 64) and live on refills from the
    master (progressive bucketing at work), and it never runs dry, so all
    three pay the same rewards."""
    (template,) = orjson.loads(TEMPLATES.read_bytes())
    unbudgeted = {**template, "reward": {**template["reward"], "pool_id": None}}
    files = {}
    for name, doc, pools in (
        ("no pool", unbudgeted, []),
        ("ample pool", template, orjson.loads(POOLS.read_bytes())),
        (
            "hot pool",
            template,
            [{**orjson.loads(POOLS.read_bytes())[0], "total": demand_cents * 5 // 4}],
        ),
    ):
        stem = name.replace(" ", "-")
        t, p = root / f"{stem}-templates.json", root / f"{stem}-pools.json"
        t.write_bytes(orjson.dumps([doc]))
        p.write_bytes(orjson.dumps(pools))
        files[name] = (t, p)
    return files


def refill_requests(system: Taskstream) -> int:
    """Refill requests the pool's master received (`pools status --json`, a line per pool)."""
    done = subprocess.run(
        [TASKSTREAM, "pools", "status", "--json"], env=system.env, capture_output=True
    )
    if done.returncode:
        return -1
    return sum(int(orjson.loads(line)["requests"]) for line in done.stdout.splitlines())


def pool_variants(args: argparse.Namespace) -> int:
    print(f"command: `{command_line()}`\n")
    began = time.monotonic()
    tree = taskstream_tree()
    shape = PeerShape(events=args.events, users=args.users, seed=args.seed)
    log = generate(shape)
    lines = wire(log)
    template = PeerTemplate.load()
    expected = expected_rewards(log, template)
    want = sum(expected.values())
    granted = by_type(expected)[GRANTED] - by_type(expected)[REVOKED]
    results: dict[str, list[Result]] = {}
    requests: dict[str, list[int]] = {}
    problems = 0
    with bench_broker("bench-peer-pools-") as (bootstrap, root):
        files = pool_files(root, granted * template.amount_cents)
        if args.warmup:
            warm_up(Taskstream(bootstrap, root), lines, want, args.timeout)
        for n in range(args.repeat):
            names = list(files) if n % 2 == 0 else list(files)[::-1]
            for name in names:
                system = Taskstream(bootstrap, root, *files[name], label=name)
                seconds = produce(system.settings, lines)
                result = run(system, len(lines), want, args.timeout)
                result.produce_s = seconds
                results.setdefault(name, []).append(result)
                requests.setdefault(name, []).append(refill_requests(system))
                diff = differences(result.counts, expected)
                if diff:
                    problems += 1
                    say(f"{name} run {n + 1}: {len(diff)} (user, type) differ, e.g. {diff[:3]}")
                say(
                    f"{name} run {n + 1}: {result.span_rate:,.0f} ev/s (span), "
                    f"{result.wall_rate:,.0f} ev/s (wall), CPU {result.cpu_s:.1f}s"
                )
    print(
        f"{len(lines):,} input messages, {args.users:,} users, {PARTITIONS} partitions, one "
        f"taskstream worker; {args.repeat} run(s) each, medians; {os.cpu_count()} cores; {tree}\n"
    )
    print(
        "| variant | events/s (first→last reward) | events/s (start→last reward) "
        "| CPU µs/event | refill requests | vs no pool (span) |\n|---|---|---|---|---|---|"
    )
    rows = {name: median_row(runs) for name, runs in results.items()}
    base = rows["no pool"]["span"]
    for name, r in rows.items():
        print(
            f"| {name} | {r['span']:,.0f} | {r['wall']:,.0f} | {r['cpu_ev']:.0f} "
            f"| {statistics.median(requests[name]):,.0f} | {r['span'] / base:.2f} |"
        )
    print(f"\n(whole benchmark {time.monotonic() - began:.0f} s)")
    if problems:
        say("FAIL: a variant did not pay the reference's rewards")
        return 1
    return 0
