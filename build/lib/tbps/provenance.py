"""What produced a result: the code, the software environment and the hardware.

``environment()`` is the one record of it: training stores it in every checkpoint, evaluation
adds it to every metrics row (one column per field, ``FIELDS``), ``tbps env`` prints it.
``code_version()`` is its short form (package version + commit), also a field.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

from tbps import __version__

UNKNOWN = "unknown"
# Relative to the checkout; scripts/lock writes it, scripts/setup-env installs it.
LOCK_FILE = "locks/py311-linux-x86_64.txt"
# A git query that hangs (a network file system, a huge tree) must not hold up training.
_GIT_TIMEOUT_S = 5

# Every field of environment(), in order, with its type: the provenance columns of a metrics row.
FIELDS: dict[str, type] = {
    "code_version": str,        # <package version>+g<12 hex of the commit>[.dirty], or the version alone
    "git_commit": str,          # full commit hash of the checkout the package runs from, or "unknown"
    "git_tree": str,            # "clean", "dirty" (tracked files differ from the commit) or "unknown"
    "python_version": str,
    "torch_version": str,       # as torch reports it: a CPU-only wheel shows "+cpu"
    "cuda_version": str,        # the CUDA torch was built with, "rocm <v>", or "cpu"
    "cudnn_version": str,       # "cpu" without CUDA, "none" when torch finds no cuDNN
    "open_clip_version": str,
    "webdataset_version": str,
    "gpu_model": str,           # visible GPU model(s), "; "-separated when they differ, or "none"
    "gpu_count": int,           # visible GPUs on this node
    "lock_sha256": str,         # of the lock file in the checkout, or "unknown" outside a checkout
    "lock_drift": str,          # installed packages whose version differs from the lock ("" = none)
}


def source_root() -> Path:
    """The folder holding the ``tbps`` package: the checkout root when running from one."""
    return Path(__file__).resolve().parent.parent


def _git(root: Path, *args: str) -> str:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not refresh (write) the index of the checkout.
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=_GIT_TIMEOUT_S, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout.strip()


@functools.cache
def git_state() -> tuple[str, str]:
    """(commit, "clean" | "dirty" | "unknown") of the checkout the package runs from; ("unknown",
    "unknown") for an installed copy, no git, or a git that does not answer in time."""
    root = source_root()
    try:
        # An installed copy inside some other repository (a .venv in a checkout) is not that checkout.
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root:
            return UNKNOWN, UNKNOWN
        commit = _git(root, "rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN, UNKNOWN
    try:
        changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--ignore-submodules")
    except (OSError, subprocess.SubprocessError):
        return commit, UNKNOWN
    return commit, "dirty" if changed else "clean"


def code_version() -> str:
    """``<package version>+g<commit>`` (``.dirty`` with uncommitted changes to tracked files), or
    the version alone when the code does not run from a git checkout (a wheel, a cluster copy)."""
    commit, tree = git_state()
    if commit == UNKNOWN:
        return __version__
    return f"{__version__}+g{commit[:12]}{'.dirty' if tree == 'dirty' else ''}"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file written by scripts/lock (``name[extras]==version`` lines)."""
    pins = re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", text, re.M)
    return {_canonical(m[1]): m[2] for m in pins}


def lock_drift(pins: dict[str, str]) -> str:
    """Installed distributions whose version is not the locked one, e.g. ``"torch 2.14.1+cpu (lock
    2.14.1)"``; packages of the lock that are not installed are not drift (an environment may hold
    part of the lock, as the rules' conda environment does)."""
    installed: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            installed.setdefault(_canonical(name), dist.version)  # the first on sys.path is the one imported
    return "; ".join(f"{name} {installed[name]} (lock {version})" for name, version in sorted(pins.items())
                     if name in installed and installed[name] != version)


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cudnn_version(encoded: int | None) -> str:
    if encoded is None:
        return "none"
    # cuDNN 9 encodes major*10000 + minor*100 + patch, earlier releases major*1000 + minor*100 + patch.
    major, rest = divmod(encoded, 10000 if encoded >= 10000 else 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


@functools.cache
def _environment() -> dict[str, str | int]:
    import torch

    commit, tree = git_state()
    lock = source_root() / LOCK_FILE
    if lock.is_file():
        text = lock.read_bytes()
        lock_sha, drift = hashlib.sha256(text).hexdigest(), lock_drift(lock_pins(text.decode("utf-8")))
    else:
        lock_sha = drift = UNKNOWN
    if torch.version.cuda:
        cuda, cudnn = torch.version.cuda, _cudnn_version(torch.backends.cudnn.version())
    elif getattr(torch.version, "hip", None):
        cuda, cudnn = f"rocm {torch.version.hip}", "none"
    else:
        cuda = cudnn = "cpu"
    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = "; ".join(sorted({torch.cuda.get_device_name(i) for i in range(gpu_count)})) or "none"
    return {
        "code_version": code_version(), "git_commit": commit, "git_tree": tree,
        "python_version": platform.python_version(), "torch_version": str(torch.__version__),
        "cuda_version": cuda, "cudnn_version": cudnn, "open_clip_version": _dist_version("open_clip_torch"),
        "webdataset_version": _dist_version("webdataset"), "gpu_model": gpus, "gpu_count": gpu_count,
        "lock_sha256": lock_sha, "lock_drift": drift,
    }


def environment() -> dict[str, str | int]:
    """The provenance record (``FIELDS``) of this process, computed once."""
    return dict(_environment())
