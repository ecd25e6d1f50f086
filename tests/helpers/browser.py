"""Headless Chromium for tests that look at HTML pages the way a reader does (the Snakemake report,
the search page): a screenshot, the DOM after the page's scripts ran, pixel statistics.

Chromium comes from Debian's `chromium` package (.ci/run installs it:
`apt-get install -y --no-install-recommends chromium`). `require_chromium()` skips a test with the
reason when it is missing, and fails it instead under CI (CI=true), as tests/test_slurm.py does
for Slurm. `TBPS_CHROMIUM` names another binary.

Pages that build themselves with JavaScript (the Snakemake report is a React app) are given a
virtual time budget: Chromium runs the page's scripts and timers as if that many milliseconds
had passed before it takes the screenshot or dumps the DOM, so what comes back is the rendered
page, not its loading screen.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get install -y --no-install-recommends chromium"
VIRTUAL_TIME_MS = 15_000
TIMEOUT_S = 120


def find_chromium() -> str | None:
    """The Chromium binary: $TBPS_CHROMIUM, else the first of CANDIDATES on PATH."""
    configured = os.environ.get("TBPS_CHROMIUM")
    if configured:
        return shutil.which(configured)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The binary; skips the calling test outside CI when there is none, fails it under CI."""
    binary = find_chromium()
    if binary is None:
        message = f"headless Chromium is not installed (Debian/Ubuntu: {INSTALL_HINT}; or set TBPS_CHROMIUM)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
        pytest.skip(message)
    return binary


def _run(binary: str, url: str, *args: str, width: int, height: int, virtual_time_ms: int,
         timeout: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="tbps-chromium-") as profile:
        cmd = [binary, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", "--mute-audio", f"--user-data-dir={profile}",
               f"--window-size={width},{height}", f"--virtual-time-budget={virtual_time_ms}", *args, url]
        if os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
        # Its own session, so a timeout ends the browser's helper processes too (by process group).
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError(f"{' '.join(cmd)} did not finish within {timeout} s") from None
    result = subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result


def _url(page: Path | str) -> str:
    """A URL as it is; a file path as a file:// URL."""
    if isinstance(page, str) and "://" in page:
        return page
    return Path(page).resolve().as_uri()


def screenshot(page: Path | str, out: Path, *, width: int = 1400, height: int = 1000,
               virtual_time_ms: int = VIRTUAL_TIME_MS, timeout: int = TIMEOUT_S) -> Path:
    """A PNG of ``page`` (a file or a URL) as a ``width`` x ``height`` window shows it."""
    binary = require_chromium()
    out = Path(out)
    out.unlink(missing_ok=True)
    _run(binary, _url(page), f"--screenshot={out}", width=width, height=height,
         virtual_time_ms=virtual_time_ms, timeout=timeout)
    assert out.is_file(), f"Chromium wrote no screenshot to {out}"
    return out


def rendered_dom(page: Path | str, *, width: int = 1400, height: int = 1000,
                 virtual_time_ms: int = VIRTUAL_TIME_MS, timeout: int = TIMEOUT_S) -> str:
    """The page's DOM as HTML after its scripts ran (what the screenshot shows)."""
    binary = require_chromium()
    return _run(binary, _url(page), "--dump-dom", width=width, height=height,
                virtual_time_ms=virtual_time_ms, timeout=timeout).stdout


@dataclass(frozen=True)
class PixelStats:
    """What a screenshot holds: blank pages have one colour and no spread."""

    width: int
    height: int
    colours: int  # distinct RGB values
    std: float  # standard deviation of the grey levels
    dark_fraction: float  # pixels darker than 128 (text, lines, dark panels)

    def assert_not_blank(self, *, min_colours: int = 16, min_std: float = 10.0, min_dark: float = 0.005) -> None:
        assert self.colours >= min_colours and self.std >= min_std and self.dark_fraction >= min_dark, self


def pixel_stats(png: Path, box: tuple[int, int, int, int] | None = None) -> PixelStats:
    """Statistics of a PNG, or of the ``box`` (left, top, right, bottom) of it."""
    from PIL import Image

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        if box is not None:
            rgb = rgb.crop(box)
        pixels = np.asarray(rgb)
    grey = pixels.mean(axis=2)
    return PixelStats(width=pixels.shape[1], height=pixels.shape[0],
                      colours=len(np.unique(pixels.reshape(-1, 3), axis=0)), std=float(grey.std()),
                      dark_fraction=float((grey < 128).mean()))
