"""Debian's Chromium driven by Playwright, for the tests of pages as a person sees them.
Never a downloaded browser: the Debian package, installed here when it is missing."""
import contextlib
import os
import shutil
import subprocess

import pytest

from tests.support import ROOT

CHROMIUM = "/usr/bin/chromium"
OUTPUT = os.path.join(ROOT, "test-output")  # screenshots, kept by CI as artifacts
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def ensure_chromium():
    """The test command installs Debian's Chromium when it is missing (CI runs as root)."""
    if os.path.exists(CHROMIUM):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, stdout=subprocess.DEVNULL)
    assert os.path.exists(CHROMIUM), "apt-get install chromium did not provide /usr/bin/chromium"


@contextlib.contextmanager
def chromium():
    """A launched browser; screenshots go to OUTPUT."""
    from playwright.sync_api import sync_playwright

    ensure_chromium()
    os.makedirs(OUTPUT, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def desktop_page():
    """A 1280x800 tab with a 30 s default timeout."""
    with chromium() as browser:
        tab = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        tab.set_default_timeout(30_000)
        yield tab
