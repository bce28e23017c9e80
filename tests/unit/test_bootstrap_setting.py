"""Where every command looks for the brokers, and what `token` says without a
secret (issue 16, problems 1 and 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.config import Settings
from taskstream.cli import main


def test_kafka_port_alone_points_every_command_at_the_local_broker_on_it() -> None:
    assert Settings.from_env({"KAFKA_PORT": "19492"}).bootstrap == "127.0.0.1:19492"


def test_kafka_bootstrap_wins_over_kafka_port_and_the_default_stays() -> None:
    env = {"KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092", "KAFKA_PORT": "19492"}
    assert Settings.from_env(env).bootstrap == "kafka-1:9092,kafka-2:9092"
    assert Settings.from_env({}).bootstrap == "127.0.0.1:19092"
    assert Settings.from_env({"KAFKA_BOOTSTRAP": " ", "KAFKA_PORT": ""}).bootstrap == (
        "127.0.0.1:19092"
    )


@pytest.mark.parametrize("port", ["x", "0", "70000", "-1"])
def test_a_kafka_port_that_is_no_port_is_refused(port: str) -> None:
    with pytest.raises(ValueError, match="KAFKA_PORT must be a port number"):
        Settings.from_env({"KAFKA_PORT": port})


def test_token_without_a_secret_points_at_make_runs_dev_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TASKSTREAM_API_SECRET", raising=False)
    monkeypatch.delenv("TASKSTREAM_API_SECRET_FILE", raising=False)
    runner = CliRunner()
    bare = runner.invoke(main, ["token", "u_alice"])
    assert bare.exit_code == 2
    assert "set TASKSTREAM_API_SECRET" in bare.output
    assert "make run" not in bare.output
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "dev-api-secret").write_text("s" * 64)
    hinted = runner.invoke(main, ["token", "u_alice"])
    assert hinted.exit_code == 2
    assert "export TASKSTREAM_API_SECRET_FILE=.data/dev-api-secret" in hinted.output
    monkeypatch.setenv("TASKSTREAM_API_SECRET_FILE", ".data/dev-api-secret")
    signed = runner.invoke(main, ["token", "u_alice"])
    assert signed.exit_code == 0, signed.output
    assert signed.output.strip()


def test_librdkafkas_self_retried_coordinator_notices_are_not_shown() -> None:
    import logging

    from taskstream.kafka_io import RDKAFKA_LOGGER

    def shown(level: int, text: str) -> bool:
        record = logging.LogRecord("rdkafka", level, __file__, 1, text, None, None)
        return RDKAFKA_LOGGER.filter(record)

    notice = (
        "GETPID [rdkafka#producer-30] [thrd:main]: Failed to acquire idempotence PID from "
        "broker 127.0.0.1:11434/1: Broker: Coordinator load in progress: retrying"
    )
    assert not shown(logging.WARNING, notice)
    assert shown(logging.ERROR, notice)  # an error is always shown
    assert shown(logging.WARNING, "FAIL [rdkafka#producer-1]: Connect to 127.0.0.1:1 failed")


def test_the_workers_info_log_drops_faust_chatter_and_keeps_ours() -> None:
    import logging

    from taskstream.worker_logs import FaustChatter

    def kept(level: int, text: str) -> bool:
        record = logging.LogRecord("streams.kafka.transport", level, __file__, 1, text, None, None)
        return FaustChatter().filter(record)

    assert not kept(logging.INFO, "[^--Consumer]: Starting... ")
    assert not kept(logging.INFO, "Updating subscribed topics to: \n+Requested---+\n| t |\n+---+")
    assert kept(logging.INFO, "rewinding 8 input partition(s) without a committed offset")
    assert kept(logging.WARNING, "[^--Consumer]: Stopping... ")  # warnings always


def test_aiokafkas_sets_of_topics_are_logged_as_their_size() -> None:
    import logging

    from taskstream.worker_logs import FaustChatter

    record = logging.LogRecord(
        "aiokafka.consumer.group_coordinator", logging.INFO, __file__, 1,
        "Setting newly assigned partitions %s for group %s", ({("a", 0), ("a", 1)}, "g"), None,
    )  # fmt: skip
    assert FaustChatter().filter(record)
    assert record.getMessage() == "Setting newly assigned partitions (2 in all) for group g"
