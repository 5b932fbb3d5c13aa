"""Debian's chromium, headless, driven by Selenium through Debian's chromedriver (both given by
path: nothing is downloaded), with helpers for the UI tests: screenshots at two sizes and an
axe-style check that every form control has a label."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.services.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
DESKTOP = (1280, 800)
PHONE = (390, 844)

# Controls that a screen reader could not name: no <label for>, no wrapping <label>, no aria-label(ledby).
UNLABELLED_JS = """
const bad = [];
for (const el of document.querySelectorAll('input, select, textarea, button')) {
  if (el.type === 'hidden') continue;
  if (el.tagName === 'BUTTON' && el.textContent.trim()) continue;
  const byFor = el.id && document.querySelector('label[for="' + CSS.escape(el.id) + '"]');
  if (byFor || el.closest('label') || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) continue;
  bad.push(el.outerHTML.slice(0, 120));
}
for (const img of document.querySelectorAll('img:not([alt]), svg:not([aria-hidden="true"])')) {
  if (img.tagName.toLowerCase() === 'svg' && (img.querySelector('title') || img.getAttribute('aria-label'))) continue;
  bad.push(img.outerHTML.slice(0, 120));
}
const ids = {};
for (const el of document.querySelectorAll('[id]')) { ids[el.id] = (ids[el.id] || 0) + 1; }
for (const [id, n] of Object.entries(ids)) { if (n > 1) bad.push('duplicate id ' + id); }
if (!document.documentElement.lang) bad.push('no lang on <html>');
if (!document.querySelector('h1')) bad.push('no <h1>');
return bad;
"""


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"needs Debian's chromium and chromium-driver ({', '.join(missing)} missing)")


class Browser:
    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.shots = shots

    def get(self, url: str) -> None:
        self.driver.get(url)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str = "body") -> str:
        return str(self.find(css).text)

    def wait_text(self, css: str, needle: str, timeout: float = 20) -> str:
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

        def seen() -> str:
            text = self.text(css)
            return text if needle in text else ""

        return wait_for(
            seen,
            timeout,
            f"{needle!r} to show in {css}",
            interval=0.02,
            max_interval=0.1,
            ignore=(NoSuchElementException, StaleElementReferenceException),
        )

    def fill(self, css: str, value: str) -> None:
        el = self.find(css)
        el.clear()
        el.send_keys(value)

    def choose(self, css: str, visible_text: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.find(css)).select_by_visible_text(visible_text)

    def submit(self, css: str) -> None:
        """Press a button with the keyboard (Enter), as a keyboard user would."""
        from selenium.webdriver.common.keys import Keys

        button = self.find(css)
        self.driver.execute_script("arguments[0].focus()", button)
        button.send_keys(Keys.ENTER)

    def unlabelled(self) -> list[str]:
        return list(self.driver.execute_script(UNLABELLED_JS))

    def overflows(self) -> bool:
        """Whether the page is wider than the window (tables scroll inside their own box instead)."""
        return bool(self.driver.execute_script(
            "return document.documentElement.scrollWidth > window.innerWidth + 1"
        ))

    def screenshot(self, name: str) -> list[Path]:
        """The page at desktop and phone size (full height); returns the files."""
        saved = []
        for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
            self.driver.set_window_size(width, height)
            full = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
            self.driver.set_window_size(width, min(max(height, full), 4000))
            path = self.shots / f"{name}-{label}.png"
            self.driver.save_screenshot(str(path))
            saved.append(path)
        self.driver.set_window_size(*DESKTOP)
        return saved


@contextmanager
def chromium(tmp_path: Path) -> Iterator[Browser]:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    shots = Path(os.environ.get("BUILDSYS_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {shots}")
    try:
        yield Browser(driver, shots)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
