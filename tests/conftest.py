"""Suite-wide fixtures. The `kafka` fixture owns a real broker for the session.

Unless KAFKA_BOOTSTRAP is set (then that cluster is used and left alone), the
suite starts its own single-node KRaft broker on free ports in a temporary
folder, tied to this process (it gets SIGKILL if pytest dies), and stops it at
the end. Unit and stream tests never ask for it, so they run without Java.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskstream import broker


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    """Bootstrap address of a broker that answers metadata requests."""
    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        if not broker.metadata_ok(existing, timeout=10):
            pytest.fail(f"KAFKA_BOOTSTRAP={existing} does not answer metadata requests")
        yield existing
        return
    home = Path(tempfile.mkdtemp(prefix="taskstream-test-broker-"))
    spec = broker.BrokerSpec.create(port=broker.free_port(), home=home)
    try:
        started = broker.up(spec, die_with_parent=True)
        print(
            f"\n[kafka] test broker {spec.version} on {started.bootstrap}, up in "
            f"{started.seconds:.1f}s"
        )
        yield started.bootstrap
    finally:
        broker.down(spec)
        shutil.rmtree(home, ignore_errors=True)
