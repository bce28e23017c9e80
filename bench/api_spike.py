"""`python -m bench api_spike`: a request spike on the render API while events flow.

One `taskstream worker` (real broker, RocksDB) holds USERS users, each with a
clear box and a dark box claimed now. Three phases of --seconds each, with
the same steady input at --events-rate (90 % orders, each phase to its own
users so every order advances a task; 5 % claims, 5 % refunds):

- **baseline**: no requests;
- **spike, limited**: aiohttp clients (--clients processes) offer --offered
  requests/s of GET /users/{id}/tasks (user tokens, random users, one in ten
  never served) to the worker with its default limit (TASKSTREAM_API_RATE, ...);
- **spike, no limit**: the same on a fresh worker of the same deployment
  with the limit lifted (rate, burst and concurrency 10**6), for comparison.

Per phase: requests offered (issued by the clients) and answered per
second, by answer (full, cached, static), errors (any non-200 or a client
timeout), p50/p99 latency of each kind (issue to last byte, so queueing in
the client counts); and the processing lag: order message -> the output it
caused (both CreateTime), p50/p99/max, and the largest input backlog sampled
(end offsets - the group's committed offsets). Results go to stdout as
Markdown; BENCHMARKS.md keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from app.access import sign_token
from bench.stream import SAMPLES, TASKSTREAM, Deployment, bench_broker
from schemas.records import InputEvent, OrderPaid, OrderRefunded, TaskClaim
from taskstream import broker
from taskstream.cpu import lower_cpu_priority

SECRET = "api-spike-secret"
CLEAR, DARK = "clear_box_per_order", "dark_box_3_days"
UNLIMITED = {
    "TASKSTREAM_API_RATE": "1000000",
    "TASKSTREAM_API_BURST": "1000000",
    "TASKSTREAM_API_CONCURRENCY": "1000000",
}
KINDS = ("full", "cached", "static")


def say(message: str) -> None:
    print(f"[bench api_spike] {message}", flush=True, file=sys.stderr)


# ------------------------------------------------------------- the worker


def start_worker(dep: Deployment, label: str, extra: dict[str, str]) -> tuple[Any, str]:
    port = broker.free_port()
    env = {
        **dep.env,
        "TASKSTREAM_DATA_DIR": str(dep.root / f"{dep.name}-{label}"),
        "TASKSTREAM_WEB_PORT": str(port),
        "TASKSTREAM_API_SECRET": SECRET,
        **extra,
    }
    log = (dep.root / f"{dep.name}-{label}.log").open("wb")
    proc = subprocess.Popen(
        [TASKSTREAM, "worker", "--loglevel", "warning"],
        env=env,
        stdout=log,
        stderr=log,
        # A session of its own, as in its own container: with autogroup
        # scheduling the kernel shares CPU between sessions first, so in the
        # bench's session it would share one slice with the load generator.
        start_new_session=True,
    )
    dep.workers.append(proc)
    url = f"http://127.0.0.1:{port + 1}"  # the worker's render API process (web port + 1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"worker {label} not ready in 120 s")


def widen_templates(dep: Deployment) -> None:
    """The API renders at the server's clock: make the sample templates active now."""
    docs = orjson.loads((SAMPLES / "templates.json").read_bytes())
    for doc in docs:
        doc["active_from"], doc["active_until"] = "2020-01-01T00:00:00Z", "2100-01-01T00:00:00Z"
    path = dep.root / f"{dep.name}-templates.json"
    path.write_bytes(orjson.dumps(docs))
    subprocess.run(
        [
            *(TASKSTREAM, "templates", "publish", "--templates", str(path)),
            *("--pools", str(dep.root / f"{dep.name}-pools.json")),  # written by Deployment
        ],
        env=dep.env,
        check=True,
        capture_output=True,
    )


def user(n: int) -> str:
    return f"s{n:06d}"


def claims(users: int) -> Iterator[TaskClaim]:
    at = time.time_ns() // 1000
    for n in range(users):
        for template in (CLEAR, DARK):
            yield TaskClaim(f"claim-{template}-{n}", user(n), template, at, ("lapsed",))


def events(phase: str, first_user: int, users: int, count: int) -> Iterator[InputEvent]:
    """Mostly orders of the phase's users (each advances their clear box),
    with a claim (5 %) and a refund (5 %) among them: every input topic
    moves, as in production (an idle input holds the event-time merge back
    until the consumer has seen its high watermark again)."""
    for n in range(count):
        at = time.time_ns() // 1000  # made when sent: the engine sees them in time order
        if n % 20 == 0:
            yield TaskClaim(f"{phase}-c{n}", f"{phase}-new{n}", CLEAR, at, ("lapsed",))
        elif n % 20 == 1 and n > 20:  # refunds the order sent 19 events before
            who = user(first_user + (n - 19) % users)
            yield OrderRefunded(f"{phase}-r{n}", f"{phase}-ref{n}", f"{phase}-ord{n - 19}", who,
                                2_000, at)  # fmt: skip
        else:
            who = user(first_user + n % users)
            yield OrderPaid(f"{phase}-o{n}", f"{phase}-ord{n}", who, 2_000, "app", at)


