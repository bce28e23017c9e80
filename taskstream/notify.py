"""`taskstream notify`: the reference notifier, the downstream side of the rewards topic.

    taskstream notify [--webhook URL] [--group G] [--data-dir DIR]
                      [--idle-timeout S] [--summary-seconds S] [--timeout S]

Reads `<prefix>rewards` in its own consumer group and delivers every effect
(reward granted, revoked, rejected) once: as one JSON line on stdout, or as
an HTTP POST of the event's JSON to a webhook. Workers write reward events at
least once; the notifier de-duplicates them by effect key
(`<reward_id>:<kind>`, app.notifications) in its own RocksDB. The order of
each step is what makes a crash safe:

    deliver -> record the effect key in RocksDB (synced) -> commit the offset

A crash between delivery and record re-delivers that one effect after the
restart (the webhook gets `Idempotency-Key: <reward_id>:<kind>` to spot it);
a crash between record and commit reads the message again and skips it as a
duplicate. A delivery that may succeed later (5xx, 408, 429, timeout,
refused connection) is retried with exponential backoff for as long as it
takes, holding back the later messages of its partition (a revoke must not
overtake its grant); other partitions go on. A webhook that refuses an
event for good (other 4xx) gets it dead-lettered to `<prefix>dead-letters`
with the reason. docs/notifier.md has the details.

Exit codes: 0 stopped (SIGTERM, Ctrl-C, or --idle-timeout passed);
1 failed (no broker, the de-dup store cannot be opened, stdout closed); 2 bad usage.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import click
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from rocksdict import Rdict, WriteOptions

from app.dead_letters import dead_letter_for
from app.notifications import (
    DeliveryRecord,
    Outcome,
    as_effect,
    backoff_seconds,
    effect_key,
    outcome_of_status,
)
from schemas.codec import decode, encode
from schemas.errors import SchemaError
from streams.config import DEAD_LETTERS, REWARDS, Settings

log = logging.getLogger("taskstream.notify")

EXIT_FAILED = 1
POLL_SECONDS = 0.5
COMMIT_EVERY_SECONDS = 1.0
FETCH_BATCH = 500
WORK_SLICE_SECONDS = 1.0  # deliver for this long, then poll the consumer again
LANE_LIMIT = 2_000  # messages held per partition before it stops fetching


# ------------------------------------------------------------------ targets


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: Outcome
    detail: str  # "HTTP 503", "timed out", ... for the log and dead letters


class Target(Protocol):
    def describe(self) -> str: ...

    def deliver(self, key: str, payload: bytes) -> Attempt: ...


class StdoutTarget:
    """One JSON line per effect on stdout (the event as on the topic)."""

    def describe(self) -> str:
        return "stdout"

    def deliver(self, key: str, payload: bytes) -> Attempt:
        # An OSError (closed pipe, full disk) propagates: the notifier commits
        # what was delivered and exits 1; this effect is delivered after a restart.
        sys.stdout.buffer.write(payload + b"\n")
        sys.stdout.buffer.flush()
        return Attempt(Outcome.DELIVERED, "written")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirected POST would become a GET without body: report the 3xx instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookTarget:
    """POST the event's JSON; the status decides (app.notifications.outcome_of_status)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirects())

    def describe(self) -> str:
        # Logged and written into dead letters: never the URL's credentials
        # (user:password@) or query (often ?token=...).
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return f"webhook {urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, '', ''))}"

    def deliver(self, key: str, payload: bytes) -> Attempt:
        request = urllib.request.Request(
            self.url,
            data=payload,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                "User-Agent": "taskstream-notifier",
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except (OSError, http.client.HTTPException) as exc:
            # URLError, refused connections, resets and timeouts are all OSErrors.
            return Attempt(Outcome.RETRY, f"{type(exc).__name__}: {exc}")
        return Attempt(outcome_of_status(status), f"HTTP {status}")


# -------------------------------------------------------------- the loop


@dataclass(slots=True)
class Counters:
    delivered: int = 0
    duplicates: int = 0
    retries: int = 0
    dead_letters: int = 0

    def line(self, waiting: int) -> str:
        return (
            f"delivered {self.delivered}, duplicates {self.duplicates}, "
            f"retries {self.retries}, dead letters {self.dead_letters}, waiting {waiting}"
        )


@dataclass(slots=True)
class Pending:
    """A message of one partition, not settled yet (kept in partition order)."""

    message: Message
    attempts: int = 0
    retry_at: float = 0.0  # monotonic seconds


Lane = tuple[str, int]  # (topic, partition)


@dataclass
class Notifier:
    settings: Settings
    group: str
    store: Rdict  # the de-dup store: effect key -> DeliveryRecord
    target: Target
    stop: threading.Event = field(default_factory=threading.Event)
    counters: Counters = field(default_factory=Counters)
    lanes: dict[Lane, deque[Pending]] = field(default_factory=dict)
    # Next offset to commit per partition: everything before it is settled.
    settled: dict[Lane, int] = field(default_factory=dict)
    committed: dict[Lane, int] = field(default_factory=dict)
    paused: set[Lane] = field(default_factory=set)
    jitter: random.Random = field(default_factory=random.Random)
    last_commit: float = 0.0

    def __post_init__(self) -> None:
        from taskstream.kafka_io import client_config, producer

        self.topic = self.settings.topic(REWARDS)
        # The idle clock starts once partitions are assigned; a restart may wait
        # up to a session timeout for its killed predecessor to leave the group.
        self.last_activity = time.monotonic() + self.settings.session_timeout
        self.synced = WriteOptions()
        self.synced.sync = True  # the record must outlive a crash of the machine too
        self.consumer = Consumer(
            client_config(
                self.settings,
                **{
                    "group.id": self.group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": self.settings.session_timeout * 1000,
                    "heartbeat.interval.ms": min(3000, self.settings.session_timeout * 1000 // 3),
                },
            )
        )
        self._dead_letters = producer(self.settings)

    # ---------------------------------------------------------- run

    def run(self, idle_timeout: float | None, summary_seconds: float) -> None:
        self.consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )
        next_summary = time.monotonic() + summary_seconds
        try:
            while not self.stop.is_set():
                self._fetch()
                self._work()
                self._commit(force=False)
                now = time.monotonic()
                if now >= next_summary:
                    log.info("notifier: %s", self.counters.line(self._waiting()))
                    next_summary = now + summary_seconds
                if idle_timeout is not None and self._idle_for(now) >= idle_timeout:
                    log.info("notifier: no message for %.1fs, stopping", idle_timeout)
                    break
        finally:
            self._commit(force=True)
            # Counted before close: leaving the group forgets the waiting messages
            # (they are not committed; the next run delivers them).
            summary = self.counters.line(self._waiting())
            self.consumer.close()
            self._dead_letters.flush(10)
            self.store.close()
            log.info("notifier stopped: %s", summary)

    def _idle_for(self, now: float) -> float:
        return 0.0 if self._waiting() else now - self.last_activity

    def _waiting(self) -> int:
        return sum(len(lane) for lane in self.lanes.values())

    def _fetch(self) -> None:
        timeout = POLL_SECONDS
        if self._waiting():  # wake up for the earliest retry
            due = min(lane[0].retry_at for lane in self.lanes.values() if lane)
            timeout = max(0.0, min(POLL_SECONDS, due - time.monotonic()))
        for message in self.consumer.consume(num_messages=FETCH_BATCH, timeout=timeout):
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("notifier: consumer: %s", error)  # librdkafka recovers
                continue
            lane = (message.topic() or self.topic, message.partition() or 0)
            self.lanes.setdefault(lane, deque()).append(Pending(message))
            self.last_activity = time.monotonic()

    def _work(self) -> None:
        """Settle each partition's messages in order, one per partition in turn,
        for at most a slice of time (the consumer must be polled regularly)."""
        deadline = time.monotonic() + WORK_SLICE_SECONDS
        progress = True
        while progress and not self.stop.is_set() and time.monotonic() < deadline:
            progress = False
            for lane, pending in self.lanes.items():
                if self.stop.is_set():
                    break
                if not pending or pending[0].retry_at > time.monotonic():
                    continue
                if self._settle(pending[0]):
                    done = pending.popleft()
                    self.settled[lane] = (done.message.offset() or 0) + 1
                    progress = True
            self._commit(force=False)
        for lane, pending in self.lanes.items():
            self._hold(lane, pending)

    def _hold(self, lane: Lane, pending: deque[Pending]) -> None:
        """Stop fetching a partition while its head waits for a retry or its
        backlog is full (bounded memory); fetch again when it moves."""
        waiting = bool(pending) and (pending[0].retry_at > 0 or len(pending) >= LANE_LIMIT)
        if waiting and lane not in self.paused:
            self.consumer.pause([TopicPartition(*lane)])
            self.paused.add(lane)
        elif not waiting and lane in self.paused:
            self.consumer.resume([TopicPartition(*lane)])
            self.paused.discard(lane)

    # ------------------------------------------------------- one message

    def _settle(self, pending: Pending) -> bool:
        """Deliver (or skip, or dead-letter) one message; False: retry it later."""
        message = pending.message
        payload = message.value() or b""
        source = f"{message.topic()}/{message.partition()}@{message.offset()}"
        try:
            record = decode(payload)
        except SchemaError as exc:
            return self._dead_letter(pending, None, source, f"not a reward event: {exc}")
        effect = as_effect(record)
        if effect is None:
            reason = f"not a reward event: type {record.TYPE!r}"
            return self._dead_letter(pending, None, source, reason)
        key = effect_key(effect)
        if self.store.get(key) is not None:
            self.counters.duplicates += 1
            return True
        pending.attempts += 1
        attempt = self.target.deliver(key, payload)
        if attempt.outcome is Outcome.DELIVERED:
            self._remember(key, "delivered", pending, source)
            self.counters.delivered += 1
            return True
        if attempt.outcome is Outcome.PERMANENT:
            reason = f"{self.target.describe()} refused {key}: {attempt.detail}"
            return self._dead_letter(pending, key, source, reason)
        self._retry_later(pending, key, attempt.detail)
        return False

    def _retry_later(self, pending: Pending, key: str, detail: str) -> None:
        self.counters.retries += 1
        wait = backoff_seconds(pending.attempts, self.jitter.random())
        pending.retry_at = time.monotonic() + wait
        log.warning(
            "notifier: %s failed (attempt %d, %s); retry in %.2fs",
            key,
            pending.attempts,
            detail,
            wait,
        )

    def _dead_letter(self, pending: Pending, key: str | None, source: str, reason: str) -> bool:
        """Send the message to the dead-letter topic; True once the broker has it."""
        letter = encode(dead_letter_for(pending.message.value() or b"", source, reason))
        self._dead_letters.produce(self.settings.topic(DEAD_LETTERS), letter, pending.message.key())
        if self._dead_letters.flush(30) != 0:
            pending.attempts += 1
            self._retry_later(pending, key or source, "dead-letter topic did not take it")
            return False
        log.warning("notifier: dead letter %s: %s", source, reason)
        self.counters.dead_letters += 1
        if key is not None:
            self._remember(key, "dead_letter", pending, source)
        return True

    def _remember(self, key: str, outcome: str, pending: Pending, source: str) -> None:
        record = DeliveryRecord(outcome, time.time_ns() // 1000, pending.attempts, source)
        self.store.put(key, record.encode(), self.synced)

    # ----------------------------------------------------- offsets, groups

    def _commit(self, force: bool, only: list[Lane] | None = None) -> None:
        lanes = only if only is not None else list(self.settled)
        changed = [
            TopicPartition(topic, partition, self.settled[(topic, partition)])
            for topic, partition in lanes
            if (topic, partition) in self.settled
            and self.committed.get((topic, partition)) != self.settled[(topic, partition)]
        ]
        due = force or time.monotonic() - self.last_commit >= COMMIT_EVERY_SECONDS
        if not changed or not due:
            return
        try:
            self.consumer.commit(offsets=changed, asynchronous=False)
        except KafkaException as exc:
            # Nothing is lost: the de-dup store skips what is read again.
            log.warning("notifier: offset commit failed (%s); will retry", exc)
            return
        for tp in changed:
            self.committed[(tp.topic, tp.partition)] = tp.offset
        self.last_commit = time.monotonic()

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("notifier: assigned %s", _names(partitions))
        self.last_activity = time.monotonic()

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lanes = [(tp.topic, tp.partition) for tp in partitions]
        self._commit(force=True, only=lanes)
        self._forget(lanes)
        log.info("notifier: revoked %s", _names(partitions))

    def _lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget([(tp.topic, tp.partition) for tp in partitions])
        log.warning("notifier: lost %s", _names(partitions))

    def _forget(self, lanes: list[Lane]) -> None:
        """Their next owner reads them from the committed offsets."""
        for lane in lanes:
            self.lanes.pop(lane, None)
            self.settled.pop(lane, None)
            self.committed.pop(lane, None)
            self.paused.discard(lane)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in partitions) or "nothing"


def _open_store(data_dir: Path) -> Rdict:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Rdict(str(data_dir / "delivered"))


# ------------------------------------------------------------------- command


@click.command("notify")
@click.option(
    "--webhook",
    default=None,
    metavar="URL",
    help="POST each effect here (http or https); default: one JSON line per effect on stdout.",
)
@click.option(
    "--group",
    default=None,
    help="Consumer group (default: <TASKSTREAM_APP_ID>-notifier).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".data/notifier"),
    show_default=True,
    help="Where the de-dup store (RocksDB) lives; one notifier per folder.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop (exit 0) after this many seconds without a message and nothing waiting.",
)
@click.option(
    "--summary-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="How often to log the delivered/duplicates/retries/dead letters line.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds one webhook request may take before it counts as failed (and is retried).",
)
def notify(
    webhook: str | None,
    group: str | None,
    data_dir: Path,
    idle_timeout: float | None,
    summary_seconds: float,
    timeout: float,
) -> None:
    """Deliver every reward effect once, to stdout or a webhook.

    Reads the rewards topic (reward_granted, reward_revoked, reward_rejected)
    in its own consumer group, skips copies of effects already delivered
    (de-dup store in --data-dir, key `<reward_id>:<kind>`), and commits
    offsets only after delivery. Webhook: POST of the event's JSON with
    `Idempotency-Key: <reward_id>:<kind>`; 2xx delivered; 5xx, 408, 429 and
    network errors retried with backoff (0.2 s doubling to 30 s, jittered)
    until they succeed, holding that partition; other statuses go to the
    dead-letters topic with the reason. SIGTERM or Ctrl-C: the current
    delivery finishes, offsets are committed, exit 0.

    Exit codes: 0 stopped (signal or --idle-timeout); 1 failed (no broker,
    de-dup store in use or unreadable, stdout closed); 2 bad usage (e.g. a URL that is not
    http(s)).
    """
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise click.BadParameter(f"{webhook!r} is not an http(s) URL", param_hint="--webhook")
    settings = _settings_or_exit()
    target: Target = StdoutTarget() if webhook is None else WebhookTarget(webhook, timeout)
    group = group or f"{settings.app_id}-notifier"
    try:
        store = _open_store(data_dir)
    except Exception as exc:  # rocksdict raises a bare Exception for a locked store
        _fail(f"cannot open the de-dup store in {data_dir} ({exc}); is another notifier using it?")
        return
    notifier = Notifier(settings, group, store, target)
    _stop_on_signals(notifier.stop)
    log.info(
        "notifier: group %s, topic %s, data dir %s, target %s",
        group,
        notifier.topic,
        data_dir,
        target.describe(),
    )
    try:
        notifier.run(idle_timeout, summary_seconds)
    except KafkaException as exc:
        _fail(f"Kafka: {exc}")
    except OSError as exc:  # stdout closed or full: nothing more can be delivered
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _fail(f"cannot write to stdout ({exc}); what was not written is delivered after a restart")


def _settings_or_exit() -> Settings:
    from taskstream.kafka_io import broker_answers

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not broker_answers(settings, timeout=5.0):
        _fail(
            f"no Kafka broker answers at {settings.bootstrap}: start the local one with "
            "`make kafka-up`, or set KAFKA_BOOTSTRAP to your cluster"
        )
    return settings


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and Ctrl-C ask the loop to stop after the current delivery."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("notifier: %s, stopping after the current delivery", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _fail(message: str) -> None:
    click.echo(f"taskstream notify: {message}", err=True)
    sys.exit(EXIT_FAILED)
