"""TLS and SASL (PLAIN, SCRAM) against a real broker with security listeners.

A broker of its own (this module's fixture): PLAINTEXT for readiness and
inter-broker traffic, plus SASL_PLAINTEXT, SSL and SASL_SSL listeners, with
a CA and a broker certificate for 127.0.0.1 made here with `openssl`, and one
user known to PLAIN and (created at format time) to SCRAM-SHA-256/512.

- End to end over SASL_SSL with SCRAM-SHA-256, SASL_PLAINTEXT with PLAIN
  and SSL: the CLI creates topics, publishes templates and produces the
  sample log, a real worker (faust/aiokafka) processes it, its render API
  process takes a claim (produced with its own aiokafka producer) and
  answers its rejection (read with its own aiokafka consumer), `taskstream
  audit` agrees (exit 0); the worker's log has no password.
- The CLI (confluent-kafka) over SASL_PLAINTEXT with PLAIN and with
  SCRAM-SHA-256, and over SSL: topics, templates, events are written and
  read back with the same settings.
- A wrong password and an unknown CA fail with a clear message, exit 1, no
  traceback, no password.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from support.workers import TASKSTREAM, Deployment, WorkerProcess

from streams.config import CLAIMS, INPUT_TOPICS, TASK_EVENTS, TEMPLATES, Settings
from taskstream import broker
from taskstream.kafka_io import client_config, group_offsets

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
USER = "alice"
PASSWORD = "s3cret-Pw-7f41c9"  # must never show in output or logs
WRONG_PASSWORD = "not-the-Pw-0b2e"
KEYSTORE_PASSWORD = "keystore-Pw-55d1"
API_SECRET = "secured-api-secret"
SERVICE_KEY = "secured-service-key"


@dataclasses.dataclass(frozen=True)
class SecuredBroker:
    spec: broker.BrokerSpec
    ca_file: Path
    password_file: Path

    def env(self, protocol: str, mechanism: str = "", password: str = PASSWORD) -> dict[str, str]:
        """Client settings for one listener; the right password comes from a file."""
        port = {
            "SASL_PLAINTEXT": self.spec.sasl_port,
            "SSL": self.spec.ssl_port,
            "SASL_SSL": self.spec.sasl_ssl_port,
        }[protocol]
        env = {"KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "KAFKA_SECURITY_PROTOCOL": protocol}
        if mechanism:
            env |= {"KAFKA_SASL_MECHANISM": mechanism, "KAFKA_SASL_USERNAME": USER}
            if password == PASSWORD:
                env["KAFKA_SASL_PASSWORD_FILE"] = str(self.password_file)
            else:
                env["KAFKA_SASL_PASSWORD"] = password
        if protocol.endswith("SSL"):
            env["KAFKA_SSL_CA_FILE"] = str(self.ca_file)
        return env


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path, name: str = "ca") -> tuple[Path, Path]:
    """A CA and a broker certificate for 127.0.0.1/localhost signed by it:
    (the CA's PEM, the broker's PKCS12 keystore)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE")
    key_usage = ("-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=taskstream {name}",
             *ca_ext, *key_usage, cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key",
             "-out", "broker.csr", "-subj", "/CN=localhost", cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", f"{name}.pem", "-CAkey", f"{name}.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "broker.pem",
             cwd=folder)  # fmt: skip
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key",
             "-certfile", f"{name}.pem", "-name", "broker", "-out", "broker.p12",
             "-passout", f"pass:{KEYSTORE_PASSWORD}", cwd=folder)  # fmt: skip
    return folder / f"{name}.pem", folder / "broker.p12"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    root = tmp_path_factory.mktemp("secured")
    ca_file, keystore = make_certificates(root / "tls")
    password_file = root / "sasl-password"
    password_file.write_text(PASSWORD + "\n")
    sasl_port, ssl_port, sasl_ssl_port = broker.free_ports(3)
    spec = dataclasses.replace(
        broker.BrokerSpec.create(port=broker.free_port(), home=root / "broker"),
        sasl_port=sasl_port,
        ssl_port=ssl_port,
        sasl_ssl_port=sasl_ssl_port,
        sasl_users=((USER, PASSWORD),),
        ssl_keystore=keystore,
        ssl_keystore_password=KEYSTORE_PASSWORD,
    )
    try:
        broker.up(spec, die_with_parent=True)
        yield SecuredBroker(spec, ca_file, password_file)
    finally:
        broker.down(spec)
        shutil.rmtree(root, ignore_errors=True)


@dataclasses.dataclass
class SecuredDeployment(Deployment):
    """A deployment whose every client (CLI, worker, helpers) uses `security`."""

    security: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.security}


