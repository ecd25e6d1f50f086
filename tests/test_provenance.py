"""Provenance of an environment: tbps.provenance.environment() and `tbps env`."""

import hashlib
import json
import platform
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tbps import __version__, provenance
from tbps.cli import main

LOCK = Path(__file__).resolve().parent.parent / provenance.LOCK_FILE


@pytest.fixture
def fresh_git_state():
    provenance.git_state.cache_clear()
    yield
    provenance.git_state.cache_clear()


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)


def test_environment_record_describes_this_process():
    env = provenance.environment()
    assert list(env) == list(provenance.FIELDS)
    assert all(isinstance(env[k], kind) for k, kind in provenance.FIELDS.items())
    assert env["python_version"] == platform.python_version() and env["torch_version"] == str(torch.__version__)
    assert env["cuda_version"] == (torch.version.cuda or "cpu")
    assert env["gpu_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert (env["gpu_model"] == "none") == (env["gpu_count"] == 0)
    assert env["lock_sha256"] == hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert env["code_version"] == provenance.code_version() and env["code_version"].startswith(__version__)
    if env["git_commit"] != provenance.UNKNOWN:
        assert re.fullmatch(r"[0-9a-f]{40}", env["git_commit"]) and env["git_tree"] in ("clean", "dirty")
        assert env["code_version"].startswith(f"{__version__}+g{env['git_commit'][:12]}")


def test_git_state_of_a_checkout_clean_then_dirty(tmp_path, monkeypatch, fresh_git_state):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-q", "-m", "one")
    (tmp_path / "untracked.txt").write_text("results are not code\n")
    monkeypatch.setattr(provenance, "source_root", lambda: tmp_path.resolve())
    commit, tree = provenance.git_state()
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and tree == "clean"
    assert provenance.code_version() == f"{__version__}+g{commit[:12]}"
    (tmp_path / "a.py").write_text("x = 2\n")
    provenance.git_state.cache_clear()
    assert provenance.git_state() == (commit, "dirty")
    assert provenance.code_version() == f"{__version__}+g{commit[:12]}.dirty"


def test_git_state_is_unknown_outside_a_checkout_or_without_git(tmp_path, monkeypatch, fresh_git_state):
    # An installed copy that happens to sit inside another repository is not that repository's code.
    git(tmp_path, "init", "-q")
    installed = tmp_path / "venv" / "site-packages"
    installed.mkdir(parents=True)
    monkeypatch.setattr(provenance, "source_root", lambda: installed.resolve())
    assert provenance.git_state() == ("unknown", "unknown") and provenance.code_version() == __version__
    provenance.git_state.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert provenance.git_state() == ("unknown", "unknown")


def test_lock_drift_names_installed_packages_at_other_versions():
    pins = provenance.lock_pins("pytest==0.0.1 \\\n    --hash=sha256:00\nnot-a-real-package-x==1.0\n")
    assert pins == {"pytest": "0.0.1", "not-a-real-package-x": "1.0"}
    assert provenance.lock_drift(pins) == f"pytest {pytest.__version__} (lock 0.0.1)"
    assert provenance.lock_drift({"pytest": pytest.__version__}) == ""


def test_cudnn_versions_are_decoded():
    assert provenance._cudnn_version(92400) == "9.24.0" and provenance._cudnn_version(8902) == "8.9.2"
    assert provenance._cudnn_version(None) == "none"


def test_tbps_env_prints_the_record(capsys):
    assert main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    env = provenance.environment()
    assert [line.split()[0] for line in lines] == list(env)
    printed = dict(line.split(None, 1) for line in lines)
    assert printed["lock_sha256"] == env["lock_sha256"] and printed["gpu_count"] == str(env["gpu_count"])
    assert main(["env", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == env
