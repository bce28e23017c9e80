"""`taskstream tail` and `taskstream topics list` against a real broker
(issue 16, problems 2, 3 and 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from support.workers import TASKSTREAM, Deployment

pytestmark = pytest.mark.integration


def _claim(i: int) -> bytes:
    return orjson.dumps(
        {"type": "task_claim", "v": 1, "event_id": f"c-{i}", "user_id": f"u{i:03d}",
         "template_id": "t", "at": "2024-03-07T08:00:00Z", "user_tags": []}
    )  # fmt: skip


def _claims(n: int) -> list[bytes]:
    return [_claim(i) for i in range(n)]


@pytest.fixture
def deployment(kafka: str, tmp_path: Path) -> Deployment:
    deployment = Deployment(kafka, tmp_path, partitions=4)
    deployment.create_topics()
    deployment.produce(_claims(30))
    return deployment


def test_two_tails_at_once_each_print_the_whole_topic(deployment: Deployment) -> None:
    args = [TASKSTREAM, "tail", "claims", "--from-beginning", "--idle-timeout", "3"]
    env = {**os.environ, **deployment.env}
    tails = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [tail.communicate(timeout=120)[0] for tail in tails]
    for tail, output in zip(tails, outputs, strict=True):
        assert tail.returncode == 0
        ids = [orjson.loads(line)["event_id"] for line in output.splitlines()]
        assert sorted(ids) == sorted(f"c-{i}" for i in range(30))  # all, once each


def test_a_tail_stopped_by_sigterm_leaves_the_next_one_whole(deployment: Deployment) -> None:
    first = subprocess.Popen(
        [TASKSTREAM, "tail", "claims", "--from-beginning"],
        env={**os.environ, **deployment.env},
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    started = time.monotonic()
    done = deployment.cli("tail", "claims", "--from-beginning", "--idle-timeout", "3")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 30
    assert time.monotonic() - started < 30  # no group to wait for


def test_an_unknown_topic_lists_the_valid_names_without_a_traceback(
    deployment: Deployment,
) -> None:
    done = deployment.cli("tail", "no-such-topic", "--idle-timeout", "1")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "no topic 'no-such-topic'" in done.stderr
    for name in ("claims", "task-events", "rewards", "dead-letters"):
        assert name in done.stderr


def test_topics_list_shows_every_topic_and_its_messages(kafka: str, tmp_path: Path) -> None:
    deployment = Deployment(kafka, tmp_path, partitions=4)
    before = deployment.cli("topics", "list")
    assert before.returncode == 3  # nothing created yet
    assert "missing" in before.stdout
    assert "topics create" in before.stderr
    deployment.create_topics()
    deployment.produce(_claims(30))
    after = deployment.cli("topics", "list")
    assert after.returncode == 0, after.stderr
    lines = {line.split()[0]: line for line in after.stdout.splitlines()}
    assert set(lines) >= {"claims", "orders", "rewards", "budget-requests", "templates"}
    assert "4 partition(s)" in lines["claims"]
    assert "30 message(s)" in lines["claims"]
    assert "0 message(s)" in lines["rewards"]
