"""A local multi-broker KRaft cluster from the same Maven jars as the single broker.

    taskstream kafka up --brokers 3      (make kafka-up BROKERS=3)

Node n (1..N) is a combined broker + controller on 127.0.0.1 with its broker
port at PORT + 2(n-1) and its controller port right after it, its own folder
`<home>/node-n` (data, metadata log, config, broker.log) and a small heap
(NODE_HEAP: three JVMs fit on 2 cores). Every node votes in the controller
quorum; the cluster's id is kept in `<home>/cluster.id` so a node whose data
folder was lost is formatted into the same cluster and re-replicates. The
brokers' defaults are a production cluster's: replication factor
min(3, N), `min.insync.replicas` one less (2 of 3), unclean leader election
off. `down` stops every node (and any stray java of one); reuse is the
single broker's rule: a node that answers is left as it is.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from taskstream import broker
from taskstream.broker import CACHE, BrokerError, BrokerSpec, Started

NODE_HEAP = "384m"


@dataclass(frozen=True)
class Cluster:
    home: Path
    nodes: tuple[BrokerSpec, ...]

    @classmethod
    def create(
        cls, port: int, brokers: int = 3, version: str | None = None, home: Path | None = None
    ) -> Cluster:
        if brokers < 1:
            raise ValueError("a cluster has at least one broker")
        home = home or CACHE / "kafka" / f"cluster-{port}"
        voters = ",".join(f"{n}@127.0.0.1:{port + 2 * (n - 1) + 1}" for n in range(1, brokers + 1))
        template = BrokerSpec.create(port=port, version=version, home=home)
        nodes = tuple(
            replace(
                template,
                port=port + 2 * (n - 1),
                controller_port=port + 2 * (n - 1) + 1,
                home=home / f"node-{n}",
                heap=NODE_HEAP,
                node_id=n,
                voters=voters,
                replication=min(3, brokers),
            )
            for n in range(1, brokers + 1)
        )
        return cls(home, nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> BrokerSpec:
        return self.with_id().nodes[node_id - 1]

    def with_id(self) -> Cluster:
        """The same cluster with its id (created once, kept in <home>/cluster.id)."""
        path = self.home / "cluster.id"
        if path.exists():
            cluster_id = path.read_text().strip()
        else:
            self.home.mkdir(parents=True, exist_ok=True)
            cluster_id = broker.kraft_cluster_id()
            path.write_text(cluster_id + "\n")
        return replace(self, nodes=tuple(replace(n, cluster_id=cluster_id) for n in self.nodes))


def brokers_seen(bootstrap: str, timeout: float = 2.0) -> int:
    """How many brokers the cluster's metadata lists (0: no answer)."""
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": broker._silent_logger()}
    admin = AdminClient(config)
    try:
        return len(admin.list_topics(timeout=timeout).brokers)
    except Exception:
        return 0


def up(cluster: Cluster, *, timeout: float = 120.0, die_with_parent: bool = False) -> Started:
    """Start every node that does not answer; wait until each answers and the
    metadata lists every broker."""
    began = time.monotonic()
    cluster = cluster.with_id()
    if all(broker.metadata_ok(n.bootstrap) for n in cluster.nodes) and brokers_seen(
        cluster.bootstrap
    ) == len(cluster.nodes):
        return Started(cluster.bootstrap, False, 0.0, None)
    java = broker.java_binary()
    broker.fetch_jars(cluster.nodes[0].version)
    pids = {}
    for node in cluster.nodes:
        pid = broker.read_pid(node)
        if pid is None:
            if broker.port_open(node.port) or broker.port_open(node.controller_port):
                raise BrokerError(
                    f"port {node.port} or {node.controller_port} (node {node.node_id}) is in use "
                    "by something that is not this cluster's node; choose another KAFKA_PORT"
                )
            broker.prepare(node, java)
            pid = broker._spawn(node, java, die_with_parent=die_with_parent)
        pids[node.node_id] = pid
    _wait_all(cluster, pids, began + timeout)
    return Started(cluster.bootstrap, True, time.monotonic() - began, None)


def start_node(cluster: Cluster, node_id: int, *, die_with_parent: bool = False) -> float:
    """Start one node again (on the data it has, or formatted afresh into the
    cluster if its data folder is gone); seconds until it answers.
    `die_with_parent` only from a thread that outlives the node: Linux sends
    that signal when the starting *thread* ends."""
    began = time.monotonic()
    node = cluster.node(node_id)
    java = broker.java_binary()
    broker.prepare(node, java)
    pid = broker._spawn(node, java, die_with_parent=die_with_parent)
    broker._wait_ready(node, pid, began + 120)
    return time.monotonic() - began