def _deployment(root: Path, security: dict[str, str]) -> Deployment:
    return SecuredDeployment(security["KAFKA_BOOTSTRAP"], root, partitions=2, security=security)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TASKSTREAM, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _routable_sample(folder: Path) -> Path:
    """The sample log without its deliberately broken line (produce refuses it)."""
    lines = (SAMPLES / "events.jsonl").read_bytes().splitlines()
    log = folder / "events.jsonl"
    log.write_bytes(b"".join(line + b"\n" for line in lines if _is_json_object(line)))
    return log


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _feed(deployment: Deployment) -> Path:
    """topics create, templates publish, produce the sample log: all through the CLI."""
    env = deployment.env
    log = _routable_sample(deployment.root)
    for args in (
        ("topics", "create"),
        ("templates", "publish", "--templates", str(SAMPLES / "templates.json"),
         "--pools", str(SAMPLES / "pools.json")),
        ("produce", "--no-progress", str(log)),
    ):  # fmt: skip
        done = _cli(env, *args)
        assert done.returncode == 0, f"{args}: {done.stderr}"
        assert PASSWORD not in done.stdout + done.stderr
    return log


def _count(settings: Settings, short_topic: str) -> int:
    """Messages in a topic, read with the secured settings (a full read)."""
    topic = settings.topic(short_topic)
    consumer = Consumer(client_config(settings, **{"group.id": "security-test-count"}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p, 0) for p in partitions]
        consumer.assign(tps)
        wanted = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        seen = 0
        deadline = time.monotonic() + 20
        while seen < wanted and time.monotonic() < deadline:
            seen += len([m for m in consumer.consume(500, 0.5) if m.error() is None])
        return seen
    finally:
        consumer.close()


def _claim_through_the_api(worker: WorkerProcess) -> dict[str, object]:
    """POST a claim of an unknown template with the service key: the API
    process produces it (its aiokafka producer) and, once the worker rejected
    it, finds the rejection in task-events (its aiokafka consumer)."""
    request = urllib.request.Request(
        f"{worker.api_url}/users/u-secured-1/claims",
        data=orjson.dumps({"template_id": "no_such_template", "request_id": "r1"}),
        method="POST",
        headers={"X-Service-Key": SERVICE_KEY, "Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(request, timeout=20) as answer:
                body = orjson.loads(answer.read())
                if answer.status == 200:
                    return dict(body)
        except urllib.error.HTTPError as error:  # 503 until the API and worker are ready
            if error.code != 503:
                raise AssertionError(f"{error.code} {error.read()!r}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # the API process is still starting
        assert time.monotonic() < deadline, "no answer from the API\n" + worker.log_tail()
        assert worker.running(), worker.log_tail()
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_SSL", "SCRAM-SHA-256"), ("SASL_PLAINTEXT", "PLAIN"), ("SSL", "")],
)
def test_worker_and_its_api_over(
    secured: SecuredBroker, tmp_path: Path, protocol: str, mechanism: str
) -> None:
    deployment = _deployment(tmp_path, secured.env(protocol, mechanism))
    _feed(deployment)
    worker = deployment.worker(
        "a", TASKSTREAM_API_SECRET=API_SECRET, TASKSTREAM_SERVICE_KEY=SERVICE_KEY
    ).start()
    try:
        settings = deployment.settings
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                lags = [group_offsets(settings, name) for name in INPUT_TOPICS]
            except KafkaException:  # e.g. the group's coordinator still loading
                lags = [{0: (-1, 0)}]
            if all(c >= end for lag in lags for c, end in lag.values()):
                break
            assert worker.running(), worker.log_tail()
            time.sleep(0.5)
        else:
            pytest.fail("the worker did not consume every input\n" + worker.log_tail())
        assert _count(settings, TASK_EVENTS) > 0
        answer = _claim_through_the_api(worker)
        assert (answer["outcome"], answer["reason"]) == ("rejected", "unknown_template"), answer
        audit = _cli(deployment.env, "audit", "--no-progress")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert PASSWORD not in audit.stdout + audit.stderr
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    said = f"({protocol}, {mechanism} as '{USER}'" if mechanism else f"({protocol}"
    assert said in log, log[-3000:]  # the start-up line
    assert PASSWORD not in log


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_PLAINTEXT", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SSL", "")],
)
def test_cli_writes_and_reads_over(
    secured: SecuredBroker, tmp_path: Path, protocol: str, mechanism: str
) -> None:
    deployment = _deployment(tmp_path, secured.env(protocol, mechanism))
    log = _feed(deployment)
    settings = deployment.settings
    sent_claims = sum(1 for line in log.read_text().splitlines() if '"task_claim"' in line)
    assert _count(settings, CLAIMS) == sent_claims
    assert _count(settings, TEMPLATES) > 0


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_SSL", "PLAIN")],
)
def test_wrong_password_is_a_clear_error(
    secured: SecuredBroker, protocol: str, mechanism: str
) -> None:
    done = _cli(secured.env(protocol, mechanism, WRONG_PASSWORD), "topics", "create")
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "refused the connection" in output, output
    assert "uthentication" in output, output
    assert "Traceback" not in output
    assert WRONG_PASSWORD not in output
    assert PASSWORD not in output


def test_unknown_ca_is_a_clear_error(secured: SecuredBroker, tmp_path: Path) -> None:
    other_ca, _ = make_certificates(tmp_path / "other", name="other-ca")
    env = secured.env("SSL") | {"KAFKA_SSL_CA_FILE": str(other_ca)}
    done = _cli(env, "topics", "create")
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "refused the connection" in output, output
    assert "certificate verify failed" in output, output
    assert "Traceback" not in output
