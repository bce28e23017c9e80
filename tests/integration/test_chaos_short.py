"""The fault suite, short (the long one is `make chaos`): every fault kind once.

20,000 log lines produced as live traffic at 400 lines/s to 2 workers (each
with its render API) on a broker of its own; while the outputs come out, a
worker is SIGKILLed, a worker is SIGSTOPped past the session timeout and
resumed, the broker is restarted, and a worker loses its RocksDB folder.
Then nothing is lost or duplicated: outputs equal replay's, every malformed
line is a dead letter, lag is zero, pools balance, `taskstream audit`
agrees, no worker crashed, every faulted worker came back and the render
APIs answer from the owners (chaos.suite.Report.ok).
"""

from __future__ import annotations

import pytest

from chaos.suite import run_suite

pytestmark = pytest.mark.integration


# run_suite's own timeout bounds the run; the checks after it (outputs, lag,
# pools, audit) may wait up to a few minutes more, so pytest's default 300 s
# must not cut the test off before it prints its table.
@pytest.mark.timeout(720)
def test_every_fault_kind_once_loses_and_duplicates_nothing() -> None:
    report = run_suite(
        events=20_000,
        users=2_000,
        workers=2,
        faults=["kill", "stop", "broker", "wipe"],
        seed=7,
        timeout=300,
        batch_max=50,
        rate=400,  # ~50 s of live traffic: the faults land while it flows
    )
    table = report.table()
    print(table)
    assert report.ok, table
    assert report.fault_counts() == {"kill": 1, "stop": 1, "broker": 1, "wipe": 1}
    assert report.missing == report.extra == report.two_contents == 0
    assert report.duplicated_effects == 0
