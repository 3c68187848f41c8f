"""Headless Chromium for the dashboard's browser tests (a helper module, not a test file).

    with open_page(url, screenshot=tmp_path / "page.png") as page:
        page.wait_ready()
        page.wait_for(lambda: page.body("round") == "3", timeout=10, what="round 3")
        assert page.points("chart-loss") == 2

Selenium 4 drives Debian's own /usr/bin/chromium through /usr/bin/chromedriver; both paths are
given explicitly, so Selenium Manager is never run and nothing is downloaded. Without them (or
without the selenium package) the test is skipped with one line, unless FEDMQ_REQUIRE_BROWSER=1,
which turns the skip into a failure (for the CI job that must run the browser tests).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 1000)
CHART_IDS = ("chart-loss", "chart-quality", "chart-time", "chart-bytes")

T = TypeVar("T")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


def require_browser() -> None:
    """pytest.skip (or pytest.fail with FEDMQ_REQUIRE_BROWSER=1) when there is no browser."""
    why = browser_missing()
    if why is None:
        return
    if os.environ.get("FEDMQ_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test needs headless Chromium: {why}", pytrace=False)
    pytest.skip(f"no headless Chromium: {why}")


def start_chromium() -> Any:
    """A headless Chromium WebDriver on Debian's binaries (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_window_size(*WINDOW)
    return driver


class Page:
    """The dashboard page in a live browser, with the test hooks app.js publishes."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def body(self, attr: str) -> str | None:
        """document.body.dataset[attr] (round, phase, rounds, ready), None when unset."""
        value = self.js("return document.body.dataset[arguments[0]];", attr)
        return None if value is None else str(value)

    def points(self, chart_id: str) -> int | None:
        """Non-null points in the first series of a chart (its data-points), None when unset."""
        value = self.js(
            "const e = document.getElementById(arguments[0]);"
            "return e ? e.getAttribute('data-points') : null;", chart_id)
        return None if value is None else int(value)

    def text(self, element_id: str) -> str | None:
        """textContent of an element by id (the header's fields: phase, round, deadline...)."""
        value = self.js(
            "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
            element_id)
        return None if value is None else str(value)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, what: str = "",
                 interval: float = 0.1) -> T:
        """Poll predicate until it returns something truthy and return that; AssertionError
        (with the page's body dataset, for the log) when timeout seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            value: T | None = None
            with suppress(Exception):  # a page mid-render or mid-reload: try again
                value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                state = self.js("return Object.assign({}, document.body.dataset);")
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what or predicate!r}; "
                    f"body dataset {state}; console errors {self.console_errors()}")
            time.sleep(interval)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait for the first successful render (body data-ready="1")."""
        self.wait_for(lambda: self.body("ready") == "1", timeout, "data-ready=1")

    def console_errors(self) -> list[str]:
        """SEVERE console messages since the last call (uncaught JS errors, failed loads)."""
        try:
            entries = self.driver.get_log("browser")
        except Exception:
            return []
        return [e.get("message", "") for e in entries if e.get("level") == "SEVERE"]

    def save_screenshot(self, path: Path | str, full_page: bool = True) -> Path:
        """PNG of the page, the whole scrollable page by default (Chrome DevTools protocol),
        else the 1280x1000 viewport."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
            path.write_bytes(base64.b64decode(shot["data"]))
        elif not self.driver.save_screenshot(str(path)):
            raise OSError(f"screenshot not written: {path}")
        return path


@contextmanager
def open_page(url: str, screenshot: Path | None = None) -> Iterator[Page]:
    """Open url in headless Chromium; on exit save a screenshot (also when the test failed,
    which is when it is most useful) and quit the browser."""
    require_browser()
    driver = start_chromium()
    page = Page(driver)
    try:
        driver.get(url)
        yield page
    finally:
        try:
            if screenshot is not None:
                page.save_screenshot(screenshot)
        finally:
            driver.quit()
