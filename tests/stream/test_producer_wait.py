"""The worker's producer when the brokers do not take its records
(streams.kafka.producer): it keeps them and waits, without a time limit,
and says every WAIT_WARNING_SECONDS why the batch's inputs stay
uncommitted. A real librdkafka client aimed at a port nobody listens on."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from confluent_kafka import Producer

from streams.kafka import producer as producer_module
from streams.kafka.producer import BatchProducer, producer_config
from streams.partition_state import Output
from taskstream.broker import free_port


def test_records_are_retried_without_a_time_limit() -> None:
    config = producer_config({"bootstrap.servers": "x:1"}, 1024)
    assert config["message.timeout.ms"] == 0
    assert config["acks"] == "all"


@pytest.mark.asyncio
async def test_an_unacknowledged_batch_waits_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(producer_module, "WAIT_WARNING_SECONDS", 0.5)
    nowhere = f"127.0.0.1:{free_port()}"
    client = BatchProducer(
        producer_config({"bootstrap.servers": nowhere, "reconnect.backoff.max.ms": 200}, 1024),
        frozenset(),
    )
    client.send("outputs", b"k", b"v")
    caplog.set_level(logging.WARNING, logger=producer_module.log.name)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.wait(), timeout=2.5)
    said = [r.getMessage() for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert said, caplog.text
    assert said[0].startswith("1 record(s) not acknowledged by the brokers after ")
    assert "stay uncommitted" in said[0]
    assert "last client error: " in said[0]
    assert client._queued() == 1  # the record is still queued: nothing was dropped
    # Drop it and the clients, or librdkafka goes on reconnecting (and
    # logging to stderr) for the rest of the session.
    for made in client._clients():
        made.purge()
    client.close(timeout=0.1)
    client._client = client._quiet = None


class _Recording:
    """What `send_all` hands librdkafka; a full queue on the second record."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[object, ...], dict[str, object]]] = []
        self.polls = 0
        self._full_once = True

    def produce(self, *args: object, **kwargs: object) -> None:
        if len(self.calls) == 1 and self._full_once:
            self._full_once = False
            raise BufferError("Local: Queue full")
        self.calls.append((args, kwargs))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def test_send_all_hands_over_every_record_in_order_and_retries_a_full_queue() -> None:
    client = BatchProducer({"bootstrap.servers": "x:1"}, frozenset())
    recording = _Recording()
    client._client = client._quiet = recording  # type: ignore[assignment]
    client.send_all([("out", b"k1", b"v1", None), ("out", b"k2", b"v2", 3), ("out", None, None, 0)])
    assert recording.calls == [
        (("out", b"v1", b"k1"), {}),
        (("out", b"v2", b"k2", 3), {}),  # retried after the full queue, not lost
        (("out", None, None, 0), {}),
    ]
    assert recording.polls == 1


def test_send_outputs_hands_over_every_output_by_its_role_topic() -> None:
    client = BatchProducer({"bootstrap.servers": "x:1"}, frozenset())
    recording = _Recording()  # a full queue on the second record
    client._client = client._quiet = recording  # type: ignore[assignment]
    client.send_outputs(
        [
            Output("rewards", b"k1", b"v1"),
            Output("budget", b"p", b"v2", 3),
            Output("late", None, b"v3"),
        ],
        {"rewards": "ts.rewards", "budget": "ts.budget", "late": "ts.late"},
    )
    assert recording.calls == [
        (("ts.rewards", b"v1", b"k1"), {}),
        (("ts.budget", b"v2", b"p", 3), {}),  # retried after the full queue, not lost
        (("ts.late", b"v3", None), {}),
    ]
    assert recording.polls == 1


def test_send_all_gives_headers_only_when_there_are_some() -> None:
    client = BatchProducer({"bootstrap.servers": "x:1"}, frozenset())
    recording = _Recording()
    recording._full_once = False
    client._client = client._quiet = recording  # type: ignore[assignment]
    headers: list[tuple[str, str | bytes | None]] = [("epoch", b"7")]
    client.send_all([("log", b"k", b"v", 2), ("log", b"k", None, None)], headers)
    client.send("out", b"k", b"v")
    assert recording.calls == [
        (("log", b"v", b"k", 2, None, None, 0, headers), {}),
        (("log", None, b"k", -1, None, None, 0, headers), {}),
        (("out", b"v", b"k"), {}),
    ]


def test_the_pinned_client_takes_headers_by_position() -> None:
    """`send_all` passes on_delivery, callback, timestamp and headers by
    position (keywords cost 0.34 µs a record): the pinned confluent-kafka
    must read them in that order, None meaning the client's own callback
    and -1 its partitioner. A failed delivery (no broker) still reports."""
    reports: list[tuple[bytes | None, int | None]] = []
    client = Producer(
        {
            "bootstrap.servers": "127.0.0.1:1",
            "message.timeout.ms": 200,
            "log_level": 0,
            "on_delivery": lambda err, msg: reports.append((msg.key(), msg.partition())),
        }
    )
    client.produce("t", b"v", b"k1", 3, None, None, 0, [("epoch", b"7")])
    client.produce("t", b"v", b"k2", -1, None, None, 0, [("epoch", b"7")])
    client.flush(5)
    assert reports == [(b"k1", 3), (b"k2", None)]  # the second never got a partition


@pytest.mark.asyncio
async def test_outputs_report_failures_only_and_a_failure_fails_the_batch() -> None:
    """The untracked topics' client reports no successes (a Python call per
    output saved), yet an undelivered output still fails the batch."""
    nowhere = f"127.0.0.1:{free_port()}"
    client = BatchProducer(
        producer_config({"bootstrap.servers": nowhere, "reconnect.backoff.max.ms": 200}, 1024),
        frozenset({"changelog"}),
    )
    assert client._quiet_config["delivery.report.only.error"] is True
    assert "delivery.report.only.error" not in client._config  # the changelog's offsets
    client.send("outputs", b"k", b"v")
    assert client._quiet is not None
    client._quiet.purge()  # the output fails: "purged from the queue"
    with pytest.raises(
        producer_module.DeliveryFailed, match=r"1 record\(s\) not delivered: outputs"
    ):
        await asyncio.wait_for(client.wait(), timeout=5)
    client.close(timeout=0.1)
    client._client = client._quiet = None


def test_a_warm_up_without_brokers_names_what_it_could_not_read_and_goes_on() -> None:
    """The start-up warm-up (streams.agents.warm_producer) never fails a
    worker: with no broker it says which topics have no metadata yet, and
    both clients exist (librdkafka keeps connecting in the background)."""
    nowhere = f"127.0.0.1:{free_port()}"
    client = BatchProducer(producer_config({"bootstrap.servers": nowhere}, 1024), frozenset({"c"}))
    assert client.warm(["c", "outputs"], timeout=0.3) == ["c", "outputs"]
    assert len(client._clients()) == 2
    client.close(timeout=0.1)


def test_clients_made_from_two_threads_at_once_are_one_client_each() -> None:
    """The warm-up makes the clients in a thread while the first batch may
    send from the event loop: both must get the same client, or the
    delivery wait would not cover the other one's records."""
    nowhere = f"127.0.0.1:{free_port()}"
    client = BatchProducer(producer_config({"bootstrap.servers": nowhere}, 1024), frozenset({"c"}))
    seen: list[object] = []
    start = threading.Barrier(8)

    def take() -> None:
        start.wait()
        seen.append(client._producer)
        seen.append(client._quiet_producer)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(made) for made in seen}) == 2
    assert len(client._clients()) == 2
    client.close(timeout=0.1)
