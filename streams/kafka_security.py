"""How every Kafka client connects: TLS and SASL (PLAIN, SCRAM) from the environment.

One `KafkaSecurity`, read once with the worker's Settings, and three builders
used wherever a client is made: `confluent_config()` (confluent-kafka: the CLI
tools, the notifier, the catalog feed), `aiokafka_config()` (aiokafka clients
of our own) and `faust_settings()` (the faust app: its consumer, producer and
admin client all take `broker_credentials`). See docs/security.md.

Secrets (the SASL password, the TLS key's password) come from the environment
or from files (NAME_FILE), are kept out of repr, and `describe()` (the line
the worker logs at start-up) names the mechanism and user, never a secret.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class KafkaSecurity:
    """The connection's protocol, SASL login and TLS files (all optional)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    ssl_key_password: str = field(default="", repr=False)
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol.endswith("SSL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        """Read and check the KAFKA_SECURITY_* / KAFKA_SASL_* / KAFKA_SSL_* variables.

        Raises ValueError with what is wrong (never with a secret in it).
        """
        env = os.environ if env is None else env
        protocol = (env.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").strip().upper()
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
            )
        security = cls(
            protocol=protocol,
            sasl_mechanism=(env.get("KAFKA_SASL_MECHANISM") or "").strip().upper(),
            sasl_username=env.get("KAFKA_SASL_USERNAME") or "",
            sasl_password=read_secret(env, "KAFKA_SASL_PASSWORD"),
            ssl_ca_file=env.get("KAFKA_SSL_CA_FILE") or "",
            ssl_cert_file=env.get("KAFKA_SSL_CERT_FILE") or "",
            ssl_key_file=env.get("KAFKA_SSL_KEY_FILE") or "",
            ssl_key_password=read_secret(env, "KAFKA_SSL_KEY_PASSWORD"),
            ssl_check_hostname=_flag(env, "KAFKA_SSL_CHECK_HOSTNAME", default=True),
        )
        security._check_sasl()
        security._check_tls()
        return security

    def _check_sasl(self) -> None:
        given = [
            name
            for name, value in (
                ("KAFKA_SASL_MECHANISM", self.sasl_mechanism),
                ("KAFKA_SASL_USERNAME", self.sasl_username),
                ("KAFKA_SASL_PASSWORD", self.sasl_password),
            )
            if value
        ]
        if not self.uses_sasl:
            if given:
                raise ValueError(
                    f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL is {self.protocol}: "
                    "use SASL_PLAINTEXT or SASL_SSL to log in"
                )
            return
        if self.sasl_mechanism not in MECHANISMS:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs KAFKA_SASL_MECHANISM, one of "
                f"{', '.join(MECHANISMS)}; got "
                + (repr(self.sasl_mechanism) if self.sasl_mechanism else "none")
            )
        if not self.sasl_username:
            raise ValueError(
                f"KAFKA_SASL_MECHANISM={self.sasl_mechanism} needs KAFKA_SASL_USERNAME"
            )
        if not self.sasl_password:
            raise ValueError(
                f"KAFKA_SASL_MECHANISM={self.sasl_mechanism} needs KAFKA_SASL_PASSWORD "
                "or KAFKA_SASL_PASSWORD_FILE"
            )

    def _check_tls(self) -> None:
        files = (
            ("KAFKA_SSL_CA_FILE", self.ssl_ca_file),
            ("KAFKA_SSL_CERT_FILE", self.ssl_cert_file),
            ("KAFKA_SSL_KEY_FILE", self.ssl_key_file),
        )
        if not self.uses_tls:
            given = [name for name, value in files if value]
            if self.ssl_key_password:
                given.append("KAFKA_SSL_KEY_PASSWORD")
            if given:
                raise ValueError(
                    f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL is {self.protocol}: "
                    "use SSL or SASL_SSL for TLS"
                )
            return
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise ValueError("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together (client TLS)")
        for name, path in files:
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{name}: cannot read {path}")
        try:
            ssl_context(self)  # a bad CA, certificate or key password shows here, not later
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"KAFKA_SSL_* files cannot be loaded: {exc}") from None

    def describe(self) -> str:
        """What a log line may say about the connection: no secret."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username!r}")
        if self.uses_tls:
            parts.append(f"CA {self.ssl_ca_file or 'system store'}")
            if self.ssl_cert_file:
                parts.append(f"client certificate {self.ssl_cert_file}")
            if not self.ssl_check_hostname:
                parts.append("host name NOT checked")
        return ", ".join(parts)

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka properties (empty for PLAINTEXT, so nothing else changes)."""
        if self.protocol == "PLAINTEXT":
            return {}
        config: dict[str, Any] = {"security.protocol": self.protocol}
        if self.uses_sasl:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password
        if self.uses_tls:
            if self.ssl_ca_file:
                config["ssl.ca.location"] = self.ssl_ca_file
            if self.ssl_cert_file:
                config["ssl.certificate.location"] = self.ssl_cert_file
                config["ssl.key.location"] = self.ssl_key_file
            if self.ssl_key_password:
                config["ssl.key.password"] = self.ssl_key_password
            config["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_check_hostname else "none"
            )
        return config

    def aiokafka_config(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka client (AIOKafkaConsumer and friends)."""
        config: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_sasl:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = self.sasl_password
        if self.uses_tls:
            config["ssl_context"] = ssl_context(self)
        return config

    def faust_settings(self) -> dict[str, Any]:
        """faust.App keyword arguments: `broker_credentials` (faust hands them to
        every aiokafka client it makes); empty for PLAINTEXT."""
        import faust

        if self.uses_sasl:
            credentials: Any = faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism,
                ssl_context=ssl_context(self) if self.uses_tls else None,
            )
            return {"broker_credentials": credentials}
        if self.uses_tls:
            return {"broker_credentials": faust.SSLCredentials(ssl_context(self))}
        return {}


@functools.cache
def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """The TLS context of aiokafka clients: the CA file (else the system's CAs),
    the optional client certificate, host name checked unless turned off."""
    context = ssl.create_default_context(cafile=security.ssl_ca_file or None)
    context.check_hostname = security.ssl_check_hostname
    if security.ssl_cert_file:
        context.load_cert_chain(
            security.ssl_cert_file,
            security.ssl_key_file,
            password=security.ssl_key_password or None,
        )
    return context


def read_secret(env: Mapping[str, str], name: str) -> str:
    """NAME's value, else the content of the file NAME_FILE names (stripped), else ""."""
    value = env.get(name)
    if value:
        return value
    path = env.get(f"{name}_FILE")
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The exception names the file, never its content.
        raise ValueError(f"{name}_FILE: cannot read {path}: {exc}") from None


def _flag(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")
