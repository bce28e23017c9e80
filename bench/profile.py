"""`python -m bench profile`: where one worker's CPU goes, by py-spy.

A backlog of generated events (bench.loggen, the `stream` benchmark's log)
is produced to a fresh deployment; then one `taskstream worker` runs under
`py-spy record` (py-spy is the worker's parent, so no ptrace rights are
needed) until the group's committed input offsets reach the end. py-spy's
raw (collapsed) stacks are summed into:

- **own**: the share of samples whose innermost frame is in a function;
- **inclusive**: the share of samples with the function anywhere on the stack,

for the top functions of each, and the share by area (faust, aiokafka,
confluent-kafka, rocksdict, our core in app/ and schemas/, our shell in
streams/, asyncio, other). Idle samples (threads blocked in a select or a
lock) are left out unless `--idle` is given, so by default the shares are
of CPU; `--gil` keeps only the thread holding the GIL.

Results go to stdout as Markdown; the flame graph (SVG) and the raw stacks
stay in --out for a closer look.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.loggen import LogShape, generate
from bench.stream import TASKSTREAM, Deployment, bench_broker, latency_shape, say
from taskstream import broker

PY_SPY = str(Path(sys.executable).with_name("py-spy"))

# First match wins: a frame's file path -> area. The libraries first (faust
# has an app/ of its own), then ours, then "kafka/", which would also match
# streams/kafka/ (before 2026-12-04 it came before streams/, and the
# producer's and the transport's frames counted as aiokafka's).
AREAS = (
    ("faust/", "faust"),
    ("mode/", "faust"),
    ("aiokafka/", "aiokafka"),
    ("confluent_kafka/", "confluent-kafka"),
    ("rocksdict/", "rocksdict"),
    ("app/", "core (app/)"),
    ("schemas/", "core (schemas/)"),
    ("streams/", "shell (streams/)"),
    ("kafka/", "aiokafka"),
    ("asyncio/", "asyncio"),
    ("concurrent/", "threads"),
    ("threading.py", "threads"),
)


def area_of(frame: str) -> str:
    """py-spy names a frame 'function (path/to/file.py:line)', the path
    relative to its sys.path entry."""
    _, _, where = frame.rpartition(" (")
    for prefix, area in AREAS:
        if where.startswith(prefix) or f"/{prefix}" in where:
            return area
    return "other"


_LINE = re.compile(r":\d+\)$")


def parse_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw format: 'frame;frame;... count' per line, outermost first."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks) or 1
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if not frames:
            continue
        functions = [_LINE.sub(")", frame) for frame in frames]  # a function, not a line
        own[functions[-1]] += count
        areas[area_of(frames[-1])] += count
        for function in set(functions):
            inclusive[function] += count
    lines = [f"{total:,} samples (CPU only)", "", "| area (innermost frame) | share |", "|---|---|"]
    lines += [f"| {a} | {100 * n / total:.1f} % |" for a, n in areas.most_common()]
    lines += ["", "| own time: function (file) | share |", "|---|---|"]
    lines += [f"| `{f}` | {100 * n / total:.1f} % |" for f, n in own.most_common(top)]
    lines += ["", "| inclusive: function (file) | share |", "|---|---|"]
    lines += [f"| `{f}` | {100 * n / total:.1f} % |" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def record(
    dep: Deployment, out: Path, rate: int, gil: bool = False, idle: bool = False
) -> tuple[float, int]:
    """Run one worker under py-spy until the backlog is in; return (seconds, messages)."""
    env = {
        **dep.env,
        "TASKSTREAM_DATA_DIR": str(dep.root / f"{dep.name}-profiled"),
        "TASKSTREAM_WEB_PORT": str(broker.free_port()),
    }
    raw = out / "profile.txt"
    log = (out / "worker.log").open("wb")
    cmd = [PY_SPY, "record", "--format", "raw", "--rate", str(rate), "--threads", "-o", str(raw)]
    # --gil: only the thread holding the GIL, so threads blocked in C
    # (librdkafka's flush, a consumer's poll) do not pass for CPU.
    cmd += ["--gil"] if gil else []
    # --idle: also the samples of threads waiting (in select, a lock, a
    # flush): where the main thread waits instead of working.
    cmd += ["--idle"] if idle else []
    cmd += ["--", TASKSTREAM, "worker", "--loglevel", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    dep.workers.append(proc)
    began = time.time()  # wait_consumed answers in epoch seconds
    _, end = dep.input_counts()
    done = dep.wait_consumed(900)
    # SIGINT to py-spy stops the worker and writes the profile.
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    return done - began, end


def _peer_deployment(bootstrap: str, root: Path, events: int, users: int) -> Deployment:
    """A deployment set up as `bench peer` sets up taskstream, its log produced."""
    from bench import peer, peer_log

    system = peer.Taskstream(bootstrap, root)
    peer.produce(
        system.settings, peer_log.wire(peer_log.generate(peer_log.PeerShape(events, users)))
    )
    dep = Deployment.__new__(Deployment)  # its topics and settings, not a new deployment
    dep.bootstrap, dep.root, dep.partitions = bootstrap, root, peer.PARTITIONS
    dep.name, dep.env, dep.settings = system.settings.app_id, system.env, system.settings
    dep.workers, dep.web_ports = [], {}
    return dep


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench profile")
    parser.add_argument("--events", type=int, default=100_000, help="backlog size")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path(".cache/profile"))
    parser.add_argument(
        "--peer", action="store_true", help="the peer benchmark's log and template (bench peer)"
    )
    parser.add_argument(
        "--latency-log",
        action="store_true",
        help="the latency run's log (bench stream's latency_shape): half the orders count for a "
        "task, and users' states grow through it",
    )
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    parser.add_argument(
        "--idle", action="store_true", help="also sample waiting threads (where the worker waits)"
    )
    args, _ = parser.parse_known_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with bench_broker("bench-profile-") as (bootstrap, root):
        if args.peer:
            dep = _peer_deployment(bootstrap, root, args.events, args.users)
        elif args.latency_log:
            dep = Deployment(bootstrap, root)
            dep.produce(generate(latency_shape(args.events)))
        else:
            dep = Deployment(bootstrap, root)
            dep.produce(generate(LogShape(events=args.events, users=args.users, seed=20261123)))
        try:
            seconds, messages = record(dep, args.out, args.rate, args.gil, args.idle)
        finally:
            dep.stop()
    say(f"{messages:,} messages in {seconds:.1f} s (worker start included)")
    stacks = parse_collapsed(args.out / "profile.txt")
    flags = " --peer" if args.peer else " --latency-log" if args.latency_log else ""
    flags += " --gil" if args.gil else ""
    command = f"python -m bench profile --events {args.events}{flags}"
    print(f"`{command}`: one worker, {messages:,} messages")
    print()
    print(summarise(stacks, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
