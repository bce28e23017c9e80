"""The live operator page in a real headless browser, against two real workers.

Two workers (real broker, RocksDB) share 4 partitions and run the sample
campaign. The page is opened on worker a's API process, which must gather
worker b's partitions over HTTP (its /ops/local); the test waits for the
charts, then checks what the page shows against `taskstream pools status`
(issued, master, in buckets, each partition's bucket) and the funnels
against the rewards topic, and saves a screenshot (to
$TASKSTREAM_OPS_SCREENSHOT when set: that is how docs/ops-page.png is made).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.browser import headless_chromium
from support.workers import Deployment, WorkerProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
SERVICE_KEY = "ops-page-test-key"
INPUTS = ("claims", "orders", "refunds", "ticks")


@pytest.fixture
def campaign(kafka: str, tmp_path: Path) -> Iterator[tuple[Deployment, list[WorkerProcess]]]:
    deployment = Deployment(kafka, tmp_path, partitions=4)
    deployment.create_topics()
    deployment.publish_templates(SAMPLES / "templates.json", SAMPLES / "pools.json")
    workers = [
        deployment.worker(
            label, TASKSTREAM_API_SECRET="ops-secret", TASKSTREAM_SERVICE_KEY=SERVICE_KEY
        ).start()
        for label in ("a", "b")
    ]
    yield deployment, workers
    for worker in workers:
        worker.stop()


def settle(deployment: Deployment, workers: list[WorkerProcess]) -> dict[str, dict[str, Any]]:
    """Wait until the workers committed every input and two `pools status`
    in a row agree and add up; return the sheets."""
    deadline = time.monotonic() + 180
    last: dict[str, dict[str, Any]] | None = None
    while time.monotonic() < deadline:
        for worker in workers:
            assert worker.running(), worker.log_tail()
        lags = [deployment.group_lag(topic) for topic in INPUTS]
        if all(c >= end or end == 0 for lag in lags for c, end in lag.values()):
            code, sheets = deployment.pools_status()
            if code == 0 and sheets and sheets == last:
                return sheets
            last = sheets
        time.sleep(1)
    raise AssertionError("the workers did not settle\n" + "\n".join(w.log_tail() for w in workers))


# Everything the test checks, read in one go: the page redraws every second,
# and one script runs between two redraws, never during one.
READ_PAGE = """
const pools = {};
for (const card of document.querySelectorAll("[data-pool]")) {
  const entry = { badge: card.querySelector(".badge").textContent, buckets: {} };
  for (const cell of card.querySelectorAll(".figures [data-field]")) {
    entry[cell.dataset.field] = Number(cell.dataset.value);
  }
  for (const bar of card.querySelectorAll('svg[data-chart="buckets"] rect')) {
    entry.buckets[bar.dataset.partition] = Number(bar.dataset.value);
  }
  pools[card.dataset.pool] = entry;
}
const rewarded = [...document.querySelectorAll(
  'svg[data-chart="funnel"] rect[data-field="rewards_granted"]')]
  .reduce((sum, rect) => sum + Number(rect.dataset.value), 0);
const lag = [...document.querySelectorAll("#lag-table td[data-role]")].map((c) => c.dataset.value);
const deadLetters = [...document.querySelectorAll("#dead-table tr[data-dead-letter]")]
  .map((row) => row.textContent);
return { pools, rewarded, lag, dead_letters: deadLetters };
"""


def test_the_page_shows_what_pools_status_and_the_log_say(
    campaign: tuple[Deployment, list[WorkerProcess]], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    deployment, workers = campaign
    produced = deployment.cli("produce", "--no-progress", str(SAMPLES / "events.jsonl"))
    assert produced.returncode == 1, produced.stderr  # the sample's line 28 is cut on purpose
    sheets = settle(deployment, workers)
    rewards = deployment.reader("rewards")
    rewards.read_to_end()
    granted = {m["event_id"] for m in rewards.messages if m["type"] == "reward_granted"}
    assert granted

    a = workers[0]
    with headless_chromium() as driver:
        driver.get(f"{a.api_url}/ops?every=1000#key={SERVICE_KEY}")  # type: ignore[attr-defined]

        def drawn(d: Any) -> bool:
            status = d.find_element(By.ID, "status")
            charts = d.find_elements(By.CSS_SELECTOR, 'svg.chart[data-chart="burndown"]')
            return status.get_attribute("data-state") == "ok" and len(charts) == len(sheets)

        try:
            WebDriverWait(driver, 90, poll_frequency=0.5).until(drawn)
        except Exception:
            status = driver.find_element(By.ID, "status").text  # type: ignore[attr-defined]
            raise AssertionError(f"the page never got ready: {status}") from None
        # The key left the address bar as soon as the page read it.
        assert "key=" not in driver.current_url  # type: ignore[attr-defined]

        page = driver.execute_script(READ_PAGE)  # type: ignore[attr-defined]
        for pool_id, sheet in sheets.items():
            card = page["pools"][pool_id]
            for field in ("issued", "master", "in_buckets", "total"):
                assert card[field] == sheet[field], (pool_id, field)
            assert card["buckets"] == {
                str(p): sheet["buckets"].get(str(p), 0) for p in range(deployment.partitions)
            }, pool_id
            assert card["badge"] == "adds up", pool_id
        assert page["rewarded"] == len(granted)
        assert len(page["lag"]) == deployment.partitions * 6
        assert set(page["lag"]) == {"0"}
        assert any("negative amount" in row for row in page["dead_letters"])

        target = Path(os.environ.get("TASKSTREAM_OPS_SCREENSHOT") or tmp_path / "ops-page.png")
        assert driver.save_screenshot(str(target))  # type: ignore[attr-defined]
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
