"""Tests for tbps.collect (metrics table) and tbps.published (the paper's tables as data, docs/method.md#published-numbers)."""

import logging
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from tbps.cli import main
from tbps.collect import (
    OUTPUT_SCHEMA,
    collect,
    collect_frame,
    load_eval_metrics,
    parse_experiment,
    summary_table,
)
from tbps.config import ExperimentConfig
from tbps.errors import UserInputError
from tbps.provenance import FIELDS
from tbps.published import as_frame, for_experiment, lookup
from tbps.train import val_curve_schema

METRIC_VALUES = {"R1": 70.0, "R5": 85.0, "R10": 90.0, "mAP": 62.5, "mINP": 45.0}
ENVIRONMENT = {name: 1 if kind is int else f"example {name}" for name, kind in FIELDS.items()}


def eval_table(dataset: str, experiment: str, r1: float = 70.0, **overrides) -> pl.DataFrame:
    """Two rows (t2i, i2t) exactly as `tbps evaluate` writes them."""
    rows = []
    for direction in ("t2i", "i2t"):
        row = {"dataset": dataset, "experiment": experiment, "split": "test", "direction": direction, "epoch": 5,
               "selection": "last", **METRIC_VALUES, "R1": r1, "num_queries": 100, "num_gallery": 50, "seed": 1,
               "config_sha256": "c" * 64, "data_sha256": "d" * 64, "synonym_source": "none", "eval_precision": "fp32", **ENVIRONMENT,
               "checkpoint": f"results/{dataset}/{experiment}/train/final.pt",
               "created_at": "2024-01-01T00:00:00+00:00"}
        row.update(overrides)
        rows.append(row)
    return pl.DataFrame(rows)


def write_eval(tmp_path: Path, dataset: str, experiment: str, df: pl.DataFrame | None = None, **kw) -> Path:
    path = tmp_path / "results" / dataset / experiment.replace("@", "_at_") / "eval" / "test.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    (df if df is not None else eval_table(dataset, experiment, **kw)).write_parquet(path)
    return path


def write_val_curve(tmp_path: Path, dataset: str, experiment: str, epochs: int = 2, config: bool = True) -> Path:
    """A val_curve.parquet as `tbps train` writes it (``epochs=0``: a run without validation)."""
    train_dir = tmp_path / "results" / dataset / experiment / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "split": "val", "direction": d, **METRIC_VALUES, "R1": 10.0 * e}
            for e in range(1, epochs + 1) for d in ("t2i", "i2t")]
    pl.DataFrame(rows, schema=val_curve_schema()).write_parquet(train_dir / "val_curve.parquet")
    if config:
        (train_dir / "config.yaml").write_text(yaml.safe_dump(ExperimentConfig().to_dict(), sort_keys=False))
    return train_dir / "val_curve.parquet"


# --------------------------------------------------------------------------- concatenation and order


def test_collect_concatenates_sorts_and_writes_the_output_schema(tmp_path):
    b = write_eval(tmp_path, "cuhk-pedes", "tbps_clip", r1=73.0)
    a = write_eval(tmp_path, "cuhk-pedes", "clip_baseline", r1=65.0)
    out = tmp_path / "results" / "cuhk-pedes" / "metrics.parquet"

    df = collect([b, a], out)

    written = pl.read_parquet(out)
    assert written.equals(df)
    assert dict(written.schema) == OUTPUT_SCHEMA
    assert written.height == 4
    assert written.select("experiment", "direction").rows() == [
        ("clip_baseline", "i2t"), ("clip_baseline", "t2i"), ("tbps_clip", "i2t"), ("tbps_clip", "t2i")]
    assert written.filter(pl.col("experiment") == "tbps_clip")["R1"].to_list() == [73.0, 73.0]
    assert set(written["train_dataset"]) == {"cuhk-pedes"}
    assert set(written["source"]) == {str(a), str(b)}


def test_collect_is_byte_identical_whatever_the_input_order(tmp_path):
    paths = [write_eval(tmp_path, "synthetic", e) for e in ("tiny_a", "tiny_b", "tiny_c")]
    out1, out2 = tmp_path / "one.parquet", tmp_path / "two.parquet"
    collect(paths, out1)
    collect(list(reversed(paths)), out2)
    assert out1.read_bytes() == out2.read_bytes()


