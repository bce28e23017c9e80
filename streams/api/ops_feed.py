"""The operator page's log reader: a thread in the render API process.

It reads the output topics (task-events, rewards, dead-letters) from their
beginning, every partition, without a consumer group (nothing committed,
no rebalance with anyone), and folds each record into an
`app.ops_view.CampaignView`. Every WATERMARK_SECONDS it also reads the high
watermark of every input partition, which the page sets against the
workers' positions to show the lag.

Started by the first request for the page's data, so an API process whose
page nobody opens reads nothing. Reading a long log takes a while (it goes
at ~100,000 records/s); the snapshot says how far it got.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.catalog import Pool
from app.ops_view import CampaignView
from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.records import Record

log = logging.getLogger("taskstream.api")

WATERMARK_SECONDS = 2.0
_BATCH = 1000


@dataclass(frozen=True)
class FeedProgress:
    started: bool
    read: int  # records read from the output topics
    behind: int  # records between what was read and the ends last seen
    caught_up: bool  # read to the ends seen at the start at least once
    error: str


class OpsFeed:
    """Follows the output topics into a `CampaignView` (read it with `view_locked`)."""

    def __init__(
        self,
        consumer_config: Mapping[str, Any],
        outputs: Sequence[str],
        inputs: Mapping[str, str],
        pools: Callable[[], Mapping[str, Pool]],
    ) -> None:
        """`outputs`: full topic names to fold; `inputs`: short name -> full
        name of the topics whose high watermarks are wanted; `pools`: the
        catalog's pools now (an items pool counts rewards, not cents)."""
        self._config = dict(consumer_config)
        self._outputs = list(outputs)
        self._inputs = dict(inputs)
        self._pools = pools
        self.view = CampaignView()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = 0
        self._positions: dict[tuple[str, int], int] = {}
        self._ends: dict[tuple[str, int], int] = {}
        self._start_ends: dict[tuple[str, int], int] | None = None
        self._caught_up = False
        self._error = ""
        self.watermarks: dict[str, dict[int, int]] = {}  # short input name -> partition -> high

    def ensure_started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ops-feed", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def progress(self) -> FeedProgress:
        with self.lock:
            behind = sum(max(0, end - self._positions.get(tp, 0)) for tp, end in self._ends.items())
            return FeedProgress(
                self._thread is not None, self._read, behind, self._caught_up, self._error
            )

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            {
                **self._config,
                "group.id": "taskstream-ops-page",  # required by the client; never joined
                "enable.auto.commit": False,
            }
        )
        # Its own client for the watermarks: on the reading one each query
        # waits behind the fetch in flight (up to fetch.wait.max.ms, 0.5 s).
        marks_client = Consumer(
            {**self._config, "group.id": "taskstream-ops-page", "enable.auto.commit": False}
        )
        try:
            assigned = []
            for topic in self._outputs:
                metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if metadata is None or metadata.error is not None:
                    raise RuntimeError(f"topic {topic} not found")
                assigned += [TopicPartition(topic, p, 0) for p in sorted(metadata.partitions)]
            consumer.assign(assigned)
            marks_at = 0.0
            while not self._stop.is_set():
                if time.monotonic() - marks_at >= WATERMARK_SECONDS:
                    self._read_watermarks(marks_client, assigned)
                    marks_at = time.monotonic()
                messages = consumer.consume(_BATCH, 0.2)
                if messages:
                    self._apply(messages)
        except Exception as exc:  # shown on the page; the API goes on serving
            log.exception("operator page: reading the output topics failed")
            with self.lock:
                self._error = f"reading the output topics failed: {exc}"
        finally:
            consumer.close()
            marks_client.close()

    def _read_watermarks(self, consumer: Any, outputs: Sequence[Any]) -> None:
        from confluent_kafka import TopicPartition

        marks: dict[str, dict[int, int]] = {}
        for short, topic in self._inputs.items():
            metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is None or metadata.error is not None:
                continue
            marks[short] = {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                for p in sorted(metadata.partitions)
            }
        ends = {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=5)[1]
            for tp in outputs
        }
        with self.lock:
            self.watermarks = marks
            self._ends = ends
            if self._start_ends is None:
                self._start_ends = dict(ends)
            self._check_caught_up()

    def _apply(self, messages: Sequence[Any]) -> None:
        pools = self._pools()
        with self.lock:
            for message in messages:
                if message.error() is not None:
                    continue
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                try:
                    record: Record | None = decode(message.value() or b"")
                except SchemaError:
                    record = None  # counted as unreadable
                _, at_ms = message.timestamp()
                self.view.apply(record, pools, f"{topic}/{partition}@{offset}", at_ms)
                self._positions[(topic, partition)] = offset + 1
                self._read += 1
            self._check_caught_up()

    def _check_caught_up(self) -> None:
        if self._caught_up or self._start_ends is None:
            return
        self._caught_up = all(
            self._positions.get(tp, 0) >= end for tp, end in self._start_ends.items()
        )
