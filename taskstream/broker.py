"""A real single-node Kafka broker (KRaft, broker+controller) for development and tests.

The jars are Apache Kafka's own, copied from Maven Central by `kafka/pom.xml`
into `.cache/kafka/<version>/libs`. Each broker has a home folder holding its
`server.properties`, logging config, data, log file and pid file, so several
brokers (the one `make run` uses, the one the test suite owns) live side by side.

Rules this module keeps:
- `up` reuses a broker that already answers a metadata request on the port.
- `down` stops our broker (pid file first, then any java process whose command
  line names this home folder), SIGTERM then SIGKILL, and never touches
  another process.
- Readiness means a metadata request succeeds, not that a port is open.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_KAFKA_VERSION = "4.3.1"
DEFAULT_PORT = 19092
PROJECT_ROOT = Path(__file__).resolve().parent.parent
POM = PROJECT_ROOT / "kafka" / "pom.xml"
# Bumped when kafka/pom.xml fetches more: a folder fetched before is topped up.
# 2: kafka-tools (MetadataQuorumCommand, for a cluster's `kafka status`).
FETCH_REVISION = 2
CACHE = Path(os.environ.get("TASKSTREAM_CACHE", PROJECT_ROOT / ".cache"))

JAVA_MISSING = """\
Java 17 or newer is needed to run the local Kafka broker ({found}).
Install it (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`; macOS:
`brew install openjdk@17`) or set JAVA_HOME, or skip the local broker and point
taskstream at an existing cluster: `export KAFKA_BOOTSTRAP=host:9092`."""

MAVEN_MISSING = """\
Maven is needed once, to fetch Kafka's jars from Maven Central ({found}).
Install it (Debian/Ubuntu: `apt-get install maven`; macOS: `brew install maven`),
or point taskstream at an existing cluster: `export KAFKA_BOOTSTRAP=host:9092`."""


class BrokerError(RuntimeError):
    """The local broker could not be provisioned, started or stopped."""


@dataclass(frozen=True)
class BrokerSpec:
    """Where a local broker lives and how it listens."""

    port: int = DEFAULT_PORT
    version: str = DEFAULT_KAFKA_VERSION
    home: Path = field(default=Path())
    controller_port: int = 0
    heap: str = "512m"
    # Opt-in security listeners beside PLAINTEXT (0: none), for testing TLS and
    # SASL clients (docs/security.md). Inter-broker and controller traffic
    # stays on the PLAINTEXT listeners, on 127.0.0.1.
    sasl_port: int = 0  # SASL_PLAINTEXT
    ssl_port: int = 0  # SSL
    sasl_ssl_port: int = 0  # SASL_SSL
    # (user, password): accepted by PLAIN and, created at format time, by
    # SCRAM-SHA-256 and SCRAM-SHA-512.
    sasl_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # PKCS12 keystore with the broker's key and certificate chain (SSL listeners).
    ssl_keystore: Path | None = None
    ssl_keystore_password: str = field(default="", repr=False)
    # One node of a local cluster (taskstream.cluster): its id, every
    # controller voter ("1@127.0.0.1:9093,2@..."), the cluster's id, and the
    # replication of the broker's internal topics. Alone: node 1, voting alone.
    node_id: int = 1
    voters: str = ""
    cluster_id: str = ""
    replication: int = 1

    @classmethod
    def create(
        cls,
        port: int = DEFAULT_PORT,
        version: str | None = None,
        home: Path | None = None,
        controller_port: int | None = None,
    ) -> BrokerSpec:
        version = version or os.environ.get("KAFKA_VERSION") or DEFAULT_KAFKA_VERSION
        return cls(
            port=port,
            version=version,
            home=home or CACHE / "kafka" / f"broker-{port}",
            controller_port=controller_port or port + 1,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def libs(self) -> Path:
        return CACHE / "kafka" / self.version / "libs"

    @property
    def config(self) -> Path:
        return self.home / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def metadata_dir(self) -> Path:
        """Where the KRaft metadata log lives: beside the partitions' data for a
        single broker; a folder of its own on a cluster's node, so losing a
        node's data folder (a fault the suite injects) leaves its vote intact."""
        return self.data_dir if self.replication == 1 else self.home / "metadata"


# --------------------------------------------------------------------- tools


def java_binary() -> str:
    """The java to use, checked to be version 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError(JAVA_MISSING.format(found="no `java` on PATH"))
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise BrokerError(JAVA_MISSING.format(found=f"cannot read the version of {java}"))
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < 17:
        raise BrokerError(JAVA_MISSING.format(found=f"{java} is Java {major}"))
    return java


def fetch_jars(version: str, *, quiet: bool = True) -> Path:
    """Copy Kafka's runtime jars for `version` from Maven Central (once)."""
    libs = CACHE / "kafka" / version / "libs"
    marker = libs.parent / ".complete"
    done = f"{version} {FETCH_REVISION}\n"
    if marker.exists() and marker.read_text() == done:
        return libs
    java_binary()
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(MAVEN_MISSING.format(found="no `mvn` on PATH"))
    major = version.split(".", 1)[0]
    cmd = [
        mvn,
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        f"-Dkafka.major={major}",
        f"-Dkafka.libs={libs}",
        "dependency:copy-dependencies",
    ]
    if quiet:
        cmd.insert(1, "-q")
    print(f"fetching Apache Kafka {version} jars from Maven Central into {libs}", file=sys.stderr)
    result = subprocess.run(cmd, capture_output=quiet, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stdout or "") + (result.stderr or "") if quiet else ""
        raise BrokerError(f"Maven could not fetch Kafka {version}:\n{detail.strip()}")
    marker.write_text(done)
    return libs


# ------------------------------------------------------------------- config


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def security_listeners(spec: BrokerSpec) -> list[tuple[str, int]]:
    """(listener name, port) of the opt-in security listeners; the name is the protocol."""
    wanted = (("SASL_PLAINTEXT", spec.sasl_port), ("SSL", spec.ssl_port))
    return [(name, port) for name, port in (*wanted, ("SASL_SSL", spec.sasl_ssl_port)) if port]


def security_properties(spec: BrokerSpec) -> str:
    """server.properties lines of the security listeners: SASL logins, TLS keystore."""
    names = [name for name, _ in security_listeners(spec)]
    lines = []
    if any(name.startswith("SASL_") for name in names):
        if not spec.sasl_users:
            raise BrokerError("a SASL listener needs at least one user (sasl_users)")
        lines.append(f"sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}")
        plain_users = " ".join(f'user_{user}="{password}"' for user, password in spec.sasl_users)
        for name in (n for n in names if n.startswith("SASL_")):
            prefix = f"listener.name.{name.lower()}"
            lines.append(
                f"{prefix}.plain.sasl.jaas.config="
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            )
            for mechanism in SASL_MECHANISMS[1:]:
                lines.append(
                    f"{prefix}.{mechanism.lower()}.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
    if any(name.endswith("SSL") for name in names):
        if spec.ssl_keystore is None:
            raise BrokerError("an SSL listener needs a keystore (ssl_keystore)")
        lines += [
            "ssl.keystore.type=PKCS12",
            f"ssl.keystore.location={spec.ssl_keystore}",
            f"ssl.keystore.password={spec.ssl_keystore_password}",
            f"ssl.key.password={spec.ssl_keystore_password}",
            "ssl.client.auth=none",
        ]
    return "".join(line + "\n" for line in lines)


def server_properties(spec: BrokerSpec) -> str:
    """A single-node KRaft broker+controller on 127.0.0.1, tuned for fast tests."""
    extra = security_listeners(spec)
    listeners = ",".join(f"{name}://127.0.0.1:{port}" for name, port in extra)
    advertised = f"PLAINTEXT://127.0.0.1:{spec.port}" + "".join(
        f",{name}://127.0.0.1:{port}" for name, port in extra
    )
    protocol_map = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT" + "".join(
        f",{name}:{name}" for name, _ in extra
    )
    voters = spec.voters or f"{spec.node_id}@127.0.0.1:{spec.controller_port}"
    replicas, min_isr = spec.replication, max(1, spec.replication - 1)
    return f"""\
process.roles=broker,controller
node.id={spec.node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{spec.port},CONTROLLER://127.0.0.1:{spec.controller_port}\
{"," + listeners if listeners else ""}
advertised.listeners={advertised}
listener.security.protocol.map={protocol_map}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={spec.data_dir}
metadata.log.dir={spec.metadata_dir}
num.partitions=1
default.replication.factor={replicas}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
{security_properties(spec)}"""


LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""

LOG4J1 = """\
log4j.rootLogger=INFO, out
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.state.change.logger=WARN
"""


def kraft_cluster_id() -> str:
    """A cluster id in Kafka's own format (base64url of 16 bytes, no padding).

    Never one starting with "-": `kafka-storage format -t -x...` takes it for
    an option and fails ("expected one argument"), one start in 64.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def java_command(spec: BrokerSpec, java: str, main: str, *args: str) -> list[str]:
    return [
        java,
        f"-Xmx{spec.heap}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={spec.home / 'log4j2.properties'}",
        f"-Dlog4j.configuration=file:{spec.home / 'log4j.properties'}",
        f"-Dkafka.logs.dir={spec.home / 'logs'}",
        # Names the home folder on the command line so `down` can find strays.
        f"-Dtaskstream.broker.home={spec.home}",
        "-cp",
        f"{spec.libs}/*",
        main,
        *args,
    ]


def prepare(spec: BrokerSpec, java: str) -> None:
    """Write the config and format KRaft storage (once per home folder)."""
    spec.home.mkdir(parents=True, exist_ok=True)
    (spec.home / "logs").mkdir(exist_ok=True)
    spec.config.write_text(server_properties(spec))
    (spec.home / "log4j2.properties").write_text(LOG4J2)
    (spec.home / "log4j.properties").write_text(LOG4J1)
    if all((d / "meta.properties").exists() for d in (spec.data_dir, spec.metadata_dir)):
        return
    # A cluster's node formats with the cluster's id, also a lost data folder
    # (--ignore-formatted leaves the metadata folder as it is).
    cmd = java_command(
        spec,
        java,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        spec.cluster_id or kraft_cluster_id(),
        "-c",
        str(spec.config),
        "--ignore-formatted",
        *scram_format_args(spec),
    )
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")


def scram_format_args(spec: BrokerSpec) -> list[str]:
    """`kafka-storage format` arguments creating the SCRAM users (KRaft keeps
    SCRAM credentials in its metadata log, so they exist from the first start)."""
    if not any(name.startswith("SASL_") for name, _ in security_listeners(spec)):
        return []
    return [
        arg
        for user, password in spec.sasl_users
        for mechanism in SASL_MECHANISMS[1:]
        for arg in ("--add-scram", f"{mechanism}=[name={user},password={password}]")
    ]


# ------------------------------------------------------------------ probing


def metadata_ok(
    bootstrap: str, timeout: float = 2.0, *, config: Mapping[str, Any] | None = None
) -> bool:
    """True when a broker at `bootstrap` answers a metadata request.

    `config`: more client properties, e.g. TLS/SASL (KafkaSecurity.confluent_config).
    """
    from confluent_kafka.admin import AdminClient

    probe: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "socket.connection.setup.timeout.ms": int(timeout * 1000),
        # A probe of a broker that is not up yet is expected to fail: quietly.
        "log_level": 0,
        "logger": _silent_logger(),
        **(config or {}),
    }
    admin = AdminClient(probe)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(metadata.brokers)


def _silent_logger() -> logging.Logger:
    logger = logging.getLogger("taskstream.broker.probe")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# Ports handed out by this process, so two calls never return the same one
# before the first is bound by the broker or worker it was meant for.
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for clients' source ports (Linux; IANA's elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, consecutive: int = 1) -> list[int]:
    """``count`` distinct ports free now, each starting ``consecutive`` free ports.

    Chosen below the kernel's ephemeral range: a port the OS hands out to bind
    port 0 is also where it picks source ports for outgoing connections, so a
    Kafka client connecting meanwhile could take it (or the controller port
    next to it) before the broker binds it. That made a CI run fail with
    "Address already in use" on the controller port.
    """
    low, _ = _ephemeral_range()
    ceiling = max(low, 12000)
    rng = random.SystemRandom()
    chosen: list[int] = []
    for _ in range(2000):
        start = rng.randrange(10000, ceiling - consecutive)
        block = range(start, start + consecutive)
        if any(port in _handed_out for port in block):
            continue
        if all(_bindable(port) and not port_open(port) for port in block):
            _handed_out.update(block)
            chosen.append(start)
            if len(chosen) == count:
                return chosen
    raise BrokerError(f"no {count} free port(s) found below {ceiling}")


def free_port() -> int:
    """A TCP port that is free now, with the next one free too (for the controller)."""
    return free_ports(1, consecutive=2)[0]


def read_pid(spec: BrokerSpec) -> int | None:
    try:
        pid = int(spec.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_our_broker(pid, spec) else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _is_our_broker(pid: int, spec: BrokerSpec) -> bool:
    return f"-Dtaskstream.broker.home={spec.home} " in _cmdline(pid) + " "


def our_broker_pids(spec: BrokerSpec) -> list[int]:
    """Every live java process started for this broker home, pid file or not."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_our_broker(int(entry.name), spec):
            pids.append(int(entry.name))
    return sorted(pids)


# -------------------------------------------------------------- lifecycle


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the process that started us dies (Linux)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass(frozen=True)
class Started:
    """The outcome of `up`: who answers, and whether this call started it."""

    bootstrap: str
    started: bool
    seconds: float
    pid: int | None


def up(spec: BrokerSpec, *, timeout: float = 90.0, die_with_parent: bool = False) -> Started:
    """Start the broker unless one already answers on the port; wait until ready."""
    began = time.monotonic()
    if metadata_ok(spec.bootstrap):
        return Started(spec.bootstrap, False, 0.0, read_pid(spec))
    pid = read_pid(spec)
    if pid is None:
        if port_open(spec.port) or port_open(spec.controller_port):
            raise BrokerError(
                f"port {spec.port} or {spec.controller_port} is in use by something that is "
                "not a Kafka broker answering metadata requests; choose another with "
                "KAFKA_PORT=..."
            )
        java = java_binary()
        fetch_jars(spec.version)
        prepare(spec, java)
        pid = _spawn(spec, java, die_with_parent=die_with_parent)
    _wait_ready(spec, pid, began + timeout)
    return Started(spec.bootstrap, True, time.monotonic() - began, pid)


def _spawn(spec: BrokerSpec, java: str, *, die_with_parent: bool) -> int:
    cmd = java_command(spec, java, "kafka.Kafka", str(spec.config))
    with open(spec.log_file, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=spec.home,
            # Its own session: Ctrl-C in a terminal does not hit the broker
            # half-way through a test; `down` stops it.
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    spec.pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def _wait_ready(spec: BrokerSpec, pid: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise BrokerError(
                f"the broker exited during start-up; last lines of {spec.log_file}:\n"
                + tail(spec.log_file)
            )
        if metadata_ok(spec.bootstrap, timeout=1.0):
            return
        time.sleep(0.2)
    down(spec)
    raise BrokerError(f"the broker did not answer within the timeout; see {spec.log_file}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child (not yet reaped) is not alive.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def down(spec: BrokerSpec, *, timeout: float = 30.0) -> list[int]:
    """Stop every process of this broker home; return the pids that were stopped."""
    pids = our_broker_pids(spec)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        _reap(pids)
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    _reap(pids)
    spec.pid_file.unlink(missing_ok=True)
    return pids


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pids: list[int]) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
