"""What a config change reruns: exactly the affected stages, planned by `snakemake -n`.

One small synthetic data build (synth -> prepare -> augment -> shards of train and val) with the
local profile (workflow/profiles/default), then dry runs with config overlays. Snakemake notices
config changes through the `params` rerun trigger (the values are recorded per output in
.snakemake/metadata); the downstream stages then follow through `mtime`/`input`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
TARGETS = [f"results/synthetic/shards/{split}/manifest.json" for split in ("train", "val")]
# A tiny dataset, no augmentation model, one shard per split: the build takes seconds.
OVERLAY = {
    "datasets": {
        "synthetic": {
            "raw": "resources/raw/synthetic",
            "format": "cuhk-pedes",
            "synth_ids": 4,
            "synth_seed": 0,
            "experiments": ["tiny_tbps_clip"],
            "augment_backend": "none",
        }
    },
    "shards": {"max_samples": 1000},
}
ALL_TRIGGERS = ["mtime", "params", "input", "software-env", "code"]
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def _snakemake(workdir: Path, *args: str, configfiles=(), targets=TARGETS, timeout=240) -> str:
    cmd = [
        sys.executable, "-m", "snakemake", *targets, *args,
        "--profile", "workflow/profiles/default", "--cores", "2",
        "--configfile", "overlay.yaml", *configfiles,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-4000:]}"
    return out


def _planned(out: str) -> dict[str, set[str]]:
    """rule -> outputs of the jobs a dry run would execute."""
    plan: dict[str, set[str]] = {}
    rule = None
    for line in out.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            rule = header.group(1)
            plan.setdefault(rule, set())
        elif rule and line.startswith("    output: "):
            plan[rule].update(part.strip() for part in line[len("    output: ") :].split(","))
            rule = None
    return plan


def _dry_run(workdir: Path, change: dict | None = None, triggers=ALL_TRIGGERS, targets=TARGETS):
    """(rule -> planned outputs, Snakemake's output) of a dry run with `change` over the overlay."""
    configfiles = []
    if change is not None:
        (workdir / "change.yaml").write_text(yaml.safe_dump(change))
        configfiles = ["change.yaml"]
    out = _snakemake(
        workdir, "--dry-run", "--rerun-triggers", *triggers, configfiles=configfiles, targets=targets
    )
    return _planned(out), out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A workflow copy with synthetic train/val shards built for the small overlay."""
    workdir = tmp_path_factory.mktemp("reruns")
    shutil.copy2(REPO / "Snakefile", workdir / "Snakefile")
    for folder in ("workflow", "config", "envs"):
        shutil.copytree(REPO / folder, workdir / folder)
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    _snakemake(workdir)
    for target in TARGETS:
        assert (workdir / target).is_file()
    return workdir


def test_unchanged_config_plans_nothing(built):
    plan, out = _dry_run(built)
    assert plan == {}
    assert "Nothing to be done" in out


@pytest.mark.parametrize(
    "change",
    [
        {"augment": {"seed": 1}},
        {"datasets": {"synthetic": {"augment_backend": "synonyms"}}},
    ],
    ids=["augment.seed", "augment_backend"],
)
def test_augment_change_reruns_augment_and_train_shards_only(built, change):
    plan, out = _dry_run(built, change)
    assert plan == {
        "augment": {"results/synthetic/augment/captions_aug.parquet"},
        "shard": {
            "results/synthetic/shards/train/shard-000000.tar",
            "results/synthetic/shards/train/shard-000000.json",
        },
        "shard_manifest": {"results/synthetic/shards/train/manifest.json"},
    }, out
    assert "Params have changed since last execution" in out


def test_augment_change_is_noticed_by_the_params_trigger(built):
    # Every trigger but params: the same change goes unnoticed.
    plan, out = _dry_run(built, {"augment": {"seed": 1}}, [t for t in ALL_TRIGGERS if t != "params"])
    assert plan == {}, out


def test_shard_size_change_replans_every_split_and_nothing_upstream(built):
    plan, out = _dry_run(built, {"shards": {"max_samples": 5}})
    # The plans are checkpoints: the shards they will name are only known once they ran,
    # so a dry run lists the plans and the manifests (the shard jobs appear in the real run).
    assert plan == {
        "shard_plan": {f"results/synthetic/shards/{split}/{name}" for split in ("train", "val")
                       for name in ("plan.json", ".shards-check")},
        "shard_manifest": {f"results/synthetic/shards/{split}/manifest.json" for split in ("train", "val")},
    }, out


def test_deleted_shard_reruns_that_shard_and_its_manifest_only(built):
    shard = "results/synthetic/shards/val/shard-000000.tar"
    aside = built / "shard.aside"
    check = built / "results/synthetic/shards/val/.shards-check"
    check_bytes, check_stat = check.read_bytes(), check.stat()
    (built / shard).rename(aside)  # a rename keeps the mtime: putting it back restores the build
    try:
        # The split's .shards-check marker is rewritten before the DAG is built, so the manifest
        # reruns and brings back exactly the missing shard; the train split and everything
        # upstream stay as they are.
        plan, out = _dry_run(built)
        assert plan == {
            "shard": {shard, shard.replace(".tar", ".json")},
            "shard_manifest": {"results/synthetic/shards/val/manifest.json"},
        }, out
        assert "shard-000000.tar" in check.read_text()
    finally:
        aside.rename(built / shard)
        check.write_bytes(check_bytes)
        os.utime(check, ns=(check_stat.st_atime_ns, check_stat.st_mtime_ns))