# ------------------------------------------------------------- the client


@dataclass
class Tally:
    offered: int = 0
    cpu_seconds: float = 0.0  # the client processes' own CPU time
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: dict[str, int] = field(default_factory=dict)


async def _fire(url: str, users: int, rate: float, seconds: float, seed: int) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    expiry = int(time.time()) + 3600
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=30)

    async def one(path: str, token: str) -> None:
        began = time.monotonic()
        try:
            async with session.get(url + path, headers={"Authorization": token}) as answer:
                await answer.read()
                kind = answer.headers.get("X-Taskstream-Fallback") or "full"
                if answer.status != 200 or kind not in KINDS:
                    key = f"{answer.status} {kind}"
                    tally.errors[key] = tally.errors.get(key, 0) + 1
                    return
                tally.latencies[kind].append(time.monotonic() - began)
        except (aiohttp.ClientError, TimeoutError) as exc:
            key = type(exc).__name__
            tally.errors[key] = tally.errors.get(key, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        pending: set[asyncio.Task[None]] = set()
        began = time.monotonic()
        total = int(rate * seconds)
        while tally.offered < total:
            due = began + tally.offered / rate
            ahead = due - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            while tally.offered < total and began + tally.offered / rate <= time.monotonic():
                n = rng.randrange(users)
                who = user(n) if rng.random() >= 0.1 else f"never-{seed}-{n}"
                token = "Bearer " + sign_token(who, expiry, SECRET.encode())
                task = asyncio.create_task(one(f"/users/{who}/tasks?scene=home", token))
                pending.add(task)
                task.add_done_callback(pending.discard)
                tally.offered += 1
        if pending:
            await asyncio.wait(pending)
    return tally


def _client(
    url: str,
    users: int,
    rate: float,
    seconds: float,
    seed: int,
    nice: int,
    cpus: set[int],
    out: Any,
) -> None:
    if nice:  # stand in for clients on other machines: idle CPU only
        os.setsid()  # a session (autogroup) of their own, like the API process's
        lower_cpu_priority(nice)
    if cpus:
        os.sched_setaffinity(0, cpus)
    tally = asyncio.run(_fire(url, users, rate, seconds, seed))
    out.put((tally.offered, tally.latencies, tally.errors, time.process_time()))


def spike(
    url: str, users: int, rate: float, seconds: float, clients: int, nice: int, cpus: set[int]
) -> tuple[Tally, float]:
    """Every client process's tally merged, and the wall time until the last answer."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client, args=(url, users, rate / clients, seconds, seed, nice, cpus, out)
        )
        for seed in range(clients)
    ]
    began = time.monotonic()
    for proc in procs:
        proc.start()
    merged = Tally()
    for _ in procs:
        offered, latencies, errors, cpu = out.get()
        merged.offered += offered
        merged.cpu_seconds += cpu
        for kind in KINDS:
            merged.latencies[kind] += latencies[kind]
        for key, n in errors.items():
            merged.errors[key] = merged.errors.get(key, 0) + n
    for proc in procs:
        proc.join()
    return merged, time.monotonic() - began


# ------------------------------------------------------------ processing lag


def backlog_sampler(dep: Deployment, stop: threading.Event, peaks: list[int]) -> None:
    while not stop.is_set():
        committed, end = dep.input_counts()
        peaks.append(max(0, end - committed))
        stop.wait(2.0)  # each sample is a few offset requests: keep it light


def processing_lag(dep: Deployment, stamps: dict[str, int]) -> list[int]:
    return sorted(
        ts - stamps[str(doc.get("caused_by"))]
        for _, doc, ts in dep.outputs()
        if str(doc.get("caused_by")) in stamps
    )


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process so far (/proc/PID/stat); 0 without one."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_wait(pid: int) -> float:
    """Seconds the process's main thread (the worker's event loop) was ready
    to run but waited for a CPU (/proc/PID/schedstat, second field, ns)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def api_process(worker: int) -> int | None:
    """The pid of the worker's render API process (its child), if running."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == worker:
            return int(stat.parent.name)
    return None


@dataclass
class Phase:
    name: str
    seconds: float
    tally: Tally | None
    wall: float
    lags: list[int]
    backlog: int
    worker_cpu: float  # the worker's CPU seconds during the phase
    api_cpu: float  # its render API process's
    worker_waited: float  # seconds its event loop was runnable but had no CPU
    load: float  # the machine's 1-minute load average at the phase's end


def run_phase(
    dep: Deployment,
    name: str,
    first_user: int,
    url: str | None,
    args: argparse.Namespace,
) -> Phase:
    worker = dep.workers[-1].pid
    api = api_process(worker)
    cpu_before = cpu_seconds(worker)
    api_before = cpu_seconds(api)
    waited_before = run_queue_wait(worker)
    count = int(args.events_rate * args.seconds)
    stamps: dict[str, int] = {}
    stop, peaks = threading.Event(), [0]
    sampler = threading.Thread(target=backlog_sampler, args=(dep, stop, peaks))

    def produce() -> None:
        phase_users = args.users // 3
        stamps.update(dep.produce(events(name, first_user, phase_users, count), args.events_rate))

    producer = threading.Thread(target=produce)
    sampler.start()
    producer.start()
    tally, wall = None, args.seconds
    if url is not None:
        api = api_process(dep.workers[-1].pid)
        if args.api_cpus and api is not None:
            os.sched_setaffinity(api, args.api_cpus)
        tally, wall = spike(
            url,
            args.users,
            args.offered,
            args.seconds,
            args.clients,
            args.client_nice,
            args.api_cpus,
        )
    producer.join()
    dep.wait_consumed(300)
    stop.set()
    sampler.join()
    worker_cpu = cpu_seconds(worker) - cpu_before
    api_cpu = cpu_seconds(api) - api_before
    waited = run_queue_wait(worker) - waited_before
    lags = processing_lag(dep, stamps)
    say(f"{name}: {len(lags)} order outputs, backlog peak {max(peaks)}")
    load = os.getloadavg()[0]
    return Phase(
        name, args.seconds, tally, wall, lags, max(peaks), worker_cpu, api_cpu, waited, load
    )


# ------------------------------------------------------------------ report


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def rows(phase: Phase) -> list[str]:
    lags = phase.lags
    lag = (
        f"p50 {statistics.median(lags):.0f} ms, p99 {_pct([float(x) for x in lags], 0.99):.0f} ms, "
        f"max {lags[-1]:.0f} ms, backlog peak {phase.backlog:,} msgs"
        if lags
        else "no outputs"
    )
    out = [f"| {phase.name} | processing lag (order -> output) | {lag} |"]
    tally = phase.tally
    cpu = (
        f"worker {phase.worker_cpu:.1f} s (its event loop waited {phase.worker_waited:.1f} s "
        f"for a CPU), its API process {phase.api_cpu:.1f} s"
    )
    if tally is not None:
        cpu += f", clients {tally.cpu_seconds:.1f} s"
    out.append(
        f"| {phase.name} | CPU time until every order was processed | {cpu}; "
        f"load average {phase.load:.1f} (2 cores) |"
    )
    if tally is None:
        return out
    errors = sum(tally.errors.values())
    out.append(
        f"| {phase.name} | requests offered | {tally.offered / phase.seconds:,.0f}/s "
        f"({tally.offered:,} in {phase.seconds:.0f} s; last answer after {phase.wall:.1f} s) |"
    )
    for kind in KINDS:
        lat = tally.latencies[kind]
        out.append(
            f"| {phase.name} | answered {kind} | {len(lat) / phase.seconds:,.0f}/s ({len(lat):,}), "
            f"p50 {_pct(lat, 0.5) * 1000:.1f} ms, p99 {_pct(lat, 0.99) * 1000:.1f} ms |"
        )
    detail = ", ".join(f"{k}: {n}" for k, n in sorted(tally.errors.items())) or "none"
    out.append(f"| {phase.name} | errors | {errors} ({detail}) |")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench api_spike")
    parser.add_argument("--users", type=int, default=30_000, help="users with state")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--events-rate", type=float, default=2_000.0, help="orders/s")
    parser.add_argument("--offered", type=float, default=5_000.0, help="requests/s offered")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--skip-unlimited", action="store_true")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="niceness of the client processes: 19 makes them stand in for clients on "
        "other machines (they get the CPU the worker, broker and API leave idle)",
    )
    parser.add_argument(
        "--api-cpus",
        type=lambda text: {int(c) for c in text.split(",") if c},
        default=set(),
        help="pin the API process and the clients to these CPUs (e.g. 1), as a CPU "
        "limit on the API's container would; the worker and the broker stay unpinned",
    )
    args, _ = parser.parse_known_args(argv)
    third = args.users // 3
    report: list[str] = []
    with bench_broker("bench-api-spike-") as (bootstrap, root):
        dep = Deployment(bootstrap, root, partitions=4)
        try:
            widen_templates(dep)
            _, url = start_worker(dep, "limited", {})
            began = time.monotonic()
            dep.produce(claims(args.users))
            dep.wait_consumed(300)
            say(f"{args.users:,} users claimed in {time.monotonic() - began:.1f} s")
            for phase in (
                run_phase(dep, "baseline", 0, None, args),
                run_phase(dep, "spike, default limit", third, url, args),
            ):
                report += rows(phase)
            if not args.skip_unlimited:
                dep.stop()
                dep.workers.clear()
                _, url = start_worker(dep, "unlimited", UNLIMITED)
                report += rows(run_phase(dep, "spike, no limit", 2 * third, url, args))
        finally:
            dep.stop()
    print(
        f"{args.users:,} users, orders at {args.events_rate:,.0f}/s, "
        f"{args.offered:,.0f} requests/s offered by {args.clients} client process(es) "
        f"at nice {args.client_nice}"
        + (f", API and clients on CPU(s) {sorted(args.api_cpus)}" if args.api_cpus else "")
        + ", "
        f"{args.seconds:.0f} s per phase\n"
    )
    print("| phase | measurement | result |\n|---|---|---|")
    print("\n".join(report))
    return 0
