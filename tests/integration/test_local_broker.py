"""`make kafka-up` / `make kafka-down` as a user runs them: the second `up`
reuses the running broker, and `down` leaves no java process of ours behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from taskstream import broker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def make(target: str, port: int, cache: Path) -> str:
    env = {**os.environ, "KAFKA_PORT": str(port), "TASKSTREAM_CACHE": str(cache)}
    env.pop("KAFKA_BOOTSTRAP", None)
    result = subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"make {target} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache folder of its own for broker homes, sharing the fetched jars."""
    jars = broker.CACHE / "kafka" / broker.DEFAULT_KAFKA_VERSION
    own = tmp_path / "cache"
    (own / "kafka").mkdir(parents=True)
    if jars.exists():
        (own / "kafka" / broker.DEFAULT_KAFKA_VERSION).symlink_to(jars)
    return own


def test_second_kafka_up_reuses_the_broker_and_kafka_down_leaves_nothing(cache: Path) -> None:
    port = broker.free_port()
    spec = broker.BrokerSpec.create(port=port, home=cache / "kafka" / f"broker-{port}")
    try:
        first = make("kafka-up", port, cache)
        assert "started on" in first, first
        pids = broker.our_broker_pids(spec)
        assert len(pids) == 1, pids

        second = make("kafka-up", port, cache)
        assert "reusing" in second, second
        assert broker.our_broker_pids(spec) == pids, "a second broker was started"

        down = make("kafka-down", port, cache)
        assert str(pids[0]) in down, down
        assert broker.our_broker_pids(spec) == []
        assert not broker.port_open(port)
        assert not broker.metadata_ok(spec.bootstrap, timeout=1)

        again = make("kafka-down", port, cache)
        assert "no broker of ours" in again, again
    finally:
        broker.down(spec)
