"""The worker's pure batch step alone, over the peer benchmark's log: with the
compiled kernel and without it, side by side.

    python -m bench batchcore [--events N] [--users N] [--batch N] [--repeat N]

What runs is what a worker runs between a fetch and its writes, minus Kafka
and RocksDB: `streams.processor.process_batch` per partition on batches of
`--batch` records per partition (claims, orders, refunds of
`bench/peer_log.py`, keyed and partitioned as the producer does), a dict as
each partition's table (`writes_for` applied to it, so every changed user
is encoded), and the prize pool's master (`app.bucketing.allocate`) answered
in-line. CPU time (`time.process_time`) of the loop only; the log is made
and partitioned before the clock starts. The garbage collector and the user
cache are set as the worker sets them (TASKSTREAM_GC_THRESHOLD,
TASKSTREAM_USER_CACHE defaults).

Without the kernel means a child process in which `taskstream_native`
cannot be imported, so every call takes the Python reference: the runs
alternate (kernel, Python, kernel, ...) and the medians are compared.
Both must give the same outputs byte for byte (a digest of them is compared).

A third row runs the Quix peer's rules (`bench/peer_quix.py`, `Rules.step`)
over the same log in memory, the way its worker runs them minus Kafka and
RocksDB: each message's value read with orjson (as Quix's JSON
deserializer does), the user's state read from bytes and written back as
bytes (Quix's store keeps values as orjson bytes; each user's events are
far apart in this log, so each read misses its transaction cache), each
reward written with orjson. It must grant and revoke what our step does.
It is the floor of the comparison in `bench peer`: what each worker spends
on its own logic before any framework cost.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 8
POOL = "peer_cash"


@dataclass(frozen=True)
class Run:
    kernel: bool
    events: int
    outputs: int
    cpu_seconds: float
    digest: str

    @property
    def micros_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6


def run_once(events: int, users: int, batch: int) -> Run:
    """One pass in this process (whatever kernel it has)."""
    from app.bucketing import allocate, new_master
    from bench.peer_log import POOLS, TEMPLATES, PeerShape, generate, wire
    from schemas.codec import decode, encode
    from schemas.native import kernel
    from schemas.records import PoolCommand
    from streams.config import Settings
    from streams.kafka.partitioner import partition_for
    from streams.partition_state import decode_user, user_key
    from streams.processor import (
        BUDGET,
        BUDGET_REQUESTS,
        ROLE_OF_TYPE,
        InMessage,
        PartitionCache,
        PartitionRecord,
        process_batch,
        writes_for,
    )
    from taskstream.catalog_files import load_catalog
    from taskstream.collector import tune_collector

    catalog = load_catalog(TEMPLATES, POOLS)
    log = generate(PeerShape(events=events, users=users))
    by_partition: defaultdict[int, list[tuple[str, bytes, bytes]]] = defaultdict(list)
    for event, line in zip(log, wire(log), strict=True):
        key = event.user_id.encode()  # type: ignore[attr-defined]
        by_partition[partition_for(key, PARTITIONS)].append((ROLE_OF_TYPE[event.TYPE], key, line))
    highwater = {
        p: {
            role: sum(1 for r, _, _ in by_partition[p] if r == role)
            for role in ROLE_OF_TYPE.values()
        }
        for p in range(PARTITIONS)
    }

    tables: list[dict[bytes, bytes]] = [{} for _ in range(PARTITIONS)]
    records = [PartitionRecord(p) for p in range(PARTITIONS)]
    # The worker's default cache of decoded users (streams/config.py).
    caches = [PartitionCache(users_max=Settings().user_cache) for _ in range(PARTITIONS)]
    for cache, record in zip(caches, records, strict=True):
        cache.load(record)
    master = new_master(POOL, catalog.pools[POOL].total, PARTITIONS)
    master, grants = allocate(
        master, PoolCommand(event_id="open", pool_id=POOL, command="open", at=0)
    )
    inbox: defaultdict[int, list[bytes]] = defaultdict(list)
    for grant in grants:
        inbox[grant.partition].append(encode(grant))
    next_offset: defaultdict[tuple[int, str], int] = defaultdict(int)
    position = [0] * PARTITIONS
    digest = hashlib.sha256()
    outputs = 0

    tune_collector(Settings().gc_threshold)  # as the worker does at start
    started = time.process_time()
    busy = True
    while busy:
        busy = False
        for p in range(PARTITIONS):
            messages = []
            for value in inbox.pop(p, []):
                offset = next_offset[p, BUDGET]
                next_offset[p, BUDGET] = offset + 1
                messages.append(InMessage(BUDGET, BUDGET, p, offset, None, value))
            chunk = by_partition[p][position[p] : position[p] + batch]
            position[p] += len(chunk)
            for role, key, line in chunk:
                offset = next_offset[p, role]
                next_offset[p, role] = offset + 1
                messages.append(InMessage(role, role, p, offset, key, line, None))
            if not messages and not caches[p].pending:
                continue
            busy = busy or bool(chunk) or bool(caches[p].pending)
            table = tables[p]
            result = process_batch(
                records[p],
                messages,
                catalog=catalog,
                partitions=PARTITIONS,
                load_user=lambda user, table=table: decode_user(table.get(user_key(user))),
                cache=caches[p],
                highwater=highwater[p],
                now=0.0,
                max_idle=0.0,
            )
            records[p] = result.record
            for key, value in writes_for(result):
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
            for output in result.outputs:
                outputs += 1
                digest.update(output.value)
                if output.role == BUDGET_REQUESTS:
                    master, replies = allocate(master, decode(output.value))
                    for reply in replies:
                        inbox[reply.partition].append(encode(reply))
            busy = busy or bool(inbox)
    cpu = time.process_time() - started
    return Run(kernel is not None, events, outputs, cpu, digest.hexdigest())


def peer_rules_once(events: int, users: int) -> Run:
    """The Quix peer's rules over the log in memory (see the module's doc)."""
    from bench.peer_log import TEMPLATES, PeerShape, generate, wire
    from bench.peer_quix import Rules

    (template,) = orjson.loads(TEMPLATES.read_bytes())
    rules = Rules(template)
    lines = wire(generate(PeerShape(events=events, users=users)))
    table: dict[bytes, bytes] = {}
    digest = hashlib.sha256()
    outputs = 0

    class State:
        """Quix's per-key state: values stored as orjson bytes."""

        def __init__(self, key: bytes) -> None:
            self.key = key

        def get(self, name: str) -> object:
            raw = table.get(self.key + name.encode())
            return None if raw is None else orjson.loads(raw)

        def set(self, name: str, value: object) -> None:
            table[self.key + name.encode()] = orjson.dumps(value)

    started = time.process_time()
    for line in lines:
        value = orjson.loads(line)
        for reward in rules.step(value, State(value["user_id"].encode())):
            raw = orjson.dumps(reward)
            outputs += 1
            digest.update(raw)
    cpu = time.process_time() - started
    return Run(False, len(lines), outputs, cpu, digest.hexdigest())


