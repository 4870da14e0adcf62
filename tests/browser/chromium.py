"""Headless Chromium for the browser tests: one set-up, shared.

Needs Debian's chromium and chromium-driver and the selenium package: skipped on a developer
machine without them, FAILS under CI (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.conftest import skip_or_fail

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--window-size=1280,800",
)  # fmt: skip


@contextmanager
def chromium(*, page_load_timeout: float = 30.0) -> Iterator[Any]:
    """A selenium driver of headless Chromium in a fresh profile; quit and profile removed after."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium not installed")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        skip_or_fail("Debian chromium and chromium-driver not installed")
    profile = tempfile.mkdtemp(prefix="csud-chromium-")
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(page_load_timeout)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def log_in(driver: Any, port: int, username: str, password: str, timeout: float = 20.0) -> None:
    """Open the wall of the daemon whose web port is ``port`` and log in through its form."""
    from selenium.webdriver.common.by import By

    driver.get(f"http://127.0.0.1:{port}/")
    deadline = time.monotonic() + timeout
    while not driver.find_element(By.ID, "login").is_displayed():
        assert time.monotonic() < deadline, "no login form"
        time.sleep(0.2)
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
