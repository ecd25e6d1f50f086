"""What reruns, and what a dry run leaves behind, on a copy of a finished synthetic run.

Config changes are planned with `snakemake -n` and config overlays: Snakemake notices them
through the `params` rerun trigger (the values are recorded per output in .snakemake/metadata);
the downstream stages then follow through `mtime`/`input`. A deleted shard is rebuilt by a real
run. Dry runs and --lint must not change a file of the run, and a run copied to another folder
must plan nothing there (no absolute path in the DAG).
"""

from __future__ import annotations

import os

import pytest
import yaml
from helpers.workflow_runs import (
    METRICS,
    copy_run,
    output_of,
    planned_jobs,
    snakemake,
    tree_digest,
)

pytestmark = pytest.mark.timeout(600)

TARGETS = [f"results/synthetic/shards/{split}/manifest.json" for split in ("train", "val")]
ALL_TRIGGERS = ["mtime", "params", "input", "software-env", "code"]


def _dry_run(folder, change: dict | None = None, triggers=ALL_TRIGGERS, targets=TARGETS):
    """(rule -> planned outputs, Snakemake's output) of a dry run with `change` over the overlay."""
    configfiles = []
    if change is not None:
        (folder / "change.yaml").write_text(yaml.safe_dump(change))
        configfiles = ["change.yaml"]
    out = output_of(snakemake(folder, *targets, "--dry-run", "--rerun-triggers", *triggers,
                              configfiles=configfiles))
    return planned_jobs(out), out


@pytest.fixture(scope="module")
def built(finished_run, tmp_path_factory):
    """A copy of the finished run that the dry runs below may write change.yaml into."""
    return copy_run(finished_run, tmp_path_factory.mktemp("reruns") / "run")


def test_unchanged_config_plans_nothing(built):
    plan, out = _dry_run(built, targets=[*TARGETS, METRICS])
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
    # The train plan carries the augmented captions of each sample, so it is replanned (a
    # checkpoint: its shard jobs appear once it ran), and nothing of val or test.
    assert plan == {
        "augment": {"results/synthetic/augment/captions_aug.parquet"},
        "shard_plan": {"results/synthetic/shards/train/plan.json", "results/synthetic/shards/train/plan_samples.parquet"},
        "shards_present": {"results/synthetic/shards/train/shards-present.stamp"},
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
    # so a dry run lists the plans and what reads them (the shard jobs appear in the real run).
    assert plan == {
        "shard_plan": {f"results/synthetic/shards/{split}/{name}" for split in ("train", "val")
                       for name in ("plan.json", "plan_samples.parquet")},
        "shards_present": {f"results/synthetic/shards/{split}/shards-present.stamp" for split in ("train", "val")},
        "shard_manifest": {f"results/synthetic/shards/{split}/manifest.json" for split in ("train", "val")},
    }, out


# --------------------------------------------------------------------------- dry runs change nothing


def test_dry_run_and_lint_change_no_file(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    before = tree_digest(run)
    for args in ([METRICS, "--dry-run"], ["--lint"], [METRICS, "--dry-run", "--forceall"]):
        snakemake(run, *args)
        assert tree_digest(run) == before, args


def test_dry_run_with_a_missing_shard_plans_it_and_changes_no_file(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "results/synthetic/shards/val/shard-000000.tar").unlink()
    before = tree_digest(run)
    plan = planned_jobs(output_of(snakemake(run, METRICS, "--dry-run")))
    assert plan["shard"] == {"results/synthetic/shards/val/shard-000000.tar",
                             "results/synthetic/shards/val/shard-000000.json"}
    assert tree_digest(run) == before


# --------------------------------------------------------------------------- a deleted shard


def test_deleted_train_shard_is_rebuilt_with_what_reads_the_split(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    shard = run / "results/synthetic/shards/train/shard-000000.tar"
    original = shard.read_bytes()
    shard.unlink()
    before = tree_digest(run)

    ran = planned_jobs(output_of(snakemake(run, METRICS)))

    run_dir = "results/synthetic/tiny_smoke"
    expected = {
        "shard": {"results/synthetic/shards/train/shard-000000.tar",
                  "results/synthetic/shards/train/shard-000000.json"},
        "shards_present": {"results/synthetic/shards/train/shards-present.stamp"},
        "shard_manifest": {"results/synthetic/shards/train/manifest.json"},
        "train": {f"{run_dir}/train/{name}" for name in ("final.pt", "train_log.parquet", "val_curve.parquet")},
        "evaluate": {f"{run_dir}/eval/test.parquet", f"{run_dir}/eval/test_examples.parquet"},
        "shards": {"results/synthetic/shards/complete.stamp"},
        "plot_training": {f"{run_dir}/plots/training.png"},
        "plot_examples": {f"{run_dir}/plots/examples.png"},
        "plot_train_log": {f"{run_dir}/train/train_log.html"},
        "plot_metrics": {"results/synthetic/plots/metrics.png", "results/synthetic/plots/headline.rst"},
        "plots": {"results/synthetic/plots/complete.stamp"},
        "collect": {METRICS, "results/synthetic/metrics.html"},
        "search_index": {f"{run_dir}/search/test.index"},
        "search_demo": {f"{run_dir}/search/demo.html", f"{run_dir}/search/demo.json"},
    }
    assert ran == expected
    after = tree_digest(run)
    changed = {p for p in after if p.startswith(("results/", "resources/")) and after[p] != before.get(p)}
    # The index is a folder output: its files are what changes.
    index_folder = f"{run_dir}/search/test.index"
    declared = set().union(*expected.values()) - {index_folder} | {p for p in after if p.startswith(index_folder + "/")}
    # Training may also rewrite what it does not declare: its resumable checkpoint and config copy.
    assert declared <= changed <= declared | {f"{run_dir}/train/checkpoints/last.pt", f"{run_dir}/train/config.yaml"}
    assert shard.read_bytes() == original
    manifest = "results/synthetic/shards/train/manifest.json"
    assert (run / manifest).read_bytes() == (finished_run / manifest).read_bytes()
    # Snakemake records the params it saw while planning, so the next run renews the split's
    # stamp once (nothing reads it as new: the manifest takes it as `ancient`); then nothing.
    assert planned_jobs(output_of(snakemake(run, METRICS))) == {
        "shards_present": {"results/synthetic/shards/train/shards-present.stamp"}}
    assert "Nothing to be done" in output_of(snakemake(run, METRICS))


# --------------------------------------------------------------------------- relocation


def test_copied_run_plans_nothing_in_its_new_folder(finished_run, tmp_path):
    """No absolute path in the DAG: a finished run moved elsewhere is still up to date."""
    moved = copy_run(finished_run, tmp_path / "elsewhere" / "deeper" / "run")
    result = snakemake(moved, METRICS, "--dry-run")
    assert "Nothing to be done" in output_of(result), output_of(result)[-3000:]
    metadata = (moved / ".snakemake" / "metadata").iterdir()
    assert not any(str(finished_run) in p.read_text() for p in metadata)
    assert os.fspath(finished_run) not in (moved / "overlay.yaml").read_text()
