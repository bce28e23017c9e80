"""Kafka security settings (streams.kafka_security): builders, _FILE secrets,
refusals of bad combinations, and secrets kept out of reprs, logs and errors.

The PEM files below are fixtures made once with openssl (an EC test CA and a
client certificate whose key is encrypted with CLIENT_KEY_PASSWORD): they
only have to load, nothing connects with them here.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from streams.config import Settings
from streams.kafka_security import KafkaSecurity
from taskstream import broker
from taskstream.kafka_io import client_config

PASSWORD = "sasl-Pw-9d3e71"
CLIENT_KEY_PASSWORD = "unit-key-Pw-31"

CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUFa5zR/hzdSLOkwQtN9piRGrPNrkwCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXdGFza3N0cmVhbSB1bml0IHRlc3QgQ0EwIBcNMjYxMTIzMTcz
NzU0WhgPMjEyNjEwMzAxNzM3NTRaMCIxIDAeBgNVBAMMF3Rhc2tzdHJlYW0gdW5p
dCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEDD6xqQMM72PQJtle
Q6NhqBsaqzRlfAf5zmkZlXQUkt0lC9518mv2BoxnEM7SReDjW74csPhPCUg7V+Mt
16W3pqNTMFEwHQYDVR0OBBYEFNWlmpXAXLpVGOx1DZascV1V4bmoMB8GA1UdIwQY
MBaAFNWlmpXAXLpVGOx1DZascV1V4bmoMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI
zj0EAwIDSAAwRQIhAL7eWxiwyQyQS6zSwsONWuXxZIGwY594WvPW4kUfy8VYAiBv
G6FQS5lXa0LyOfAOr3s8klND+yApJDLFHxn0h0o7BA==
-----END CERTIFICATE-----
"""

