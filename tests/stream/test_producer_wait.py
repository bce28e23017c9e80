"""The worker's producer when the brokers do not take its records
(streams.kafka.producer): it keeps them and waits, without a time limit,
and says every WAIT_WARNING_SECONDS why the batch's inputs stay
uncommitted. A real librdkafka client aimed at a port nobody listens on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streams.kafka import producer as producer_module
from streams.kafka.producer import BatchProducer, producer_config
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
    assert len(client._producer) == 1  # the record is still queued: nothing was dropped
    # Drop it and the client, or librdkafka goes on reconnecting (and
    # logging to stderr) for the rest of the session.
    client._producer.purge()
    client.close(timeout=0.1)
    client._client = None
