"""What produced a result: code version and data/config hashes recorded in every metrics row."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from tbps import __version__


@functools.cache
def code_version() -> str:
    """``<package version>+g<commit>`` (``.dirty`` with uncommitted changes), or the version alone
    when the code does not run from a git checkout (an installed wheel, a cluster copy)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "tbps"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
