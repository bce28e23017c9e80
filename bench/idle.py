"""`python -m bench idle`: one worker's fixed costs beside the Quix peer's.

What a worker costs before and between events, on the peer benchmark's
deployment (`bench peer`: same broker, same template, 8 partitions, no
backlog): the CPU of its first seconds (start-up, joining the group,
reading the catalog) and its CPU per second once idle. Both count in every
run of `bench peer` (its CPU figure is the worker's whole life), and the
idle rate is what a fleet of mostly quiet workers costs.

Per run, each system in turn (`--repeat` rounds, the order alternating):
spawn the worker, read its CPU (every thread, /proc) `--start` seconds
later, then again `--seconds` later; the main thread and the others apart.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.peer import Quix, System, Taskstream, peer_python
from bench.stream import bench_broker, stat_cpu


def say(message: str) -> None:
    print(f"[bench idle] {message}", file=sys.stderr, flush=True)


@dataclass
class Idle:
    label: str
    start_cpu: float  # CPU s in the first `start` seconds
    idle_main: float  # CPU s per second once idle: the main thread
    idle_rest: float  # ... every other thread


def thread_times(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of the process, by thread id."""
    times: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            times[int(task.name)] = stat_cpu(task / "stat")[1]
        except OSError:
            continue  # the thread ended meanwhile
    return times


def measure(system: System, start: float, seconds: float) -> Idle:
    proc = system.start()
    try:
        time.sleep(start)
        if proc.poll() is not None:
            raise RuntimeError(
                f"{system.label} exited with {proc.returncode}; its log:\n"
                + system.log_path.read_text(errors="replace")[-3000:]
            )
        began = thread_times(proc.pid)
        time.sleep(seconds)
        ended = thread_times(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    main = ended.get(proc.pid, 0.0) - began.get(proc.pid, 0.0)
    rest = sum(cpu - began.get(tid, 0.0) for tid, cpu in ended.items() if tid != proc.pid)
    return Idle(system.label, sum(began.values()), main / seconds, rest / seconds)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench idle")
    parser.add_argument("--repeat", type=int, default=2, help="rounds (each system once)")
    parser.add_argument("--start", type=float, default=6.0, help="seconds of start-up counted")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of idling measured")
    args, _ = parser.parse_known_args(argv)
    print(
        f"command: `python -m bench idle --repeat {args.repeat} --start {args.start:g} "
        f"--seconds {args.seconds:g}`\n"
    )
    python = peer_python()
    results: dict[str, list[Idle]] = {}
    with bench_broker("bench-idle-") as (bootstrap, root):
        for n in range(args.repeat):
            systems: list[System] = [Taskstream(bootstrap, root), Quix(bootstrap, root, python)]
            for system in systems if n % 2 == 0 else systems[::-1]:
                got = measure(system, args.start, args.seconds)
                results.setdefault(got.label, []).append(got)
                say(
                    f"{got.label} run {n + 1}: {got.start_cpu:.2f} CPU s in the first "
                    f"{args.start:g} s; idle {1000 * (got.idle_main + got.idle_rest):.1f} ms "
                    f"CPU/s (main thread {1000 * got.idle_main:.1f}, others "
                    f"{1000 * got.idle_rest:.1f})"
                )
    print(
        f"| system | CPU s in the first {args.start:g} s | idle: ms of CPU per second "
        "| main thread | other threads |"
    )
    print("|---|---|---|---|---|")
    medians = {}
    for label, runs in results.items():
        start = statistics.median(r.start_cpu for r in runs)
        main_ms = 1000 * statistics.median(r.idle_main for r in runs)
        rest_ms = 1000 * statistics.median(r.idle_rest for r in runs)
        medians[label] = (start, main_ms + rest_ms)
        print(
            f"| {label} | {start:.2f} | {main_ms + rest_ms:.1f} | {main_ms:.1f} | {rest_ms:.1f} |"
        )
    ours, theirs = list(medians.values())[:2]
    print(f"| taskstream / Quix | {ours[0] / theirs[0]:.2f}x | {ours[1] / theirs[1]:.2f}x | | |")
    print(f"\nmedians of {args.repeat} runs each")
    return 0
