"""The study's Snakemake targets: one train and one evaluate per distinct experiment of the whole
study (dry run), and a real run of a few rows (two tables sharing a run) on the finished synthetic
run's data: study.parquet, the per-table tables and pages, the partial study, what reruns."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest
import yaml
from helpers.workflow_runs import (
    REPO,
    SMOKE_OVERLAY,
    copy_run,
    make_run_folder,
    output_of,
    planned_jobs,
    snakemake,
    tree_digest,
)

from tbps.study.plan import StudySettings, plan_study
from tbps.study.spec import load_study

pytestmark = pytest.mark.timeout(900)

STUDY = "results/synthetic/study.parquet"
PARTIAL = "results/synthetic/study_partial.parquet"
# A few rows of config/study.yaml, two tables sharing the run of CLIP (= CLIP ViT-B/32): 3 runs.
SMOKE_TABLES = {"tricks": ["clip", "global_grad"], "backbone": ["clip_b32", "clip_b16"]}
SMOKE_RUNS = {"study_clip", "study_global_grad", "study_clip_b16"}
# The tiny models on the 4-identity smoke data: one short epoch, batches of 8 (320 x 0.025).
SMOKE_SCHEDULE = {"data": {"num_workers": 0}, "optim": {"epochs": 1, "warmup_epochs": 0.2},
                  "train": {"eval_every_epoch": False}, "eval": {"batch_size": 32}}
SMOKE_STUDY_SETTINGS = {"backbones": {"ViT-B-32": "_study_tiny_rn", "ViT-B-16": "_study_tiny_vit"},
                        "schedule": "_study_smoke", "batch_scale": 0.025}


def smoke_study() -> dict:
    """config/study.yaml cut to SMOKE_TABLES (and the rows they build on)."""
    data = yaml.safe_load((REPO / "config" / "study.yaml").read_text())
    keep = {r for rows in SMOKE_TABLES.values() for r in rows}
    data["tables"] = {k: {**data["tables"][k], "rows": rows} for k, rows in SMOKE_TABLES.items()}
    data["rows"] = {k: v for k, v in data["rows"].items() if k in keep}
    return data


def add_smoke_study(folder):
    """The study overlay: the cut study file, the smoke schedule and the stand-ins of the synthetic set."""
    (folder / "smoke_study.yaml").write_text(yaml.safe_dump(smoke_study(), allow_unicode=True, sort_keys=False))
    (folder / "config" / "experiments" / "_study_smoke.yaml").write_text(yaml.safe_dump(SMOKE_SCHEDULE))
    overlay = yaml.safe_load((folder / "overlay.yaml").read_text())
    overlay["study"] = {"file": "smoke_study.yaml"}
    overlay["datasets"]["synthetic"]["study"] = SMOKE_STUDY_SETTINGS
    (folder / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    return folder


@pytest.fixture(scope="module")
def finished_study(finished_run, tmp_path_factory):
    """The smoke study built on a copy of the finished run (its data stages are not rerun)."""
    folder = add_smoke_study(copy_run(finished_run, tmp_path_factory.mktemp("study") / "run"))
    ran = planned_jobs(output_of(snakemake(folder, STUDY)))
    assert set(ran) == {"train", "evaluate", "study_table", "study_report", "study"}, ran
    assert ran["train"] == {f"results/synthetic/{run}/train/{name}" for run in SMOKE_RUNS
                            for name in ("final.pt", "train_log.parquet", "val_curve.parquet")}
    return folder


def test_dry_run_plans_one_train_and_evaluate_per_distinct_experiment(tmp_path):
    """The whole study of config/study.yaml on the synthetic default: 66 distinct experiments of 74 rows."""
    folder = make_run_folder(tmp_path / "run")
    before = tree_digest(folder)
    plan = planned_jobs(output_of(snakemake(folder, STUDY, "--dry-run")))
    # Planning the study writes nothing (Snakemake sets up its own .snakemake/ in a new folder).
    assert tree_digest(folder, skip=(".snakemake",)) == before
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    settings = StudySettings.merged(REPO / "config" / "experiments", config["study"],
                                    config["datasets"]["synthetic"]["study"], SMOKE_OVERLAY["datasets"]["synthetic"]
                                    ["augment_backend"])
    runs = plan_study(load_study(REPO / "config" / "study.yaml"), settings).runs
    assert len(runs) == 66
    assert plan["train"] == {f"results/synthetic/{run}/train/final.pt" for run in runs} | {
        f"results/synthetic/{run}/train/{name}" for run in runs for name in ("train_log.parquet", "val_curve.parquet")}
    assert plan["evaluate"] == {f"results/synthetic/{run}/eval/{name}" for run in runs
                                for name in ("test.parquet", "test_examples.parquet")}
    assert len(plan["study_table"]) == len(plan["study_report"]) / 2 == 8


def test_the_study_table_holds_every_row_with_the_papers_gains_and_provenance(finished_study):
    df = pl.read_parquet(finished_study / STUDY)
    t2i = df.filter(pl.col("direction") == "t2i")
    assert t2i.select("table", "row", "run", "status").rows() == [
        ("tricks", "clip", "study_clip", "done"), ("tricks", "global_grad", "study_global_grad", "done"),
        ("backbone", "clip_b32", "study_clip", "done"), ("backbone", "clip_b16", "study_clip_b16", "done")]
    assert df.height == 8 and df["R1"].null_count() == 0
    gg = t2i.row(1, named=True)
    assert gg["paper_R1"] is None and gg["paper_gain_R1"] == pytest.approx(2.99)  # synthetic: the paper's CUHK gains
    assert gg["gain_R1"] == pytest.approx(gg["R1"] - t2i.row(0, named=True)["R1"])
    assert "TBPS-Tiny-RN (trained from scratch) stands in for ViT-B/32" in gg["departures"] and not gg["faithful"]
    assert t2i.row(3, named=True)["model"] == "TBPS-Tiny-ViT" and t2i.row(3, named=True)["base"] == "clip_b32"
    metrics = pl.read_parquet(finished_study / "results/synthetic/study_global_grad/eval/test.parquet")
    assert gg["config_sha256"] == metrics["config_sha256"][0] and gg["data_sha256"] == metrics["data_sha256"][0]
    trained = yaml.safe_load((finished_study / "results/synthetic/study_global_grad/train/config.yaml").read_text())
    assert trained["name"] == "study_global_grad" and trained["data"]["batch_size"] == 8
    assert (trained["loss"]["global_grad"], trained["loss"]["emulated_processes"]) == (True, 1)
    for table in SMOKE_TABLES:
        assert pl.read_parquet(finished_study / f"results/synthetic/study/{table}.parquet")["table"].unique().to_list() \
            == [table]
        assert "paper | ours | Δ" in (finished_study / f"results/synthetic/study/{table}.html").read_text()
        assert (finished_study / f"results/synthetic/study/{table}.png").stat().st_size > 10_000
    log = (finished_study / "logs/study/synthetic/study.log").read_text()
    assert "Table 1 (training tricks, one at a time on CLIP) on synthetic" in log


def test_tbps_study_show_prints_the_built_study(finished_study):
    out = subprocess.run([sys.executable, "-m", "tbps", "study", "show", STUDY], cwd=finished_study,
                         capture_output=True, text=True, check=True).stdout
    assert "Tables 6-8 (CLIP and TBPS-CLIP on ViT-B/32 and ViT-B/16) on synthetic" in out
    assert any(line.startswith("+ GlobalGrad  CLIP") for line in out.splitlines())
    assert out.endswith("rows: 4 done\n")


def test_a_finished_study_plans_nothing_here_and_after_a_move(finished_study, tmp_path):
    result = snakemake(finished_study, STUDY, "--dry-run")
    assert "Nothing to be done" in output_of(result), output_of(result)[-3000:]
    moved = copy_run(finished_study, tmp_path / "elsewhere" / "run")
    assert "Nothing to be done" in output_of(snakemake(moved, STUDY, "--dry-run"))


def test_partial_study_lists_the_rows_whose_run_is_missing(finished_study, tmp_path):
    run = copy_run(finished_study, tmp_path / "run")
    # What a --keep-going run leaves when one row's run failed: no metrics for it, and so neither its
    # tables nor the study.
    for path in ("study_global_grad/eval/test.parquet", "study/tricks.parquet", "study/tricks.html",
                 "study/tricks.png", "study.parquet"):
        (run / "results/synthetic" / path).unlink()
    ran = planned_jobs(output_of(snakemake(run, PARTIAL)))
    assert set(ran) == {"study_partial"}  # builds from what is there, starts no run
    partial = pl.read_parquet(run / PARTIAL).filter(pl.col("direction") == "t2i")
    assert partial.select("row", "status").rows() == [
        ("clip", "done"), ("global_grad", "missing"), ("clip_b32", "done"), ("clip_b16", "done")]
    assert partial.filter(pl.col("status") == "missing")["R1"].to_list() == [None]
    # The full study then evaluates that run again (its checkpoint is there) and nothing else.
    plan = planned_jobs(output_of(snakemake(run, STUDY, "--dry-run")))
    assert plan["evaluate"] == {"results/synthetic/study_global_grad/eval/test.parquet",
                                "results/synthetic/study_global_grad/eval/test_examples.parquet"}
    assert "train" not in plan and plan["study_table"] == {"results/synthetic/study/tricks.parquet"}


def test_a_changed_row_retrains_only_its_run_and_a_touched_study_file_none(finished_study, tmp_path):
    run = copy_run(finished_study, tmp_path / "run")
    study_file = run / "smoke_study.yaml"
    study_file.write_text(study_file.read_text() + "\n# a comment\n")
    plan = planned_jobs(output_of(snakemake(run, STUDY, "--dry-run")))
    assert set(plan) == {"study_table", "study_report", "study"}, plan
    data = yaml.safe_load(study_file.read_text())
    data["rows"]["global_grad"]["set"]["model"] = {"text_attn_dropout": 0.1}
    study_file.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    plan = planned_jobs(output_of(snakemake(run, STUDY, "--dry-run")))
    assert {p.split("/")[2] for p in plan["train"]} == {"study_global_grad"}
    assert {p.split("/")[2] for p in plan["evaluate"]} == {"study_global_grad"}