def _child(events: int, users: int, batch: int, kernel: bool) -> Run:
    """One pass in a fresh process; without the kernel, it cannot import it."""
    block = "" if kernel else "sys.modules['taskstream_native'] = None; "
    code = (
        f"import sys, json; {block}sys.path.insert(0, {str(ROOT)!r}); "
        "from bench.batchcore import run_once; "
        f"r = run_once({events}, {users}, {batch}); "
        "print(json.dumps([r.kernel, r.events, r.outputs, r.cpu_seconds, r.digest]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    has_kernel, count, outputs, cpu, digest = orjson.loads(done.stdout.strip().splitlines()[-1])
    return Run(has_kernel, count, outputs, cpu, digest)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench batchcore", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=500, help="records per partition per batch")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating")
    options = parser.parse_args(argv)
    runs: dict[bool, list[Run]] = {True: [], False: []}
    peer: list[Run] = []
    for index in range(options.repeat):
        peer.append(peer_rules_once(options.events, options.users))
        sys.stderr.write(
            f"[bench batchcore] run {index + 1} Quix peer's rules: {peer[-1].outputs:,} rewards, "
            f"{peer[-1].micros_per_event:.1f} µs/event\n"
        )
        for kernel in (True, False):
            run = _child(options.events, options.users, options.batch, kernel)
            if run.kernel != kernel:
                sys.stderr.write("the kernel is not installed: run `make setup`\n")
                return 1
            runs[kernel].append(run)
            label = "kernel" if kernel else "Python"
            sys.stderr.write(
                f"[bench batchcore] run {index + 1} {label}: {run.events:,} events, "
                f"{run.outputs:,} outputs, {run.cpu_seconds:.2f} CPU s, "
                f"{run.micros_per_event:.1f} µs/event\n"
            )
    digests = {run.digest for group in runs.values() for run in group}
    if len(digests) != 1:
        sys.stderr.write(f"outputs differ between runs: {sorted(digests)}\n")
        return 1
    with_kernel = statistics.median(r.micros_per_event for r in runs[True])
    without = statistics.median(r.micros_per_event for r in runs[False])
    sample = runs[True][0]
    print(
        f"`python -m bench batchcore --events {options.events} --users {options.users} "
        f"--batch {options.batch} --repeat {options.repeat}`: the worker's batch step over "
        f"the peer log in memory, {sample.events:,} events, {sample.outputs:,} outputs "
        f"(identical bytes in every run), {os.cpu_count()} cores\n"
    )
    print("| implementation | CPU µs/event (median) | runs |")
    print("|---|---|---|")
    for label, kernel, value in (
        ("with the kernel", True, with_kernel),
        ("Python only", False, without),
    ):
        listed = ", ".join(f"{r.micros_per_event:.1f}" for r in runs[kernel])
        print(f"| {label} | {value:.1f} | {listed} |")
    print(f"| kernel / Python | {with_kernel / without:.2f} | |")
    rules = statistics.median(r.micros_per_event for r in peer)
    listed = ", ".join(f"{r.micros_per_event:.1f}" for r in peer)
    print(
        f"| the Quix peer's rules, in memory ({peer[0].outputs:,} rewards) | {rules:.1f} "
        f"| {listed} |"
    )
    print(f"| ours (kernel) / the peer's rules | {with_kernel / rules:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
