"""The README's "A campaign in ten commands", run as written against a fresh
broker (issue 16): each line of its shell block, in order, with what it
prints checked. The broker is the suite's (not `kafka up`), and the worker
line runs as a test worker process; every other line runs verbatim from
the repository's folder."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.workers import Deployment, WorkerProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = ".venv/bin/taskstream"


def tour_lines() -> list[str]:
    """The commands of the README's tour, comments stripped."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## A campaign in ten commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the tour's shell block"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


@pytest.fixture
def worker_holder() -> Iterator[list[WorkerProcess]]:
    workers: list[WorkerProcess] = []
    yield workers
    for worker in workers:
        worker.stop()


def _caught_up(deployment: Deployment, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lags = [deployment.group_lag(t) for t in ("claims", "orders", "refunds", "ticks")]
        # An empty partition has nothing to commit (-1001 against an end of 0).
        if all(committed >= end or end == 0 for lag in lags for committed, end in lag.values()):
            return
        time.sleep(0.5)
    raise AssertionError("the worker did not catch up with the inputs")


def test_the_readme_tour_runs_as_written(
    kafka: str, tmp_path: Path, worker_holder: list[WorkerProcess]
) -> None:
    lines = tour_lines()
    assert len(lines) == 10
    assert all(line.startswith(BIN + " ") for line in lines), lines
    deployment = Deployment(kafka, tmp_path, partitions=4)
    seen: dict[str, subprocess.CompletedProcess[str]] = {}
    for line in lines:
        args = shlex.split(line[len(BIN) + 1 :])
        command = " ".join(args[:2])
        if args[:2] == ["kafka", "up"]:
            continue  # the suite's broker stands in for it
        if args[0] == "worker":
            assert line.endswith("&")  # in the background, as the README says
            worker_holder.append(deployment.worker("tour").start())
            continue
        if args[0] in ("pools", "explain", "audit"):
            _caught_up(deployment)  # a reader of the README types slower than this test
        done = deployment.cli(*args, timeout=180, cwd=ROOT)
        seen[command] = done
        expected = 1 if args[0] == "produce" else 0  # the README says why
        assert done.returncode == expected, (line, done.stdout[-2000:], done.stderr[-2000:])

    assert "published" in seen["templates publish"].stdout
    assert "line 28: not JSON" in seen["produce --no-progress"].stderr
    assert "reward_granted" in seen["tail rewards"].stdout
    assert "small_budget" in seen["pools status"].stdout
    assert "user u_alice" in seen["explain u_alice"].stdout
    assert "agree with the replay" in seen["explain u_alice"].stdout