def test_val_curves_add_one_row_per_epoch_and_direction(tmp_path):
    metrics = write_eval(tmp_path, "cuhk-pedes", "tbps_clip")
    with_curve = write_val_curve(tmp_path, "cuhk-pedes", "tbps_clip", epochs=3)
    without_validation = write_val_curve(tmp_path, "cuhk-pedes", "clip_baseline", epochs=0)

    df = collect_frame([metrics], val_curves=[with_curve, without_validation])

    val = df.filter(pl.col("split") == "val")
    assert val.height == 6  # 3 epochs x 2 directions
    assert set(val["selection"]) == {"epoch"}
    assert set(val["experiment"]) == {"tbps_clip"} and set(val["dataset"]) == {"cuhk-pedes"}
    assert val.filter(pl.col("direction") == "t2i")["R1"].to_list() == [10.0, 20.0, 30.0]
    # Provenance the curve itself lacks comes from training's config.yaml; the rest stays null.
    assert set(val["config_sha256"]) == {ExperimentConfig().sha256()}
    assert set(val["seed"]) == {ExperimentConfig().train.seed}
    assert set(val["synonym_source"]) == {"none"}  # the recipe draws no synonyms
    assert val["num_gallery"].null_count() == val.height
    # The test rows come first, then the val curve (split order), each sorted by direction and epoch.
    assert df["split"].to_list() == ["test"] * 2 + ["val"] * 6


def test_val_curve_file_must_sit_in_the_results_layout(tmp_path):
    metrics = write_eval(tmp_path, "cuhk-pedes", "tbps_clip")
    stray = tmp_path / "val_curve.parquet"
    pl.read_parquet(write_val_curve(tmp_path, "cuhk-pedes", "tbps_clip")).write_parquet(stray)
    with pytest.raises(UserInputError, match=r"val_curve\.parquet: cannot tell the dataset"):
        collect_frame([metrics], val_curves=[stray])


def test_missing_val_curve_file_named_explicitly_is_an_error(tmp_path):
    metrics = write_eval(tmp_path, "cuhk-pedes", "tbps_clip")
    missing = tmp_path / "results" / "cuhk-pedes" / "tbps_clip" / "train" / "val_curve.parquet"
    with pytest.raises(UserInputError, match="validation curve file not found"):
        collect_frame([metrics], val_curves=[missing])


# --------------------------------------------------------------------------- strict validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop("mAP"), r"missing column\(s\) mAP"),
        # Written before metrics rows carried the environment: evaluate again.
        (lambda df: df.drop(*[c for c in FIELDS if c != "code_version"]),
         r"missing column\(s\) git_commit, git_tree, .*lock_drift\. Fix: rerun `tbps evaluate`"),
        (lambda df: df.with_columns(pl.lit("0").alias("gpu_count")), "column gpu_count has dtype String"),
        (lambda df: df.with_columns(pl.col("R1").cast(pl.String)), "column R1 has dtype String, expected float"),
        (lambda df: df.with_columns(pl.col("epoch").cast(pl.Float64)), "column epoch has dtype Float64"),
        (lambda df: df.with_columns(pl.lit(1).alias("extra")), r"unexpected column\(s\) extra"),
        (lambda df: df.with_columns(pl.Series("R5", [80.0, math.nan])), "record 1: column R5 is nan"),
        (lambda df: df.with_columns(pl.Series("mINP", [None, 1.0], dtype=pl.Float64)), "record 0: column mINP is null"),
        (lambda df: df.with_columns(pl.Series("R10", [80.0, 101.0])), r"record 1: column R10 = 101.0 is outside"),
        (lambda df: df.with_columns(pl.lit("x2y").alias("direction")), "column direction = 'x2y'"),
        (lambda df: df.head(0), "has no rows"),
    ],
)
def test_bad_metrics_file_is_rejected_naming_file_and_column(tmp_path, change, message):
    good = write_eval(tmp_path, "cuhk-pedes", "clip_baseline")
    bad = write_eval(tmp_path, "cuhk-pedes", "tbps_clip", df=change(eval_table("cuhk-pedes", "tbps_clip")))
    with pytest.raises(UserInputError, match=message) as err:
        collect_frame([good, bad])
    assert str(err.value).startswith(str(bad))
    assert "Fix:" in str(err.value)