CLIENT_CERT_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBLzCB1gIUUg8px476K8r2439LFl6MQUy7lzAwCgYIKoZIzj0EAwIwIjEgMB4G
A1UEAwwXdGFza3N0cmVhbSB1bml0IHRlc3QgQ0EwIBcNMjYxMTIzMTczNzU0WhgP
MjEyNjEwMzAxNzM3NTRaMBExDzANBgNVBAMMBmNsaWVudDBZMBMGByqGSM49AgEG
CCqGSM49AwEHA0IABDMpcTurv9YMAzfGNEKl4iFc7RDKqrcycKbubFh/jms8xnBy
HRyfybMG1PxcXX7v74BHiwojJ2ospzBG1v5tJuwwCgYIKoZIzj0EAwIDSAAwRQIh
AIsoQxdtQd0MZCW6AwBfZlMlCFZ4UP1NoXjx9ushUmf0AiAjeEZisCp/DU/ROrYm
bMZiPFV8cirA2VW+37LvldVtlw==
-----END CERTIFICATE-----
"""

CLIENT_KEY_PEM = """\
-----BEGIN ENCRYPTED PRIVATE KEY-----
MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAheUvHzI3a+YgICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEASoEEAP2riSxB8nbASYvJB0tMwwEgZCK
ZpMi59bjiIQt3cOcrbUdkHRdC9Ru4H88xSM4FPhOxbTpgDCT3T9iahsduYu+wYP4
nqasj4ROfhb43+YPT+aMFsdQNZiFbSpnrJvE8cGxDKX8a3P2va4aD2f3T+np36wo
BPKZFkNi6Qa86TtmZ1jNcB89D8+oteBxIj+iyxKTUayB+idP27O/JcY+Sn+EBsY=
-----END ENCRYPTED PRIVATE KEY-----
"""


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    files = {"ca": CA_PEM, "cert": CLIENT_CERT_PEM, "key": CLIENT_KEY_PEM}
    paths = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.pem"
        path.write_text(text)
        paths[name] = str(path)
    return paths


def _sasl(mechanism: str = "SCRAM-SHA-256", protocol: str = "SASL_PLAINTEXT") -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": protocol,
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_USERNAME": "alice",
        "KAFKA_SASL_PASSWORD": PASSWORD,
    }


def test_plaintext_by_default_changes_no_client_config() -> None:
    security = Settings.from_env({}).kafka_security
    assert security == KafkaSecurity()
    assert security.confluent_config() == {}
    assert security.faust_settings() == {}
    assert security.aiokafka_config() == {"security_protocol": "PLAINTEXT"}
    assert client_config(Settings.from_env({}))["bootstrap.servers"] == "127.0.0.1:19092"
    assert "security.protocol" not in client_config(Settings.from_env({}))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_for_each_mechanism(mechanism: str) -> None:
    settings = Settings.from_env(_sasl(mechanism.lower()))  # case does not matter
    config = client_config(settings, **{"group.id": "g"})
    assert config["security.protocol"] == "SASL_PLAINTEXT"
    assert config["sasl.mechanism"] == mechanism
    assert (config["sasl.username"], config["sasl.password"]) == ("alice", PASSWORD)
    assert config["group.id"] == "g"
    assert not any(key.startswith("ssl.") for key in config)
    aio = settings.kafka_security.aiokafka_config()
    assert aio["sasl_mechanism"] == mechanism
    assert aio["sasl_plain_password"] == PASSWORD
    assert "ssl_context" not in aio
    credentials = settings.kafka_security.faust_settings()["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_PLAINTEXT"
    assert credentials.mechanism.value == mechanism
    assert credentials.password == PASSWORD
    assert PASSWORD not in repr(credentials)


def test_ssl_checks_the_broker_against_the_ca_and_its_host_name(pem: dict[str, str]) -> None:
    security = KafkaSecurity.from_env(
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": pem["ca"]}
    )
    assert security.confluent_config() == {
        "security.protocol": "SSL",
        "ssl.ca.location": pem["ca"],
        "ssl.endpoint.identification.algorithm": "https",
    }
    context = security.aiokafka_config()["ssl_context"]
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    credentials = security.faust_settings()["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.context is context


def test_host_name_check_can_be_turned_off_and_says_so(pem: dict[str, str]) -> None:
    security = KafkaSecurity.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CA_FILE": pem["ca"],
            "KAFKA_SSL_CHECK_HOSTNAME": "false",
        }
    )
    assert security.confluent_config()["ssl.endpoint.identification.algorithm"] == "none"
    context = security.aiokafka_config()["ssl_context"]
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED  # the chain is still checked
    assert "host name NOT checked" in security.describe()


def test_sasl_ssl_with_a_client_certificate_and_secrets_from_files(
    pem: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "sasl").write_text(PASSWORD + "\n")
    (tmp_path / "key-pw").write_text(CLIENT_KEY_PASSWORD)
    env = {
        **_sasl("SCRAM-SHA-512", "SASL_SSL"),
        "KAFKA_SASL_PASSWORD": "",
        "KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "sasl"),
        "KAFKA_SSL_CA_FILE": pem["ca"],
        "KAFKA_SSL_CERT_FILE": pem["cert"],
        "KAFKA_SSL_KEY_FILE": pem["key"],
        "KAFKA_SSL_KEY_PASSWORD_FILE": str(tmp_path / "key-pw"),
    }
    security = KafkaSecurity.from_env(env)
    assert security.sasl_password == PASSWORD  # stripped of the file's newline
    config = security.confluent_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["ssl.certificate.location"] == pem["cert"]
    assert config["ssl.key.location"] == pem["key"]
    assert config["ssl.key.password"] == CLIENT_KEY_PASSWORD
    credentials = security.faust_settings()["broker_credentials"]
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.ssl_context is security.aiokafka_config()["ssl_context"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs KAFKA_SASL_MECHANISM"),
        (_sasl("GSSAPI"), "needs KAFKA_SASL_MECHANISM, one of PLAIN"),
        ({**_sasl(), "KAFKA_SASL_USERNAME": ""}, "needs KAFKA_SASL_USERNAME"),
        ({**_sasl(), "KAFKA_SASL_PASSWORD": ""}, "needs KAFKA_SASL_PASSWORD or"),
        (
            {**_sasl(), "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
            "KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set but "
            "KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        ({"KAFKA_SSL_CA_FILE": "/ca.pem"}, "KAFKA_SSL_CA_FILE set but KAFKA_SECURITY_PROTOCOL"),
        (
            {**_sasl(), "KAFKA_SSL_KEY_PASSWORD": "x"},
            "KAFKA_SSL_KEY_PASSWORD set but KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": "/c.pem"},
            "KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/no/such/ca.pem"},
            "KAFKA_SSL_CA_FILE: cannot read /no/such/ca.pem",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": "maybe"},
            "KAFKA_SSL_CHECK_HOSTNAME must be true or false",
        ),
        (
            {**_sasl(), "KAFKA_SASL_PASSWORD": "", "KAFKA_SASL_PASSWORD_FILE": "/no/such/pw"},
            "KAFKA_SASL_PASSWORD_FILE: cannot read /no/such/pw",
        ),
    ],
)
def test_bad_combinations_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match="^.*" + message.replace("(", r"\(")) as caught:
        Settings.from_env(env)
    assert PASSWORD not in str(caught.value)


def test_a_wrong_key_password_is_an_error_without_the_password(
    pem: dict[str, str],
) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_FILE": pem["ca"],
        "KAFKA_SSL_CERT_FILE": pem["cert"],
        "KAFKA_SSL_KEY_FILE": pem["key"],
        "KAFKA_SSL_KEY_PASSWORD": "wrong-key-Pw-77",
    }
    with pytest.raises(ValueError, match="KAFKA_SSL_\\* files cannot be loaded") as caught:
        KafkaSecurity.from_env(env)
    assert "wrong-key-Pw-77" not in str(caught.value)


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="cannot be loaded"):
        KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": str(junk)})


def test_secrets_stay_out_of_reprs_and_the_startup_line(pem: dict[str, str]) -> None:
    env = {
        **_sasl("PLAIN", "SASL_SSL"),
        "KAFKA_SSL_CA_FILE": pem["ca"],
        "KAFKA_SSL_CERT_FILE": pem["cert"],
        "KAFKA_SSL_KEY_FILE": pem["key"],
        "KAFKA_SSL_KEY_PASSWORD": CLIENT_KEY_PASSWORD,
    }
    settings = Settings.from_env(env)
    security = settings.kafka_security
    line = security.describe()  # what the worker logs at start-up
    assert line == (f"SASL_SSL, PLAIN as 'alice', CA {pem['ca']}, client certificate {pem['cert']}")
    for text in (repr(settings), str(settings), repr(security), line):
        assert PASSWORD not in text
        assert CLIENT_KEY_PASSWORD not in text
    assert PASSWORD not in repr(security.faust_settings())


def test_local_broker_security_listeners_are_opt_in(tmp_path: Path) -> None:
    plain = broker.BrokerSpec.create(port=30000, home=tmp_path)
    text = broker.server_properties(plain)
    assert "sasl" not in text
    assert "ssl" not in text
    assert broker.scram_format_args(plain) == []


def test_local_broker_with_sasl_and_tls_listeners(tmp_path: Path) -> None:
    spec = broker.BrokerSpec(
        port=30000,
        controller_port=30001,
        home=tmp_path,
        sasl_port=30002,
        ssl_port=30003,
        sasl_ssl_port=30004,
        sasl_users=(("alice", PASSWORD),),
        ssl_keystore=tmp_path / "broker.p12",
        ssl_keystore_password="ks",
    )
    props = dict(line.split("=", 1) for line in broker.server_properties(spec).splitlines() if line)
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:30000,CONTROLLER://127.0.0.1:30001,"
        "SASL_PLAINTEXT://127.0.0.1:30002,SSL://127.0.0.1:30003,SASL_SSL://127.0.0.1:30004"
    )
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["listener.security.protocol.map"].endswith(
        ",SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL"
    )
    assert props["sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    plain_jaas = props["listener.name.sasl_ssl.plain.sasl.jaas.config"]
    assert f'user_alice="{PASSWORD}"' in plain_jaas
    assert (
        "ScramLoginModule" in props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    )
    assert props["ssl.keystore.location"] == str(tmp_path / "broker.p12")
    assert broker.scram_format_args(spec) == [
        "--add-scram",
        f"SCRAM-SHA-256=[name=alice,password={PASSWORD}]",
        "--add-scram",
        f"SCRAM-SHA-512=[name=alice,password={PASSWORD}]",
    ]
    assert PASSWORD not in repr(spec)


def test_local_broker_refuses_listeners_it_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(broker.BrokerError, match="needs at least one user"):
        broker.server_properties(broker.BrokerSpec(home=tmp_path, sasl_port=30002))
    with pytest.raises(broker.BrokerError, match="needs a keystore"):
        broker.server_properties(broker.BrokerSpec(home=tmp_path, ssl_port=30003))
