"""`python -m bench restore`: how long a worker that lost its local state
takes to rebuild it from the changelogs, against the Quix Streams peer.

For each system, on the peer benchmark's log (`bench/peer_log.py`, one
worker, 8 partitions, the same broker): the worker processes the whole log
and stops; then it is started twice more, each time with one new user's
claim and three qualifying orders (a *probe*) waiting in the inputs:

1. with its local state kept: the time from the process start to the
   probe's reward is start-up, joining the group and a first batch;
2. with its local state deleted (a lost disk, a new machine): the same,
   plus reading every changelog record back into RocksDB.

The difference is the restore; divided into the changelog records the
system's changelog topics hold (their high watermarks) it gives records/s.
Worker CPU seconds up to the probe's reward are printed beside each time;
the CPU difference per changelog record is the steadier figure (a
restart's wall time also holds the group join, which varies by seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.peer import (
    PARTITIONS,
    Quix,
    System,
    Taskstream,
    output_watcher,
    peer_python,
    produce,
    run,
    say,
    usage,
)
from bench.peer_log import PeerShape, PeerTemplate, expected_rewards, generate, wire
from bench.stream import bench_broker
from schemas.codec import encode
from schemas.records import OrderPaid, TaskClaim
from schemas.timestamps import MICROS_PER_DAY


@dataclass
class Restart:
    seconds: float  # process start -> the probe's reward
    cpu_s: float  # the worker's CPU seconds by then


@dataclass
class Measured:
    records: int  # in the changelog topics
    kept: Restart  # local state kept
    lost: Restart  # local state deleted

    @property
    def restore_s(self) -> float | None:
        """None when the restart without state came back first: the
        difference is then start-up noise (a group join), not a restore."""
        gap = self.lost.seconds - self.kept.seconds
        return gap if gap > 0 else None

    @property
    def restore_cpu(self) -> float:
        return max(0.0, self.lost.cpu_s - self.kept.cpu_s)

    @property
    def rate(self) -> str:
        return "n/a" if self.restore_s is None else f"{self.records / self.restore_s:,.0f}"

    @property
    def cpu_us_per_record(self) -> float:
        return self.restore_cpu / max(1, self.records) * 1e6


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}s"


def state_dir(system: System) -> Path:
    """Where the system's worker keeps its local state (Taskstream.start, Quix.start)."""
    suffix = "-a" if isinstance(system, Taskstream) else "-state"
    return system.root / f"{system.settings.app_id}{suffix}"


def probe(after_us: int, name: str) -> list[bytes]:
    """A new user's claim and three orders of 1,000+ cents: one reward."""
    user = f"probe-{name}"
    events: list[Any] = [TaskClaim(f"c-{user}", user, "peer_three_orders", after_us + 1, ())]
    events += [
        OrderPaid(f"e-{user}-{n}", f"o-{user}-{n}", user, 1500, "app", after_us + 10 + n)
        for n in range(3)
    ]
    return [encode(e) for e in events]


def changelog_records(system: System) -> int:
    """Records the system's changelog topics hold (sum of high watermarks)."""
    s = system.settings
    admin = AdminClient({"bootstrap.servers": s.bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if s.app_id in t and "changelog" in t]
    client = Consumer({"bootstrap.servers": s.bootstrap, "group.id": f"restore-{uuid.uuid4()}"})
    try:
        total = 0
        for name in names:
            meta = admin.list_topics(name, timeout=10).topics[name]
            for p in meta.partitions:
                low, high = client.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                total += high - low
        return total
    finally:
        client.close()


def restart_until_probe(system: System, user: str, timeout: float) -> Restart:
    """Start the worker, wait for `user`'s reward, stop the worker."""
    watcher = output_watcher(system, "restore-watch")
    began = time.monotonic()
    proc = system.start()
    try:
        while True:
            for msg in watcher.consume(5000, 0.05):
                value = msg.value()
                if msg.error() or value is None:
                    continue
                if orjson.loads(value).get("user_id") == user:
                    return Restart(time.monotonic() - began, usage(proc.pid)[0])
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{system.label} exited with {proc.returncode}; its log:\n"
                    + system.log_path.read_text(errors="replace")[-3000:]
                )
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"{system.label}: no reward for {user} after {timeout:.0f}s")
    finally:
        watcher.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(system: System, lines: list[bytes], want: int, end_us: int, timeout: float) -> Measured:
    produce(system.settings, lines)
    run(system, len(lines), want, timeout)
    records = changelog_records(system)
    produce(system.settings, probe(end_us, "kept"))
    kept = restart_until_probe(system, "probe-kept", timeout)
    shutil.rmtree(state_dir(system))
    produce(system.settings, probe(end_us + 100, "lost"))
    lost = restart_until_probe(system, "probe-lost", timeout)
    measured = Measured(records, kept, lost)
    say(
        f"{system.label}: {records:,} changelog records; restart with state {kept.seconds:.1f}s "
        f"(CPU {kept.cpu_s:.1f}s), without {lost.seconds:.1f}s (CPU {lost.cpu_s:.1f}s): "
        f"restore {_seconds(measured.restore_s)}, {measured.rate} records/s, "
        f"{measured.cpu_us_per_record:.1f} CPU µs/record"
    )
    return measured


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench restore")
    parser.add_argument("--events", type=int, default=200_000, help="input messages")
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per step")
    args, _ = parser.parse_known_args(argv)
    print(f"command: `python -m bench restore {' '.join(argv)}`".rstrip() + "\n")
    python = peer_python()
    shape = PeerShape(events=args.events, users=args.users, seed=args.seed)
    log = generate(shape)
    lines = wire(log)
    want = sum(expected_rewards(log, PeerTemplate.load()).values())
    end_us = max(e.at for e in log if hasattr(e, "at")) + MICROS_PER_DAY
    rows: dict[str, Measured] = {}
    with bench_broker("bench-restore-") as (bootstrap, root):
        for system in (Taskstream(bootstrap, root), Quix(bootstrap, root, python)):
            rows[system.label] = measure(system, lines, want, end_us, args.timeout)
    print(
        f"{len(lines):,} input messages, {args.users:,} users, {PARTITIONS} partitions, "
        f"one worker; {os.cpu_count()} cores\n"
    )
    print(
        "| system | changelog records | restart with state: s (CPU s) "
        "| without: s (CPU s) | restore s | restore CPU s | records/s | CPU µs/record |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for label, r in rows.items():
        print(
            f"| {label} | {r.records:,} | {r.kept.seconds:.1f} ({r.kept.cpu_s:.1f}) "
            f"| {r.lost.seconds:.1f} ({r.lost.cpu_s:.1f}) | {_seconds(r.restore_s)} "
            f"| {r.restore_cpu:.1f} | {r.rate} | {r.cpu_us_per_record:.1f} |"
        )
    return 0
