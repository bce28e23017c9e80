"""`python -m bench ab --against REF`: this tree against another commit, one worker
each, alternating on one broker.

The peer benchmark's single runs move by 25-40 % on these 2-core machines
(BENCHMARKS.md "peer"), more than most changes do, and two `bench peer`
runs an hour apart also differ by the machine's mood. This puts the two
code trees side by side in one run instead:

- REF (any git revision) is checked out into a temporary worktree, and
  both trees' bytecode is compiled, as `make setup` does for this one;
- the peer benchmark's log is produced for each run, as in `bench peer`,
  and one `taskstream worker` works through it, with PYTHONPATH set to the
  tree under test (so its packages shadow the installed ones);
- the compiled kernel: where REF's `native/` sources differ from this
  tree's, REF's own kernel is built (`pip wheel`, cargo on PATH as `make
  setup` has it) into the scratch folder and put on REF's PYTHONPATH ahead
  of the installed one, so a kernel change is compared too; otherwise both
  trees use the installed kernel;
- the trees take turns (this, REF, REF, this, ...), `--repeat` runs each,
  after one untimed run that warms the broker up;
- per run: events/s over the span of reward times (`bench peer`'s
  measure), CPU seconds of the worker, and the CPU after its first reward;
  then the medians and their ratio.

It also times the batch step in memory (`bench.batchcore.run_once`, no
Kafka: steadier) in a child process per tree, alternating the same way.

Not in `make bench` (it needs a revision to compare with).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bench import peer
from bench.peer_log import PeerShape, PeerTemplate, expected_rewards, generate, wire
from bench.stream import bench_broker

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "schemas", "streams", "taskstream", "bench")
# What the kernel is built from (the Makefile's NATIVE_SRC).
NATIVE_FILES = ("Cargo.toml", "Cargo.lock", "pyproject.toml", "taskstream_native.pyi")


def say(message: str) -> None:
    print(f"[bench ab] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Tree:
    label: str
    path: Path
    kernel: Path | None = None  # its own compiled kernel (None: the installed one)

    @property
    def pythonpath(self) -> str:
        return os.pathsep.join(str(p) for p in (self.path, self.kernel) if p is not None)


@dataclass(frozen=True)
class Sample:
    span_rate: float  # events/s between the first and the last reward
    cpu_s: float  # the worker's CPU seconds for the run
    cpu_after_first: float  # of which after its first reward
    batch_us: float  # the batch step in memory, µs/event


def checkout(ref: str, into: Path) -> Tree:
    """A worktree of `ref` at `into` (removed by `remove`)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), ref],
        check=True,
    )
    described = subprocess.run(
        ["git", "-C", str(into), "log", "-1", "--format=%h"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Tree(f"{ref} ({described})", into)


def native_sources(tree: Path) -> dict[str, Path]:
    native = tree / "native"
    found = {name: native / name for name in NATIVE_FILES if (native / name).is_file()}
    found.update({f"src/{p.name}": p for p in sorted((native / "src").glob("*.rs"))})
    return found


def same_kernel(a: Path, b: Path) -> bool:
    """Whether two trees' kernels are built from the same sources."""
    ours, theirs = native_sources(a), native_sources(b)
    return ours.keys() == theirs.keys() and all(
        filecmp.cmp(ours[name], theirs[name], shallow=False) for name in ours
    )


def build_kernel(tree: Tree, into: Path) -> Tree:
    """`tree` with its own kernel, built from its native/ into `into` (the
    same tree if its kernel is the installed one's, or it has none)."""
    if not (tree.path / "native").is_dir() or same_kernel(ROOT, tree.path):
        return tree
    say(f"{tree.label}: its native/ differs from this tree's; building its kernel (~1 min)")
    wheels = into / "wheel"
    cargo = str(Path.home() / ".cargo" / "bin")
    env = {**os.environ, "PATH": os.pathsep.join([cargo, os.environ.get("PATH", "")])}
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels)]
    subprocess.run([*build, str(tree.path / "native")], check=True, env=env)
    (wheel,) = wheels.glob("taskstream_native-*.whl")
    kernel = into / "kernel"
    with zipfile.ZipFile(wheel) as unpacked:
        unpacked.extractall(kernel)
    return Tree(f"{tree.label}, own kernel", tree.path, kernel)


def remove(tree: Tree) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree.path)],
        check=False,
        capture_output=True,
    )
    shutil.rmtree(tree.path, ignore_errors=True)


