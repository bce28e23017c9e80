"""A worker started while its cluster does not answer (a broker away, a
leader election) asks again instead of dying with a traceback
(taskstream.cli._ensure_topics; found by `python -m chaos --brokers 3`)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.config import Settings
from taskstream import cli, kafka_io


def test_a_cluster_that_does_not_answer_is_asked_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers: list[object] = [
        TimeoutError(),
        KafkaException(KafkaError(KafkaError._TIMED_OUT, "describe_configs timed out")),
        ["t.claims"],
    ]

    def ensure(_settings: Settings) -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[return-value]

    monkeypatch.setattr(kafka_io, "ensure_topics", ensure)
    monkeypatch.setattr(cli.time, "sleep", lambda _s: None)
    assert cli._ensure_topics(Settings()) == ["t.claims"]
    said = capsys.readouterr().err
    assert said.count("the topic check did not get an answer") == 2
    assert "describe_configs timed out" in said


def test_past_its_patience_it_exits_1_saying_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def never(_settings: Settings) -> list[str]:
        raise TimeoutError()

    monkeypatch.setattr(kafka_io, "ensure_topics", never)
    monkeypatch.setattr(cli.time, "sleep", lambda _s: None)
    monkeypatch.setattr(cli, "TOPIC_CHECK_PATIENCE_SECONDS", 0.0)
    with pytest.raises(SystemExit) as exited:
        cli._ensure_topics(Settings())
    assert exited.value.code == 1
    assert "did not answer the topic check: TimeoutError" in capsys.readouterr().err


def test_topics_that_disagree_are_not_asked_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def mismatch(_settings: Settings) -> list[str]:
        calls.append(1)
        raise kafka_io.TopicMismatch(["t.claims has 1 partition(s), not 8"])

    monkeypatch.setattr(kafka_io, "ensure_topics", mismatch)
    with pytest.raises(SystemExit):
        cli._ensure_topics(Settings())
    assert calls == [1]
    assert "t.claims has 1 partition(s), not 8" in capsys.readouterr().err


def test_a_topic_a_broker_does_not_know_yet_is_described_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Right after `create_topics` on a cluster, the broker asked for a
    topic's configuration may not know it yet."""
    from concurrent.futures import Future

    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, "t.claims")
    answers: list[object] = [
        KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "unknown topic")),
        {"cleanup.policy": "compact"},
    ]

    class _Client:
        def describe_configs(self, resources: list[object]) -> dict[object, Future[object]]:
            future: Future[object] = Future()
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
            return {resources[0]: future}

    monkeypatch.setattr(kafka_io.time, "sleep", lambda _s: None)
    far = kafka_io.time.monotonic() + 60
    got = kafka_io._described(_Client(), resource, 1.0, far)  # type: ignore[arg-type]
    assert got == {"cleanup.policy": "compact"}
    # Any other error, or past the deadline: raised.
    answers.append(KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "still")))
    with pytest.raises(KafkaException):
        kafka_io._described(_Client(), resource, 1.0, 0.0)  # type: ignore[arg-type]
