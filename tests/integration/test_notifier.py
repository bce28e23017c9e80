"""`taskstream notify` on a real broker, killed and restarted mid-run.

Reward records go straight to the rewards topic of a fresh deployment (no
workers needed), a quarter of them twice, as a worker's at-least-once
output would have them, plus one message that is no reward event. A local
webhook records every request without de-duplicating anything; it answers
500 to the first attempts of some effects and 422 to one for good.

The notifier runs three times over the same de-dup store: SIGKILLed after
some deliveries, SIGTERMed after more, then left to finish (--idle-timeout).
The guarantee of docs/notifier.md, asserted as written there:
- every effect reaches the webhook; by Idempotency-Key exactly once, except
  that a SIGKILL may repeat the one delivery in flight (at most one extra
  2xx per kill, none for SIGTERM);
- a revoke is never delivered before its grant (retries hold the partition);
- the refused effect and the bad message are in the dead-letters topic;
- the group's offsets are committed to the end of every partition.
A second part runs the stdout target, and again under a new group with the
same store: every copy is then a duplicate, nothing is printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from support.workers import TASKSTREAM, Deployment

from schemas.codec import encode
from schemas.records import RewardGranted, RewardRejected, RewardRevoked
from taskstream.kafka_io import producer

pytestmark = pytest.mark.integration

USERS = 60
PARTITIONS = 4
AT = 1_709_800_000_000_000
RESPONSE_DELAY = 0.03  # seconds per webhook answer: slow enough to kill mid-run


# ------------------------------------------------------------------ records


def _fields(user: str, amount: int) -> tuple[str, str, str, int, None, str, str, int, str]:
    return (user, "tpl", f"task-{user}", amount, None, "cash", "completed", AT, f"o-{user}")


def reward_log() -> tuple[list[tuple[str, bytes, str]], dict[str, bytes]]:
    """(user, bytes, effect key) in log order, with duplicates; key -> bytes."""
    log: list[tuple[str, bytes, str]] = []
    for i in range(USERS):
        user = f"u{i:03d}"
        log.append(
            (user, encode(RewardGranted(f"g-{user}", f"rwd-{user}", *_fields(user, 100 + i))),
             f"rwd-{user}:granted")
        )  # fmt: skip
        if i % 4 == 0:
            log.append(
                (user, encode(RewardRevoked(f"v-{user}", f"rwd-{user}", *_fields(user, 100 + i))),
                 f"rwd-{user}:revoked")
            )  # fmt: skip
        if i % 7 == 0:
            log.append(
                (user, encode(RewardRejected(f"j-{user}", f"rwx-{user}", *_fields(user, 900))),
                 f"rwx-{user}:rejected")
            )  # fmt: skip
    effects = {key: value for _user, value, key in log}
    duplicates = log[::4]  # the same bytes again, later in the same partition
    return log + duplicates, effects


# ------------------------------------------------------------------ webhook


@dataclass
class Hit:
    key: str
    status: int
    body: bytes
    content_type: str


@dataclass
class Webhook:
    """Records every request; answers by a plan, de-duplicates nothing."""

    fail_first: dict[str, int]  # key -> how many 500s before a 200
    refuse: set[str]  # keys answered 422, always
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, key: str, body: bytes, content_type: str) -> int:
        with self.lock:
            seen = sum(1 for hit in self.hits if hit.key == key)
            if key in self.refuse:
                status = 422
            elif seen < self.fail_first.get(key, 0):
                status = 500
            else:
                status = 200
            self.hits.append(Hit(key, status, body, content_type))
            return status

    def delivered(self) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if hit.status == 200]

    def serve(self) -> ThreadingHTTPServer:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(RESPONSE_DELAY)
                status = hook.answer(
                    self.headers.get("Idempotency-Key", ""),
                    body,
                    self.headers.get("Content-Type", ""),
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


# ----------------------------------------------------------------- notifier


class NotifierRun:
    def __init__(self, deployment: Deployment, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [TASKSTREAM, "notify", "--summary-seconds", "1", *args],
                env={**os.environ, **deployment.env, "PYTHONUNBUFFERED": "1"},
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def signal(self, signum: int, timeout: float = 30) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(done: Callable[[], bool], timeout: float, why: str, run: NotifierRun) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {why}\n--- notifier log ---\n{run.log()[-3000:]}")


def committed_and_end(deployment: Deployment, group: str) -> dict[int, tuple[int, int]]:
    topic = deployment.settings.topic("rewards")
    probe = Consumer(
        {"bootstrap.servers": deployment.bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = {tp.partition: tp.offset for tp in probe.committed(tps, timeout=10)}
        return {
            tp.partition: (committed[tp.partition], probe.get_watermark_offsets(tp, timeout=10)[1])
            for tp in tps
        }
    finally:
        probe.close()


# ------------------------------------------------------------------ fixture


@dataclass
class Setup:
    deployment: Deployment
    effects: dict[str, bytes]
    sent: int


@pytest.fixture(scope="module")
def setup(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    deployment = Deployment(kafka, tmp_path_factory.mktemp("notifier"), partitions=PARTITIONS)
    deployment.create_topics()
    log, effects = reward_log()
    client = producer(deployment.settings)
    topic = deployment.settings.topic("rewards")
    for user, value, _key in log:
        client.produce(topic, value, user.encode())
    client.produce(topic, b"this is no reward event", b"u000")
    assert client.flush(30) == 0
    return Setup(deployment, effects, len(log) + 1)


# -------------------------------------------------------------------- tests


def test_webhook_gets_every_effect_once_across_a_kill_and_a_stop(setup: Setup) -> None:
    deployment, effects = setup.deployment, setup.effects
    refused = "rwd-u005:granted"
    # Grants followed by a revoke in the same partition fail first: the revoke must wait.
    flaky = {"rwd-u000:granted": 2, "rwd-u008:granted": 1, "rwx-u014:rejected": 3}
    hook = Webhook(flaky, {refused})
    server = hook.serve()
    url = f"http://127.0.0.1:{server.server_address[1]}/rewards"
    data_dir = deployment.root / "notifier-data"
    args = ("--webhook", url, "--data-dir", str(data_dir))
    log_path = deployment.root / "notifier.log"
    runs: list[NotifierRun] = []
    try:
        started = time.monotonic()
        runs.append(first := NotifierRun(deployment, log_path, *args))
        wait_for(lambda: len(hook.delivered()) >= 25, 60, "25 deliveries", first)
        first.signal(signal.SIGKILL)
        killed_at = len(hook.delivered())

        runs.append(second := NotifierRun(deployment, log_path, *args))
        wait_for(lambda: len(hook.delivered()) >= killed_at + 25, 60, "25 more", second)
        assert second.signal(signal.SIGTERM) == 0, second.log()[-2000:]
        assert "SIGTERM, stopping after the current delivery" in second.log()

        runs.append(last := NotifierRun(deployment, log_path, *args, "--idle-timeout", "3"))
        assert last.proc.wait(timeout=90) == 0, last.log()[-2000:]
        elapsed = time.monotonic() - started
    finally:
        for run in runs:
            run.stop()
        server.shutdown()
        server.server_close()

    delivered = hook.delivered()
    keys = [hit.key for hit in delivered]
    assert set(keys) == set(effects) - {refused}, "an effect is missing or unknown"
    repeated = {key: keys.count(key) for key in set(keys) if keys.count(key) > 1}
    # The one window: delivered, then SIGKILLed before the store recorded it.
    assert len(keys) - len(set(keys)) <= 1, f"more than one repeat for one SIGKILL: {repeated}"
    for hit in delivered:
        assert orjson.loads(hit.body) == orjson.loads(effects[hit.key])
        assert hit.content_type == "application/json"
    # Retried until they succeeded, and a revoke never overtook its grant.
    for key, failures in flaky.items():
        statuses = [hit.status for hit in hook.hits if hit.key == key]
        assert statuses[: failures + 1] == [500] * failures + [200], (key, statuses)
    first_seen = {key: keys.index(key) for key in set(keys)}
    for key in effects:
        if key.endswith(":revoked") and key.replace("revoked", "granted") != refused:
            assert first_seen[key.replace("revoked", "granted")] < first_seen[key], key
    # The refused effect and the bad message are dead letters, with their reasons.
    letters = deployment.reader("dead-letters")
    letters.wait_until(lambda ms: len(ms) >= 2, 30, why="two dead letters")
    reasons = {str(m["reason"]) for m in letters.messages}
    letters.close()
    assert any(refused in reason and "HTTP 422" in reason for reason in reasons), reasons
    assert any(reason.startswith("not a reward event: malformed JSON") for reason in reasons)
    assert [hit.status for hit in hook.hits if hit.key == refused] == [422]
    # Offsets: committed to the end of every partition.
    offsets = committed_and_end(deployment, f"{deployment.name}-notifier")
    assert all(committed == end for committed, end in offsets.values()), offsets
    assert sum(end for _, end in offsets.values()) == setup.sent
    summary = last.log().strip().splitlines()[-1]
    assert "notifier stopped: delivered" in summary, summary
    print(
        f"\n[notifier] {len(effects)} effects, {setup.sent} messages, {len(keys)} deliveries "
        f"({len(keys) - len(set(keys))} repeated after the SIGKILL), "
        f"{len(hook.hits)} requests, {elapsed:.1f}s for three runs"
    )


def test_stdout_prints_each_effect_once_and_the_store_alone_skips_copies(setup: Setup) -> None:
    deployment, effects = setup.deployment, setup.effects
    data_dir = deployment.root / "stdout-data"
    for group in ("stdout-a", "stdout-b"):  # b: new group, offsets from 0, same store
        run = NotifierRun(
            deployment,
            deployment.root / f"{group}.log",
            "--group",
            group,
            "--data-dir",
            str(data_dir),
            "--idle-timeout",
            "3",
        )
        try:
            out, _ = run.proc.communicate(timeout=90)
        finally:
            run.stop()
        assert run.proc.returncode == 0, run.log()[-2000:]
        lines = [line for line in out.decode().splitlines() if line.strip()]
        if group == "stdout-a":
            docs = [orjson.loads(line) for line in lines]
            keys = [f"{doc['reward_id']}:{doc['type'].removeprefix('reward_')}" for doc in docs]
            assert sorted(keys) == sorted(effects), "each effect exactly once on stdout"
            assert all(
                doc == orjson.loads(effects[key]) for doc, key in zip(docs, keys, strict=True)
            )
        else:
            assert lines == [], "every copy is a duplicate in the store"
            assert f"duplicates {setup.sent - 1}" in run.log()
        assert all(c == e for c, e in committed_and_end(deployment, group).values())
