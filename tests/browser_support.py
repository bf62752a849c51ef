"""A headless Debian Chromium driven by selenium through /usr/bin/chromedriver (nothing downloads a browser).

The ``browser`` fixture is one Chromium per test module (starting one costs about a second); a test
that uses it is marked ``browser`` by conftest.py. Without chromium or chromedriver the test is
skipped, unless CI=true: there a missing browser is a failure (.ci/browser.sh installs it).
"""

import functools
import os
import shutil
import tempfile

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1400, 1000)
PHONE_WINDOW = (390, 844)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium_binary() -> str | None:
    return next((path for path in CHROMIUM_CANDIDATES if os.access(path, os.X_OK)), None)


def start_chromium(user_data_dir: str, size=WINDOW):
    """A new headless Chromium with a fresh profile in ``user_data_dir``; None when there is no browser."""
    binary = chromium_binary()
    if binary is None or not os.access(CHROMEDRIVER, os.X_OK):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


@functools.cache
def screenshot_dir() -> str:
    """$OPEVA_CI_LOG_DIR/screenshots (CI keeps it), else a temp dir made on first use (one per run)."""
    base = os.environ.get("OPEVA_CI_LOG_DIR") or tempfile.mkdtemp(prefix="opeva-screens-")
    path = os.path.join(base, "screenshots")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    driver = start_chromium(str(profile))
    if driver is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and /usr/bin/chromedriver are needed under CI (.ci/browser.sh installs them)")
        pytest.skip("chromium or /usr/bin/chromedriver not installed")
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
