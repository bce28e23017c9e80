"""The local broker's configuration and its refusals, without starting Java."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from streams.config import Settings
from taskstream import broker


def test_server_properties_describe_a_single_node_kraft_broker_on_loopback(
    tmp_path: Path,
) -> None:
    spec = broker.BrokerSpec.create(port=30000, home=tmp_path)
    props = dict(line.split("=", 1) for line in broker.server_properties(spec).splitlines() if line)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:30000,CONTROLLER://127.0.0.1:30001"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:30001"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["log.dirs"] == str(tmp_path / "data")


def test_cluster_id_has_kafkas_format() -> None:
    cluster_id = broker.kraft_cluster_id()
    assert len(cluster_id) == 22
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_kafka_version_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_VERSION", "3.9.1")
    assert broker.BrokerSpec.create().version == "3.9.1"
    monkeypatch.delenv("KAFKA_VERSION")
    assert broker.BrokerSpec.create().version == broker.DEFAULT_KAFKA_VERSION


def test_missing_java_names_what_to_install_and_the_kafka_bootstrap_escape(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))
    with pytest.raises(broker.BrokerError) as error:
        broker.java_binary()
    assert "Java 17" in str(error.value)
    assert "KAFKA_BOOTSTRAP" in str(error.value)


def test_old_java_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_java = tmp_path / "jdk" / "bin" / "java"
    fake_java.parent.mkdir(parents=True)
    fake_java.write_text("#!/bin/sh\necho 'openjdk version \"1.8.0_392\"' >&2\n")
    fake_java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(broker.BrokerError, match="is Java 8"):
        broker.java_binary()


def test_missing_maven_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(broker, "CACHE", tmp_path)
    monkeypatch.setattr(broker, "java_binary", lambda: "/usr/bin/java")
    monkeypatch.setattr(broker.shutil, "which", lambda name: None)
    with pytest.raises(broker.BrokerError, match="Maven is needed") as error:
        broker.fetch_jars("4.3.1")
    assert "KAFKA_BOOTSTRAP" in str(error.value)


def test_settings_read_the_environment_and_refuse_nonsense() -> None:
    settings = Settings.from_env(
        {"KAFKA_BOOTSTRAP": "k:1", "TASKSTREAM_PARTITIONS": "3", "TASKSTREAM_APP_ID": "x"}
    )
    assert (settings.bootstrap, settings.partitions, settings.app_id) == ("k:1", 3, "x")
    assert settings.topic("orders") == "taskstream.orders"
    assert settings.data_dir == Path(".data/x")
    with pytest.raises(ValueError, match="TASKSTREAM_PARTITIONS"):
        Settings.from_env({"TASKSTREAM_PARTITIONS": "0"})
    with pytest.raises(ValueError, match="TASKSTREAM_WEB_PORT"):
        Settings.from_env({"TASKSTREAM_WEB_PORT": "http"})


def test_cluster_id_never_looks_like_an_option() -> None:
    # One base64url id in 64 starts with "-", which kafka-storage's argument
    # parser takes for an option: the broker then fails to format.
    assert not any(broker.kraft_cluster_id().startswith("-") for _ in range(2000))


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    low, _ = broker._ephemeral_range()
    ports = broker.free_ports(5, consecutive=2)
    blocks = {p for port in ports for p in (port, port + 1)}
    assert len(blocks) == 10, ports  # no two blocks overlap
    assert all(port + 1 < max(low, 12000) for port in ports), ports
    assert all(broker._bindable(p) for p in blocks)


def test_free_ports_never_hands_out_a_port_twice() -> None:
    seen = [port for _ in range(50) for port in broker.free_ports(2)]
    assert len(seen) == len(set(seen))


def test_free_ports_skips_a_port_someone_listens_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = int(listener.getsockname()[1])
        proposals = iter([taken, taken, 11000 + taken % 1000])

        class Scripted:
            def randrange(self, start: int, stop: int) -> int:
                return next(proposals)

        monkeypatch.setattr(broker.random, "SystemRandom", Scripted)
        monkeypatch.setattr(broker, "_ephemeral_range", lambda: (65000, 65535))
        # Ports this test process handed out before (the integration tests
        # run in it too) are skipped without asking for another proposal's
        # bind: start from none, or the scripted proposals run out.
        monkeypatch.setattr(broker, "_handed_out", set())
        assert broker.free_ports(1) == [11000 + taken % 1000]


def test_the_idle_wait_setting_defaults_to_500_ms_takes_0_and_refuses_negatives() -> None:
    import pytest

    from streams.config import Settings

    assert Settings.from_env({}).max_idle_ms == 0
    assert Settings.from_env({"TASKSTREAM_MAX_IDLE_MS": "500"}).max_idle_ms == 500
    assert Settings.from_env({"TASKSTREAM_MAX_IDLE_MS": "0"}).max_idle_ms == 0
    with pytest.raises(ValueError, match="TASKSTREAM_MAX_IDLE_MS must be an integer >= 0"):
        Settings.from_env({"TASKSTREAM_MAX_IDLE_MS": "-1"})
    with pytest.raises(ValueError, match="TASKSTREAM_MAX_PENDING must be a positive integer"):
        Settings.from_env({"TASKSTREAM_MAX_PENDING": "0"})


def test_a_three_node_cluster_votes_together_and_replicates_like_production(
    tmp_path: Path,
) -> None:
    from taskstream.cluster import Cluster

    nodes = Cluster.create(port=31000, brokers=3, home=tmp_path).with_id().nodes
    props = [
        dict(line.split("=", 1) for line in broker.server_properties(n).splitlines() if line)
        for n in nodes
    ]
    voters = "1@127.0.0.1:31001,2@127.0.0.1:31003,3@127.0.0.1:31005"
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert {p["controller.quorum.voters"] for p in props} == {voters}
    assert [p["advertised.listeners"] for p in props] == [
        f"PLAINTEXT://127.0.0.1:{port}" for port in (31000, 31002, 31004)
    ]
    for p in props:
        assert p["default.replication.factor"] == "3"
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["min.insync.replicas"] == "2"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["unclean.leader.election.enable"] == "false"
        # The metadata log apart from the data: a lost data folder keeps the vote.
        assert p["metadata.log.dir"] != p["log.dirs"]
    # One cluster id for every node, kept across calls (a wiped node rejoins it).
    assert len({n.cluster_id for n in nodes}) == 1
    assert Cluster.create(port=31000, brokers=3, home=tmp_path).with_id().nodes == nodes


def test_replication_is_min_3_of_the_brokers_with_one_fewer_in_sync() -> None:
    from streams.config import replication_for

    auto = Settings.from_env({})
    assert (auto.replication, auto.min_insync) == (0, 0)
    assert (replication_for(auto, 1).factor, replication_for(auto, 1).min_insync) == (1, 1)
    assert (replication_for(auto, 3).factor, replication_for(auto, 3).min_insync) == (3, 2)
    assert (replication_for(auto, 5).factor, replication_for(auto, 5).min_insync) == (3, 2)
    two = Settings.from_env({"TASKSTREAM_REPLICATION": "2"})
    assert (replication_for(two, 3).factor, replication_for(two, 3).min_insync) == (2, 1)
    strict = Settings.from_env(
        {"TASKSTREAM_REPLICATION": "3", "TASKSTREAM_MIN_INSYNC_REPLICAS": "3"}
    )
    assert replication_for(strict, 3).min_insync == 3
    with pytest.raises(ValueError, match="the cluster has 1 broker"):
        replication_for(strict, 1)
    too_many = Settings.from_env(
        {"TASKSTREAM_REPLICATION": "2", "TASKSTREAM_MIN_INSYNC_REPLICAS": "3"}
    )
    with pytest.raises(ValueError, match="more than the 2 replica"):
        replication_for(too_many, 3)
    assert replication_for(auto, 3).topic_config() == {
        "min.insync.replicas": "2",
        "unclean.leader.election.enable": "false",
    }
    with pytest.raises(ValueError, match="TASKSTREAM_REPLICATION"):
        Settings.from_env({"TASKSTREAM_REPLICATION": "three"})


def test_auto_replication_keeps_what_the_topics_have_while_a_broker_is_away() -> None:
    from streams.config import replication_for

    auto = Settings.from_env({})
    # Two of three brokers answer; the topics were made with 3 replicas.
    kept = replication_for(auto, 2, existing=3)
    assert (kept.factor, kept.min_insync) == (3, 2)
    # Set explicitly, it is what it says, and the checks compare against it.
    one = Settings.from_env({"TASKSTREAM_REPLICATION": "1"})
    assert replication_for(one, 3, existing=3).factor == 1
