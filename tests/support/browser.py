"""A real headless browser for the operator page's test: Debian's chromium
driven through its chromedriver (selenium), installed here when missing, the
way the Kafka jars are fetched on first use."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PACKAGES = ("chromium", "chromium-driver")


class BrowserUnavailable(RuntimeError):
    pass


def _binaries() -> tuple[str, str] | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise BrowserUnavailable("chromium is missing and neither root nor sudo can install it")
        prefix = ["sudo", "-n"]
    return subprocess.run(
        [*prefix, "apt-get", *args],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def ensure_chromium() -> tuple[str, str]:
    """The paths of chromium and chromedriver, installing Debian's packages
    first if they are missing (apt's lists refreshed only if needed)."""
    found = _binaries()
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        raise BrowserUnavailable("chromium is missing and this system has no apt-get")
    done = _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES)
    if done.returncode != 0:
        _apt("update", "-q")
        done = _apt("install", "-y", "-q", "--no-install-recommends", *PACKAGES)
    found = _binaries()
    if found is None:
        raise BrowserUnavailable(
            f"could not install {' '.join(PACKAGES)} (apt-get exit {done.returncode}):\n"
            + done.stderr[-2000:]
        )
    return found


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1700) -> Iterator[object]:
    """A selenium WebDriver on a headless chromium, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    service = Service(executable_path=driver_path, log_output=str(Path(os.devnull)))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