def test_unreadable_and_missing_files_are_user_errors(tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(UserInputError, match="garbage.parquet: not a readable Parquet file"):
        collect_frame([garbage])
    with pytest.raises(UserInputError, match="nope.parquet: metrics file not found"):
        collect_frame([tmp_path / "nope.parquet"])
    with pytest.raises(UserInputError, match="no metrics files were given"):
        collect_frame([])


def test_duplicate_runs_are_rejected_naming_both_files(tmp_path):
    first = write_eval(tmp_path, "cuhk-pedes", "tbps_clip")
    second = tmp_path / "copy.parquet"
    second.write_bytes(first.read_bytes())
    with pytest.raises(UserInputError, match="more than one row") as err:
        collect_frame([first, second])
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_a_failed_collect_leaves_the_previous_output_untouched(tmp_path):
    good = write_eval(tmp_path, "cuhk-pedes", "tbps_clip")
    out = tmp_path / "metrics.parquet"
    collect([good], out)
    before = out.read_bytes()
    bad = write_eval(tmp_path, "cuhk-pedes", "clip_baseline", df=eval_table("cuhk-pedes", "clip_baseline").drop("R1"))
    with pytest.raises(UserInputError):
        collect([good, bad], out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["metrics.parquet"]  # no temp files


# --------------------------------------------------------------------------- cross-dataset rows


def test_parse_experiment_reads_the_cross_dataset_suffix_and_rejects_malformed_names():
    assert parse_experiment("tbps_clip", where="f") == ("tbps_clip", None)
    assert parse_experiment("tbps_clip@icfg-pedes", where="f") == ("tbps_clip", "icfg-pedes")
    for bad in ("tbps_clip@nowhere", "@cuhk-pedes", "a@cuhk-pedes@rstpreid"):
        with pytest.raises(UserInputError, match="is not of the form <experiment>@<train dataset>"):
            parse_experiment(bad, where="f")


def test_cross_rows_get_train_dataset_and_in_domain_rows_keep_their_own(tmp_path):
    cross = write_eval(tmp_path, "rstpreid", "tbps_clip@cuhk-pedes", r1=40.0)
    in_domain = write_eval(tmp_path, "rstpreid", "tbps_clip", r1=62.0)
    df = collect_frame([cross, in_domain]).filter(pl.col("direction") == "t2i")
    assert df.select("dataset", "train_dataset", "experiment", "R1").rows() == [
        ("rstpreid", "cuhk-pedes", "tbps_clip", 40.0), ("rstpreid", "rstpreid", "tbps_clip", 62.0)]
    # Only the in-domain row is compared with the paper (it has no cross-dataset experiment).
    table = summary_table(collect_frame([cross, in_domain]))
    lines = [line for line in table.splitlines() if line.startswith("rstpreid")]
    assert lines[0].split()[1] == "cuhk-pedes" and lines[0].rstrip().endswith("-")
    assert lines[1].split()[1] == "rstpreid" and "61.95" in lines[1] and "48.26" in lines[1]


def test_cli_collect_logs_the_table_and_reports_errors_without_traceback(tmp_path, caplog, capsys):
    good = write_eval(tmp_path, "cuhk-pedes", "tbps_clip")
    out = tmp_path / "metrics.parquet"
    with caplog.at_level(logging.INFO, logger="tbps.collect"):
        assert main(["collect", "--inputs", str(good), "--out", str(out)]) == 0
    assert out.is_file()
    assert "text->image, test split" in caplog.text and "73.54" in caplog.text

    bad = write_eval(tmp_path, "cuhk-pedes", "clip_baseline", df=eval_table("cuhk-pedes", "clip_baseline").drop("seed"))
    assert main(["collect", "--inputs", str(bad), "--out", str(tmp_path / "other.parquet")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: missing column(s) seed" in err and "Traceback" not in err
    assert not (tmp_path / "other.parquet").exists()


# --------------------------------------------------------------------------- published numbers


def test_published_numbers_match_the_spec():
    tbps = for_experiment("tbps_clip", "cuhk-pedes")
    assert (tbps.method, tbps.R1, tbps.R5, tbps.R10, tbps.mAP, tbps.mINP) == \
        ("TBPS-CLIP B/16", 73.54, 88.19, 92.35, 65.38, 49.25)
    assert for_experiment("tbps_clip", "icfg-pedes").mINP == 7.87
    assert for_experiment("tbps_clip", "rstpreid").mINP is None
    assert for_experiment("tbps_clip_simplified", "icfg-pedes").mAP == 39.54
    assert for_experiment("clip_baseline", "rstpreid").R10 == 86.60
    assert lookup("TBPS-CLIP B/32", "rstpreid").R1 == 56.65
    assert lookup("Simplified B/16, global batch 160", "cuhk-pedes").R1 == 71.22
    assert lookup("IRRA (CLIP-B/16, 384x128)", "icfg-pedes").mINP == 7.93
    assert lookup("PLOT (CLIP-B/16 + part slots)", "cuhk-pedes").mAP is None
    zero = for_experiment("tbps_clip", "rstpreid", selection="zero-shot")
    assert (zero.R1, zero.R5, zero.R10, zero.mAP) == (13.45, 33.85, None, 10.31)
    assert for_experiment("tiny_tbps_clip", "synthetic") is None
    table = as_frame()
    assert table.height == 5 * 3 + 1 + 6 * 3 + 3
    assert table.filter(pl.struct("method", "dataset").is_duplicated()).height == 0


def test_an_untrained_model_is_not_collected_as_a_result(tmp_path):
    path = write_eval(tmp_path, "synthetic", "tiny_tbps_clip", epoch=0)
    with pytest.raises(UserInputError, match="row with epoch 0: an untrained model is not a result"):
        load_eval_metrics(path)
    zero_shot = write_eval(tmp_path, "synthetic", "zero_shot", epoch=0, selection="zero-shot")
    assert load_eval_metrics(zero_shot)["epoch"].to_list() == [0, 0]
