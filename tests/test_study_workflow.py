"""The study's Snakemake targets: one train and one evaluate per distinct experiment of the whole
study (dry run), and a real run of a few rows (every table, 4 runs shared between them) on the
finished synthetic run's data: study.parquet, the per-table tables and pages, the partial study,
what reruns."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest
import yaml
from helpers.workflow_runs import (
    REPO,
    REPORT_VARIABLES,
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
# A row or two of every table of config/study.yaml in 4 runs (2 rounds on 2 cores): CLIP = CLIP
# ViT-B/32, CLIP* is the reference row of five tables, the simplified ViT-B/16 row is in two.
SMOKE_TABLES = {"tricks": ["clip", "clip_star"], "image_aug": ["clip_star"], "image_aug_sweeps": ["clip_star"],
                "text_aug": ["clip_star"], "augmentation": ["clip_star"], "losses": ["n_itc"],
                "backbone": ["clip_b32", "simplified_b16"], "batch": ["simplified_b16"]}
SMOKE_RUNS = {"study_clip", "study_clip_star", "study_n_itc", "study_simplified_b16"}
# The tiny models on the 4-identity smoke data: one short epoch, batches of 8 (320 x 0.025).
SMOKE_SCHEDULE = {"data": {"num_workers": 0}, "optim": {"epochs": 1, "warmup_epochs": 0.2},
                  "train": {"eval_every_epoch": False}, "eval": {"batch_size": 32}}
SMOKE_STUDY_SETTINGS = {"backbones": {"ViT-B-32": "_study_tiny_rn", "ViT-B-16": "_study_tiny_vit"},
                        "schedule": "_study_smoke", "batch_scale": 0.025}


def smoke_study() -> dict:
    """config/study.yaml cut to SMOKE_TABLES (and the rows they build on)."""
    data = yaml.safe_load((REPO / "config" / "study.yaml").read_text())
    keep = set()
    for row in (r for rows in SMOKE_TABLES.values() for r in rows):
        while row is not None:
            keep.add(row)
            row = data["rows"][row].get("inherit")
    data["tables"] = {k: {**data["tables"][k], "rows": rows} for k, rows in SMOKE_TABLES.items()}
    data["rows"] = {k: v for k, v in data["rows"].items() if k in keep}
    for row in data["rows"].values():
        if row.get("base") is not None and row["base"] not in keep:
            row["base"] = None  # read against a row of the full file that the cut leaves out
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


def test_one_table_one_row_and_every_row_on_one_backbone_plan_only_their_runs(tmp_path):
    folder = make_run_folder(tmp_path / "run")
    losses = planned_jobs(output_of(snakemake(folder, "results/synthetic/study/losses.parquet", "--dry-run")))
    trained = {p.split("/")[2] for p in losses["train"]}
    assert trained == {"study_clip_star_aug", "study_n_itc", "study_ss_i", "study_ss_t", "study_ss_it", "study_mvs_i",
                       "study_mvs_t", "study_mvs_it", "study_r_itc", "study_c_itc", "study_tbps_clip"}
    assert losses["study_table"] == {"results/synthetic/study/losses.parquet"} and "study" not in losses
    row = planned_jobs(output_of(snakemake(folder, "results/synthetic/study_mvs_t/eval/test.parquet", "--dry-run")))
    assert {p.split("/")[2] for p in row["train"]} == {"study_mvs_t"}
    shared = snakemake(folder, "results/synthetic/study_clip_b32/eval/test.parquet", "--dry-run", check=False)
    assert shared.returncode != 0
    assert "row clip_b32 has the same configuration as clip, clip_b32: its run is study_clip" in output_of(shared)
    one = planned_jobs(output_of(snakemake(folder, STUDY, "--dry-run", "--config", "study_backbone=ViT-B-16")))
    trained = {p.split("/")[2] for p in one["train"]}
    assert len(trained) == 64 and "study_clip_b16" not in trained  # = study_clip on one backbone


T2I_ROWS = [(table, row) for table, rows in SMOKE_TABLES.items() for row in rows]
RUN_OF = {"clip": "study_clip", "clip_b32": "study_clip", "clip_star": "study_clip_star", "n_itc": "study_n_itc",
          "simplified_b16": "study_simplified_b16"}


def test_the_study_table_holds_every_row_with_the_papers_gains_and_provenance(finished_study):
    df = pl.read_parquet(finished_study / STUDY)
    t2i = df.filter(pl.col("direction") == "t2i")
    assert t2i.select("table", "row", "run", "status").rows() == [
        (table, row, RUN_OF[row], "done") for table, row in T2I_ROWS]
    assert df.height == 2 * len(T2I_ROWS) and df["R1"].null_count() == 0
    star = t2i.row(1, named=True)
    assert star["row"] == "clip_star" and star["base"] == "clip"
    assert star["paper_R1"] is None and star["paper_gain_R1"] == pytest.approx(3.67)  # synthetic: CUHK's gains
    assert star["gain_R1"] == pytest.approx(star["R1"] - t2i.row(0, named=True)["R1"])
    assert "TBPS-Tiny-RN (trained from scratch) stands in for ViT-B/32" in star["departures"] and not star["faithful"]
    # The same run gives the same numbers in every table that lists it.
    assert t2i.filter(pl.col("row") == "clip_star")["R1"].n_unique() == 1
    simplified = t2i.filter(pl.col("row") == "simplified_b16").row(0, named=True)
    assert simplified["model"] == "TBPS-Tiny-ViT" and simplified["base"] is None  # CLIP ViT-B/16 is not in the cut
    metrics = pl.read_parquet(finished_study / "results/synthetic/study_clip_star/eval/test.parquet")
    assert star["config_sha256"] == metrics["config_sha256"][0] and star["data_sha256"] == metrics["data_sha256"][0]
    trained = yaml.safe_load((finished_study / "results/synthetic/study_clip_star/train/config.yaml").read_text())
    assert trained["name"] == "study_clip_star" and trained["data"]["batch_size"] == 8
    assert (trained["loss"]["global_grad"], trained["loss"]["emulated_processes"]) == (True, 1)
    assert trained["model"]["freeze_patch_embed"] and trained["model"]["text_attn_dropout"] == 0.05
    n_itc = yaml.safe_load((finished_study / "results/synthetic/study_n_itc/train/config.yaml").read_text())
    assert n_itc["loss"]["identity_targets"] and n_itc["data"]["image_aug"]["strategy"] == "pool"
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
    assert "Table 5 (losses, each added alone (on N-ITC), then all kept ones) on synthetic" in out
    # No paper R@1 for synthetic: ours, then the paper's gain over CLIP on CUHK-PEDES beside ours.
    assert any(line.split()[:2] == ["CLIP*", "CLIP"] and line.split()[5] == "+3.67" for line in out.splitlines())
    assert out.endswith(f"rows: {len(T2I_ROWS)} done\n")


def test_the_report_of_the_study_has_each_tables_page_and_chart(finished_study, tmp_path):
    out = tmp_path / "report.html"
    snakemake(finished_study, STUDY, "--report", str(out))
    found = {name: json.loads(value) for name, value in REPORT_VARIABLES.findall(out.read_text())}
    study = {path: item for path, item in found["results"].items()
             if path == STUDY or path.startswith("results/synthetic/study/")}
    assert set(study) == {STUDY} | {f"results/synthetic/study/{table}.{kind}" for table in SMOKE_TABLES
                                    for kind in ("html", "png")}
    assert "Study" in found["categories"]
    losses = study["results/synthetic/study/losses.html"]
    assert losses["mime_type"] == "text/html" and "Table ``" not in losses["caption"]
    assert "losses" in losses["caption"] and "side by side with the paper" in losses["caption"]


def test_a_finished_study_plans_nothing_here_and_after_a_move(finished_study, tmp_path):
    result = snakemake(finished_study, STUDY, "--dry-run")
    assert "Nothing to be done" in output_of(result), output_of(result)[-3000:]
    moved = copy_run(finished_study, tmp_path / "elsewhere" / "run")
    assert "Nothing to be done" in output_of(snakemake(moved, STUDY, "--dry-run"))


def test_partial_study_lists_the_rows_whose_run_is_missing(finished_study, tmp_path):
    run = copy_run(finished_study, tmp_path / "run")
    # What a --keep-going run leaves when one row's run failed: no metrics for it, and so neither the
    # tables that list it nor the study.
    star_tables = [table for table, rows in SMOKE_TABLES.items() if "clip_star" in rows]
    (run / "results/synthetic/study_clip_star/eval/test.parquet").unlink()
    (run / STUDY).unlink()
    for table in star_tables:
        for kind in ("parquet", "html", "png"):
            (run / f"results/synthetic/study/{table}.{kind}").unlink()
    ran = planned_jobs(output_of(snakemake(run, PARTIAL)))
    assert set(ran) == {"study_partial"}  # builds from what is there, starts no run
    partial = pl.read_parquet(run / PARTIAL).filter(pl.col("direction") == "t2i")
    assert partial.select("table", "row", "status").rows() == [
        (table, row, "missing" if row == "clip_star" else "done") for table, row in T2I_ROWS]
    assert partial.filter(pl.col("status") == "missing")["R1"].null_count() == len(star_tables)
    shown = subprocess.run([sys.executable, "-m", "tbps", "study", "show", PARTIAL], cwd=run, capture_output=True,
                           text=True, check=True).stdout
    assert shown.endswith(f"rows: {len(T2I_ROWS) - len(star_tables)} done, {len(star_tables)} missing\n")
    # The full study then evaluates that run again (its checkpoint is there) and nothing else.
    plan = planned_jobs(output_of(snakemake(run, STUDY, "--dry-run")))
    assert plan["evaluate"] == {"results/synthetic/study_clip_star/eval/test.parquet",
                                "results/synthetic/study_clip_star/eval/test_examples.parquet"}
    assert "train" not in plan
    assert plan["study_table"] == {f"results/synthetic/study/{table}.parquet" for table in star_tables}


def test_a_changed_row_retrains_its_run_and_the_runs_built_on_it_and_a_touched_study_file_none(
        finished_study, tmp_path):
    run = copy_run(finished_study, tmp_path / "run")
    study_file = run / "smoke_study.yaml"
    study_file.write_text(study_file.read_text() + "\n# a comment\n")
    plan = planned_jobs(output_of(snakemake(run, STUDY, "--dry-run")))
    assert set(plan) == {"study_table", "study_report", "study"}, plan
    data = yaml.safe_load(study_file.read_text())
    data["rows"]["clip_star"]["set"]["model"]["text_attn_dropout"] = 0.1
    study_file.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    plan = planned_jobs(output_of(snakemake(run, STUDY, "--dry-run")))
    # CLIP*+Aug and N-ITC build on CLIP*; CLIP and the simplified preset do not.
    assert {p.split("/")[2] for p in plan["train"]} == {"study_clip_star", "study_n_itc"}
    assert {p.split("/")[2] for p in plan["evaluate"]} == {"study_clip_star", "study_n_itc"}
