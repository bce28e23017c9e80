"""Stream-tier tests run the real agents in faust's test context: no broker,
tables in memory, topic sends captured by a recording fake."""

from __future__ import annotations

import os

import pytest

# streams.app reads its settings once, at import: import it here with tables
# in memory, then put the environment back so nothing else (worker processes
# of the integration tier) inherits the setting.
_saved = os.environ.get("TASKSTREAM_STORE")
os.environ["TASKSTREAM_STORE"] = "memory://"
import streams.agents  # noqa: E402
import streams.app  # noqa: E402, F401

if _saved is None:
    del os.environ["TASKSTREAM_STORE"]
else:
    os.environ["TASKSTREAM_STORE"] = _saved


@pytest.fixture
def faust_app() -> object:
    from streams.app import app

    app.finalize()
    app.flow_control.resume()
    return app