def compile_bytecode(tree: Tree) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": ""}
    packages = [str(tree.path / p) for p in PACKAGES if (tree.path / p).is_dir()]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def batch_step(tree: Tree, events: int, users: int) -> tuple[float, str]:
    """(µs/event, digest of the outputs) of the batch step in memory, in a
    child importing `tree`; (nan, "") where `tree` has no `bench.batchcore`."""
    code = (
        "import json; from bench.batchcore import run_once; "
        f"r = run_once({events}, {users}, 500); "
        "print(json.dumps([r.micros_per_event, r.digest]))"
    )
    # The child's working directory is the tree: `python -c` puts it first
    # on sys.path, ahead of PYTHONPATH.
    env = {**os.environ, "PYTHONPATH": tree.pythonpath}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree.path
    )
    if done.returncode != 0:
        say(f"{tree.label}: no batch step timing ({done.stderr.strip().splitlines()[-1:]})")
        return math.nan, ""
    micros, digest = json.loads(done.stdout.strip().splitlines()[-1])
    return float(micros), str(digest)


def worker_run(
    tree: Tree, bootstrap: str, root: Path, lines: list[bytes], want: int
) -> peer.Result:
    system = peer.Taskstream(bootstrap, root)
    system.env = {**system.env, "PYTHONPATH": tree.pythonpath}
    peer.produce(system.settings, lines)
    result = peer.run(system, len(lines), want, 600)
    problems = peer.log_problems(system)
    if problems:
        raise RuntimeError(f"{tree.label}: error lines in the worker's log: {problems[:3]}")
    return result


def order(trees: list[Tree], n: int) -> list[Tree]:
    """This, REF, REF, this, ...: neither tree always runs first."""
    return trees if n % 2 == 0 else trees[::-1]


def ratio(a: float, b: float) -> str:
    """a / b, or n/a where either is unknown (a tree without the batch step)."""
    return "n/a" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}x"


def report(samples: dict[str, list[Sample]], trees: list[Tree]) -> str:
    rows = [
        "| tree | events/s (first→last reward) | worker CPU s | CPU s after the first reward "
        "| batch step µs/event |",
        "|---|---|---|---|---|",
    ]
    medians: dict[str, Sample] = {}
    for tree in trees:
        runs = samples[tree.label]
        m = Sample(
            statistics.median(s.span_rate for s in runs),
            statistics.median(s.cpu_s for s in runs),
            statistics.median(s.cpu_after_first for s in runs),
            statistics.median(s.batch_us for s in runs),
        )
        medians[tree.label] = m
        rows.append(
            f"| {tree.label} | {m.span_rate:,.0f} | {m.cpu_s:.2f} | {m.cpu_after_first:.2f} "
            f"| {m.batch_us:.2f} |"
        )
    this, other = (medians[t.label] for t in trees)
    rows.append(
        f"| this / other | {ratio(this.span_rate, other.span_rate)} "
        f"| {ratio(this.cpu_s, other.cpu_s)} "
        f"| {ratio(this.cpu_after_first, other.cpu_after_first)} "
        f"| {ratio(this.batch_us, other.batch_us)} |"
    )
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ab", description=__doc__)
    parser.add_argument("--against", required=True, help="a git revision to compare this tree with")
    parser.add_argument("--repeat", type=int, default=4, help="runs of each tree")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=14)
    args, _ = parser.parse_known_args(argv)
    print(f"command: `python -m bench ab --against {args.against} --repeat {args.repeat}`\n")
    log = generate(PeerShape(events=args.events, users=args.users, seed=args.seed))
    lines = wire(log)
    want = sum(expected_rewards(log, PeerTemplate.load()).values())
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as scratch:
        try:
            other = checkout(args.against, Path(scratch) / "other")
        except subprocess.CalledProcessError:
            say(f"cannot check out {args.against!r}")
            return 2
        try:
            other = build_kernel(other, Path(scratch))
        except subprocess.CalledProcessError:
            remove(other)
            say(f"cannot build the kernel of {args.against!r}")
            return 2
        trees = [Tree("this tree", ROOT), other]
        samples: dict[str, list[Sample]] = {t.label: [] for t in trees}
        digests: dict[str, set[str]] = {}
        try:
            for tree in trees:
                compile_bytecode(tree)
            with bench_broker("bench-ab-") as (bootstrap, root):
                peer.warm_up(peer.Taskstream(bootstrap, root), lines, want, 600)
                for n in range(args.repeat):
                    for tree in order(trees, n):
                        result = worker_run(tree, bootstrap, root, lines, want)
                        micros, digest = batch_step(tree, args.events, args.users)
                        digests.setdefault(tree.label, set()).add(digest)
                        sample = Sample(
                            result.span_rate,
                            result.cpu_s,
                            result.cpu_s - result.cpu_at_first,
                            micros,
                        )
                        samples[tree.label].append(sample)
                        say(
                            f"run {n + 1} {tree.label}: {sample.span_rate:,.0f} ev/s (span), "
                            f"CPU {sample.cpu_s:.2f}s ({sample.cpu_after_first:.2f}s after the "
                            f"first reward), batch step {sample.batch_us:.2f} µs/event"
                        )
        finally:
            remove(other)
    print(report(samples, trees))
    if len({d for found in digests.values() for d in found} - {""}) > 1:
        print(
            "\nThe batch step's outputs differ between the trees (or between runs): "
            "fine for a change of behaviour, a bug otherwise."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
