"""A real headless browser for the search page tests: Debian's `chromium`, run as a command.

`.ci/run` installs the package. Outside CI a machine without it skips the browser tests with the
reason; with CI=true a missing browser fails them (the page must be checked somewhere).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 120


def require_chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = "no headless Chromium (Debian: apt-get install -y --no-install-recommends chromium)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def _run(browser: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def screenshot(browser: str, page: Path, out: Path, size: tuple[int, int], budget_ms: int = 5000) -> Path:
    """A PNG of ``page`` rendered in a ``size`` (width, height) window."""
    done = _run(browser, f"--screenshot={out}", f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={budget_ms}", page.resolve().as_uri())
    assert out.is_file(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return out


def dump_dom(browser: str, page: Path, budget_ms: int = 5000) -> str:
    """The page's DOM after it loaded (and its scripts ran), serialised."""
    done = _run(browser, "--dump-dom", f"--virtual-time-budget={budget_ms}", page.resolve().as_uri())
    assert done.returncode == 0 and "<html" in done.stdout, f"exit {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout
