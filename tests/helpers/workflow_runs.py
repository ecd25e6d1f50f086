"""Running the Snakemake workflow from tests: a run folder, the snakemake command, plans, digests.

A run folder holds what a checkout contributes to a run (Snakefile, workflow/, config/, envs/)
plus an `overlay.yaml` config; results/, resources/, logs/ and .snakemake/ appear when it runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHECKOUT_FILES = ("Snakefile", "workflow", "config", "envs")
# Snakemake's own bookkeeping that a dry run or --lint writes by design: the file-status cache
# that `--trust-io-cache` reads, the (empty) lock folder and one log per --lint. Everything else,
# .snakemake/metadata included, must stay as it is.
SNAKEMAKE_SCRATCH = (".snakemake/iocache", ".snakemake/locks", ".snakemake/log")

SMOKE_EXPERIMENT = "tiny_smoke"
# The tiny CPU recipe, sized for 4 identities: one epoch of batches of 8.
SMOKE_EXPERIMENT_FILE = {
    "description": "TBPS-CLIP simplified preset, tiny CPU model, one short epoch (workflow tests)",
    "inherit": ["tiny_tbps_clip_simplified"],
    "data": {"batch_size": 8, "num_workers": 0},
    "optim": {"epochs": 1},
    "eval": {"batch_size": 32},
}
# A tiny dataset, no augmentation model, one shard per split: the whole pipeline in about 40 s.
SMOKE_OVERLAY = {
    "datasets": {
        "synthetic": {
            "raw": "resources/raw/synthetic",
            "format": "cuhk-pedes",
            "synth_ids": 4,
            "synth_seed": 0,
            "experiments": [SMOKE_EXPERIMENT],
            "augment_backend": "none",
        }
    },
    "shards": {"max_samples": 1000},
}
METRICS = "results/synthetic/metrics.parquet"
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def make_run_folder(folder: Path, overlay: dict | None = None) -> Path:
    """A fresh run folder: the checkout's workflow files, the smoke experiment and `overlay.yaml`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CHECKOUT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)
    experiment = folder / "config" / "experiments" / f"{SMOKE_EXPERIMENT}.yaml"
    experiment.write_text(yaml.safe_dump(SMOKE_EXPERIMENT_FILE, sort_keys=False))
    (folder / "overlay.yaml").write_text(yaml.safe_dump(SMOKE_OVERLAY if overlay is None else overlay))
    return folder


def copy_run(source: Path, destination: Path) -> Path:
    """A copy of a run folder with every modification time kept (as `cp -a` or `rsync -a` do)."""
    shutil.copytree(source, destination, symlinks=True)
    return destination


def snakemake(folder: Path, *args: str, configfiles: tuple[str, ...] = (), check: bool = True,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """`snakemake ARGS` in ``folder`` with the local profile, 2 cores, ``overlay.yaml`` and then
    ``configfiles`` (they come last: --configfile takes every word after it)."""
    cmd = [sys.executable, "-m", "snakemake", *args, "--profile", "workflow/profiles/default",
           "--cores", "2", "--configfile", "overlay.yaml", *configfiles]
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{(result.stdout + result.stderr)[-4000:]}"
    return result


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def planned_jobs(out: str) -> dict[str, set[str]]:
    """rule -> outputs of the jobs that Snakemake's log lists (planned by -n, or run)."""
    plan: dict[str, set[str]] = {}
    rule = None
    for line in out.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            rule = header.group(1)
            plan.setdefault(rule, set())
        elif rule and line.startswith("    output: "):
            plan[rule].update(part.strip() for part in line[len("    output: "):].split(","))
            rule = None
    return plan


def tree_digest(folder: Path, skip: tuple[str, ...] = SNAKEMAKE_SCRATCH) -> dict[str, tuple[str, int]]:
    """path -> (sha256, mtime in ns) of every file and link under ``folder`` (folders: ("dir", 0)),
    outside ``skip``."""
    digest = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if any(relative == s or relative.startswith(s + "/") for s in skip):
            continue
        if path.is_dir() and not path.is_symlink():
            digest[relative] = ("dir", 0)
            continue
        content = str(path.readlink()).encode() if path.is_symlink() else path.read_bytes()
        digest[relative] = (hashlib.sha256(content).hexdigest(), path.lstat().st_mtime_ns)
    return digest


REPORT_VARIABLES = re.compile(r"^\s*var (workflow_desc|results|categories) = ([{\"].*);$", re.M)


def build_report(folder: Path, out: Path) -> dict:
    """`snakemake --report OUT` for a finished run (writes nothing in the run but Snakemake's own
    log), and what the report holds: `workflow_desc` (the landing page's HTML), `results` (path ->
    name, labels, caption, mime_type, data_uri, ...) and `categories` (category -> subcategory ->
    paths), read from the JSON the page's script starts from."""
    snakemake(folder, "--report", str(out))
    found = {name: json.loads(value) for name, value in REPORT_VARIABLES.findall(out.read_text())}
    assert set(found) == {"workflow_desc", "results", "categories"}, f"{out}: found only {sorted(found)}"
    return found
