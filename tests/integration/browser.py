"""A real headless Chromium for tests, driven by selenium through chromium-driver.

Debian's ``chromium`` and ``chromium-driver`` are installed with apt-get when missing,
the way the local stack installs its services (``resultlog/devstack/apt.py``), so a
fresh machine runs the browser tests without a step by hand.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from resultlog.devstack import apt
from resultlog.settings import Settings

PACKAGES = {"chromium": "chromium", "chromedriver": "chromium-driver"}


def ensure_chromium(settings: Settings) -> tuple[str, str]:
    """Paths of the chromium binary and of chromedriver, installing the packages first
    if either is missing."""
    missing = [pkg for exe, pkg in PACKAGES.items() if shutil.which(exe) is None]
    if missing:
        log = Path(settings.dev_dir) / "logs" / "apt-chromium.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        apt.install(missing, log_path=log, out=print)
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium / chromedriver still missing after apt-get install"
    return chromium, driver


def headless_chromium(settings: Settings) -> webdriver.Chrome:
    binary, driver = ensure_chromium(settings)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tempfile.mkdtemp(prefix='resultlog-chromium-')}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
