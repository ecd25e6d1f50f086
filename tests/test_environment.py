"""The locked environment: the lock against pyproject.toml, the conda environment, setup-env's plan."""

import ast
import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "locks" / "py311-linux-x86_64.txt"
# The platform the lock is resolved for (scripts/lock: --python-version 3.11, x86_64-manylinux_2_28).
LOCK_PLATFORM = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython"}
# Packages only the CUDA builds of torch need (left out by `setup-env --cpu`).
CUDA_ONLY = re.compile(r"^(triton|nvidia-.+|cuda-.+)$")
on_lock_platform = pytest.mark.skipif(
    sys.version_info[:2] != (3, 11) or platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="the lock covers CPython 3.11 on Linux x86_64 only")


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    """``{canonical name: (version, sha256 hashes)}``, read block by block."""
    entries = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text(encoding="utf-8")):
        pin = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+) \\", block)
        if pin:
            entries[canonicalize_name(pin[1])] = (pin[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def declared_requirements() -> dict[str, list[Requirement]]:
    """Runtime dependencies and each extra, without the project's references to itself."""
    project = pyproject()
    groups = {"runtime": project["dependencies"], **project["optional-dependencies"]}
    return {group: [r for r in map(Requirement, reqs) if r.name != project["name"]] for group, reqs in groups.items()}


# --------------------------------------------------------------------------- the lock


def test_every_declared_requirement_is_locked_at_a_version_it_allows():
    locked = lock_entries()
    problems = []
    for group, requirements in declared_requirements().items():
        for req in requirements:
            if req.marker is not None and not req.marker.evaluate(LOCK_PLATFORM):
                continue
            name = canonicalize_name(req.name)
            if name not in locked:
                problems.append(f"{req} ({group}) is not in the lock")
            elif not req.specifier.contains(locked[name][0], prereleases=True):
                problems.append(f"{req} ({group}) but the lock has {locked[name][0]}")
    assert not problems, f"{LOCK.name} disagrees with pyproject.toml (run `bash scripts/lock`): {problems}"


def test_every_lock_entry_is_an_exact_pin_with_hashes():
    locked = lock_entries()
    assert len(locked) > 50 and {"torch", "open-clip-torch", "snakemake", "pytest", "uv"} <= set(locked)
    assert not [name for name, (_, hashes) in locked.items() if not hashes]
    pins = [line for line in LOCK.read_text(encoding="utf-8").splitlines() if re.match(r"[A-Za-z0-9]", line)]
    assert len(pins) == len(locked), "every top-level line of the lock is a name==version pin"


def test_the_lock_respects_its_resolution_constraints():
    locked = lock_entries()
    for line in (ROOT / "locks" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert req.specifier.contains(locked[canonicalize_name(req.name)][0]), line


def test_snakemake_is_a_workflow_extra_that_the_package_never_imports():
    extras = declared_requirements()
    assert not [r for r in extras["runtime"] if r.name.startswith("snakemake")]
    assert {r.name for r in extras["workflow"]} == {"snakemake", "snakemake-executor-plugin-slurm"}
    importers = []
    for path in (ROOT / "tbps").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            importers += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "snakemake"]
    assert not importers


# --------------------------------------------------------------------------- the conda environment

# conda-forge names that differ from the PyPI ones.
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def test_conda_environment_pins_the_lock_from_conda_forge_and_installs_the_checkout():
    env = yaml.safe_load((ROOT / "envs" / "tbps.yaml").read_text(encoding="utf-8"))
    assert env["channels"] == ["conda-forge", "nodefaults"]
    locked = {name: version for name, (version, _) in lock_entries().items()}
    conda_specs = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {}
    for spec in conda_specs:
        name, _, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:(?:==|=)(\S+))?", spec).group(1, 0, 2)
        if name == "python":
            assert version == "3.11", "the lock is resolved for Python 3.11"
        elif name != "pip":
            assert spec == f"{name}=={version}", f"{spec}: pin an exact version (==)"
            listed[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = version
    editable = [line for line in pip_lines if line.startswith("-e ")]
    for line in pip_lines:
        if line not in editable:
            req = Requirement(line)
            assert str(req.specifier).startswith("=="), f"{line}: pin an exact version (==)"
            listed[canonicalize_name(req.name)] = str(req.specifier)[2:]
    assert {name: locked.get(name) for name in listed} == listed, "envs/tbps.yaml must pin the lock's versions"
    # Complete: every runtime and back-translation dependency; Snakemake stays outside.
    groups = declared_requirements()
    needed = {canonicalize_name(r.name) for r in groups["runtime"] + groups["translate"]}
    assert needed <= set(listed), f"missing from envs/tbps.yaml: {sorted(needed - set(listed))}"
    assert not [name for name in listed if name.startswith("snakemake")]
    # conda runs pip in the folder of the environment file, which Snakemake copies to
    # <working directory>/.snakemake/conda/<hash>.yaml: the install line must lead back to the checkout.
    assert len(editable) == 1
    snakemake_env_folder = ROOT / ".snakemake" / "conda"
    target = (snakemake_env_folder / editable[0].removeprefix("-e ").strip()).resolve()
    assert target == ROOT and tomllib.loads((target / "pyproject.toml").read_text())["project"]["name"] == "tbps"


# --------------------------------------------------------------------------- scripts/setup-env


def setup_env(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup-env"), "--dry-run", *args], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=60)


@on_lock_platform
def test_setup_env_installs_exactly_the_lock_then_the_package_without_dependencies():
    run = setup_env("--dev")
    assert run.returncode == 0, run.stderr
    commands = [line[2:] for line in run.stdout.splitlines() if line.startswith("+ ")]
    pip = ".venv/bin/python -m pip --disable-pip-version-check"
    assert f"{pip} install --quiet --require-hashes -r {LOCK.relative_to(ROOT)}" in commands
    assert f"{pip} install --quiet --no-deps --no-build-isolation -e ." in commands
    assert commands[-2:] == [f"{pip} check", ".venv/bin/python -m tbps env"]
    assert not [c for c in commands if "download.pytorch.org" in c or " uv " in c]


@on_lock_platform
def test_setup_env_cpu_takes_torch_from_the_cpu_index_and_the_rest_from_the_lock():
    run = setup_env("--cpu")
    assert run.returncode == 0, run.stderr
    listed = re.search(r"without the CUDA packages: (\d+) packages: (.*)", run.stdout)
    names = set(listed[2].split())
    locked = lock_entries()
    expected = {n for n in locked if n not in ("torch", "torchvision") and not CUDA_ONLY.match(n)}
    assert names == expected and int(listed[1]) == len(expected)
    # What the CPU wheels of torch still need comes from the lock.
    assert {"sympy", "networkx", "filelock", "jinja2", "fsspec", "typing-extensions"} <= names
    torch_line = next(line for line in run.stdout.splitlines()
                      if line.startswith("+ ") and "download.pytorch.org/whl/cpu" in line)
    assert f"torch=={locked['torch'][0]} torchvision=={locked['torchvision'][0]}" in torch_line
    assert "--no-deps" in torch_line


def test_setup_env_refuses_unknown_options():
    run = setup_env("--gpu")
    assert run.returncode == 2 and "unknown option --gpu" in run.stderr