def stop_node(cluster: Cluster, node_id: int) -> list[int]:
    return broker.down(cluster.node(node_id))


def _wait_all(cluster: Cluster, pids: dict[int, int], deadline: float) -> None:
    while time.monotonic() < deadline:
        for node in cluster.nodes:
            if not broker._alive(pids[node.node_id]):
                raise BrokerError(
                    f"node {node.node_id} exited during start-up; last lines of "
                    f"{node.log_file}:\n{broker.tail(node.log_file)}"
                )
        answering = all(broker.metadata_ok(n.bootstrap, timeout=1.0) for n in cluster.nodes)
        if answering and brokers_seen(cluster.bootstrap) == len(cluster.nodes):
            return
        time.sleep(0.3)
    down(cluster)
    raise BrokerError(f"the cluster did not come up in time; see {cluster.home}/node-*/broker.log")


def down(cluster: Cluster, *, timeout: float = 30.0) -> list[int]:
    """Stop every node at once. One after the other, the last node lost its
    quorum and waited out the whole timeout (32 s for three nodes) for a
    controlled shutdown nobody could grant; stopped together, they go in
    seconds."""
    with ThreadPoolExecutor(max_workers=max(1, len(cluster.nodes))) as pool:
        stopped = pool.map(lambda node: broker.down(node, timeout=timeout), cluster.nodes)
    return [pid for pids in stopped for pid in pids]


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    bootstrap: str
    pid: int | None
    answers: bool


def status(cluster: Cluster) -> tuple[list[NodeStatus], str]:
    """Each node, and the controller quorum as MetadataQuorumCommand describes
    it (or why it could not)."""
    cluster = cluster.with_id()
    nodes = [
        NodeStatus(n.node_id, n.bootstrap, broker.read_pid(n), broker.metadata_ok(n.bootstrap))
        for n in cluster.nodes
    ]
    live = [n for n, s in zip(cluster.nodes, nodes, strict=True) if s.answers]
    if not live:
        return nodes, "no node answers: the quorum cannot be asked"
    return nodes, quorum(live[0], ",".join(n.bootstrap for n in live))


TOOLS_LOG4J2 = """\
status = error
appender.err.type = Console
appender.err.name = ERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m%n
rootLogger.level = ERROR
rootLogger.appenderRef.err.ref = ERR
"""


def quorum(node: BrokerSpec, bootstrap: str) -> str:
    # Not broker.java_command: that names the node's home on the command
    # line, and `down` would take this tool for one of the node's processes.
    log_config = node.home.parent / "tools-log4j2.properties"
    log_config.write_text(TOOLS_LOG4J2)
    command = [
        broker.java_binary(),
        "-Xmx128m",
        f"-Dlog4j2.configurationFile={log_config}",
        "-cp",
        f"{node.libs}/*",
        "org.apache.kafka.tools.MetadataQuorumCommand",
        "--bootstrap-server",
        bootstrap,
        "describe",
        "--status",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return "the quorum did not answer within 60 s"
    if done.returncode != 0:
        return "could not describe the quorum: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return done.stdout.strip()


def existing(port: int, version: str | None = None) -> Cluster | None:
    """The cluster `kafka up --brokers N` made for this port, if any."""
    home = CACHE / "kafka" / f"cluster-{port}"
    nodes = sorted(home.glob("node-*"))
    if not (home / "cluster.id").exists() or not nodes:
        return None
    return Cluster.create(port, len(nodes), version, home)


def busiest_leader(bootstrap: str, topics: set[str]) -> int:
    """The node leading the most partitions of `topics`."""
    from collections import Counter

    from confluent_kafka.admin import AdminClient

    found = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    leaders = Counter(
        p.leader for name in topics if name in found for p in found[name].partitions.values()
    )
    return int(leaders.most_common(1)[0][0])


def under_replicated(bootstrap: str) -> int:
    """Partitions of any topic with fewer in-sync replicas than replicas."""
    from confluent_kafka.admin import AdminClient

    found = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    return sum(
        1
        for topic in found.values()
        for p in topic.partitions.values()
        if len(p.isrs) < len(p.replicas)
    )
