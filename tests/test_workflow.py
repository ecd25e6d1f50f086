"""The Snakemake workflow: lint, dry runs, the missing-download message, a real data-stage run."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--directory", str(workdir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path):
    """A run folder with a small synthetic configuration (the repo's config with fewer ids)."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["datasets"]["synthetic"]["synth_ids"] = 24
    cfg["datasets"]["synthetic"]["raw"] = str(tmp_path / "resources" / "raw" / "synthetic")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_dry_run_of_the_embedded_default(workdir):
    result = snakemake(workdir, "-n", f"--configfile={workdir / 'config.yaml'}", "results/synthetic/metrics.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    # augment and the shard jobs join the DAG once the shard_plan checkpoint has run.
    for rule in ("synth", "prepare", "shard_plan", "train", "evaluate", "collect"):
        assert f"rule {rule}:" in out or f"checkpoint {rule}:" in out, rule


def test_missing_download_stops_with_instructions(workdir):
    result = snakemake(workdir, "-n", f"--configfile={workdir / 'config.yaml'}", "results/rstpreid/metrics.parquet")
    assert result.returncode != 0
    err = result.stdout + result.stderr
    assert "MissingInputException" not in err and "Traceback" not in err
    assert "RSTPReid raw data is not at 'resources/raw/RSTPReid'" in err
    assert "Where to get it" in err and "DSSL" in err
    assert "datasets: rstpreid: raw:" in err
    assert "tbps check-raw --dataset rstpreid --raw resources/raw/RSTPReid" in err


def test_data_stage_runs_for_real(workdir):
    result = snakemake(workdir, "--cores", "2", f"--configfile={workdir / 'config.yaml'}",
                       "results/synthetic/prepared/annotations.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pl.read_parquet(workdir / "results/synthetic/prepared/annotations.parquet")
    assert set(table["split"]) == {"train", "val", "test"}
    assert table.filter(pl.col("split") == "train")["person_id"].n_unique() == 24
    summary = json.loads((workdir / "results/synthetic/prepared/summary.json").read_text())
    assert summary
    assert (workdir / "logs/prepare/synthetic.log").stat().st_size > 0
    assert (workdir / "logs/benchmarks/prepare/synthetic.tsv").is_file()
    # A second run has nothing to do.
    again = snakemake(workdir, "-n", f"--configfile={workdir / 'config.yaml'}",
                      "results/synthetic/prepared/annotations.parquet")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_config_schema_rejects_unknown_keys(workdir):
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["shards"]["max_sampels"] = 3
    bad = workdir / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, "-n", f"--configfile={bad}")
    assert result.returncode != 0
    assert "max_sampels" in result.stdout + result.stderr


def test_conda_env_lists_every_runtime_dependency():
    """envs/tbps.yaml and pyproject.toml must not drift apart."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env_text = (REPO / "envs" / "tbps.yaml").read_text()
    aliases = {"torch": "pytorch"}
    for dep in deps:
        name = dep.split(">")[0].split("<")[0].split("=")[0].strip()
        assert aliases.get(name, name) in env_text, f"{name} missing from envs/tbps.yaml"
    assert shutil.which  # keep import used


def test_few_shot_and_cross_runs_join_the_dag(workdir):
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["extras"]["few_shot_fractions"] = [0.1]
    cfg["extras"]["cross"] = {"train": ["synthetic"], "eval": ["synthetic"], "experiment": "tiny_tbps_clip_simplified"}
    extra = workdir / "extras.yaml"
    extra.write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, "-n", f"--configfile={extra}", "results/synthetic/metrics.parquet",
                       "results/cross/metrics.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "results/synthetic/tiny_tbps_clip_simplified-fs0.1/train/final.pt" in out
    assert "--set data.few_shot_fraction=0.1" in out or "wildcards: dataset=synthetic, experiment=tiny_tbps_clip_simplified-fs0.1" in out
    assert "results/cross/metrics.parquet" in out


def test_compression_target_plans_the_stand_in_the_probe_and_every_run(workdir):
    """results/synthetic/compression.parquet: the pre-trained stand-in on its own synthetic dataset, the
    importance probe of the full preset, and each preset uncompressed and with x layers frozen or dropped."""
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    compression = cfg["datasets"]["synthetic"]["compression"]
    result = snakemake(workdir, "-n", "-p", f"--configfile={workdir / 'config.yaml'}",
                       "results/synthetic/compression.parquet")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for rule in ("synth", "synth_pretrain", "train", "evaluate", "probe_importance", "plot_importance", "compression"):
        assert f"rule {rule}:" in out, rule
    trained = set(re.findall(r"results/([a-z-]+)/([A-Za-z0-9_.-]+)/train/final\.pt", out))
    runs = {(p, f"{p}-{mode}{x}") for p in compression["experiments"] for mode in ("freeze", "drop")
            for x in compression["x"]}
    assert len(runs) == 2 * len(compression["x"]) * 2
    assert trained == ({("synthetic-pretrain", "tiny_probe_pretrain")}
                       | {("synthetic", run) for pair in runs for run in pair})
    importance = "results/synthetic/tiny_probe_tbps_clip/probe/importance.parquet"
    assert f"--set model.compress_from_importance.table={importance}" in out
    assert "--set model.compress_from_importance.mode=drop" in out
