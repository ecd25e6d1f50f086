"""Collect stage: per-run metric rows (and per-epoch validation curves) -> one metrics table.

Inputs are the Parquet files written by ``tbps evaluate`` (one row per direction) and,
optionally, the ``val_curve.parquet`` files written by ``tbps train`` (no rows when a dataset
has no val split). Every input is validated strictly (columns, dtypes, nulls, NaN, ranges): a
metrics table that silently mixes a half-written or foreign file would be worse than none.

Output columns (``OUTPUT_SCHEMA``, in this order), one row per
(dataset, train_dataset, experiment, split, direction, selection, epoch):

- ``train_dataset``: where the model was trained. Cross-dataset runs are named
  ``<experiment>@<train_dataset>`` by the workflow; the name is split into ``experiment``
  and ``train_dataset``. In-domain rows have ``train_dataset == dataset``.
- ``selection``: 'last' (final checkpoint), 'zero-shot' (pretrained weights) or, for the
  validation curve, 'epoch' (the model after that epoch, split 'val').
- The environment columns, ``code_version`` to ``lock_drift`` (``tbps.provenance.FIELDS``): what
  evaluated the run (git commit and tree state, Python, torch, CUDA/cuDNN, open_clip, webdataset,
  GPUs, the lock file's hash and the installed packages that differ from it).
- Validation rows have no gallery counts, data hash, environment, checkpoint or creation
  time (training does not record them per epoch): those are null. Their seed, config
  hash and synonym source come from the ``config.yaml`` that training writes beside the curve.
- ``synonym_source``: where the run's text augmentation drew synonyms (``table`` or ``wordnet``, the
  resolved ``data.synonym_source``), ``none`` when it drew none (and for zero-shot rows); for
  validation rows it comes from the run's ``config.yaml``.
- ``eval_precision``: the arithmetic of the embedding passes (``eval.precision``, fp32 or bf16); for
  validation rows the run's own ``eval.precision`` from its ``config.yaml``.
- ``source``: the input file the row came from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from tbps.datasets import DATASET_KEYS, is_dataset_key
from tbps.errors import UserInputError, input_error
from tbps.fileio import read_parquet_checked, write_parquet_atomic
from tbps.provenance import FIELDS as ENVIRONMENT_FIELDS

log = logging.getLogger(__name__)

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
DIRECTIONS = ("t2i", "i2t")
SPLITS = ("train", "val", "test")
VAL_CURVE_NAME = "val_curve.parquet"

_STR, _INT, _FLOAT = "string", "integer", "float"

# Columns of a `tbps evaluate` metrics file, in the order it writes them.
EVAL_COLUMNS: dict[str, str] = {
    "dataset": _STR, "experiment": _STR, "split": _STR, "direction": _STR, "epoch": _INT, "selection": _STR,
    **dict.fromkeys(METRICS, _FLOAT),
    "num_queries": _INT, "num_gallery": _INT, "seed": _INT,
    "config_sha256": _STR, "data_sha256": _STR, "synonym_source": _STR, "eval_precision": _STR,
    **{name: {str: _STR, int: _INT}[kind] for name, kind in ENVIRONMENT_FIELDS.items()},
    "checkpoint": _STR, "created_at": _STR,
}
# Columns of a `tbps train` validation curve.
VAL_COLUMNS: dict[str, str] = {"epoch": _INT, "split": _STR, "direction": _STR, **dict.fromkeys(METRICS, _FLOAT)}

KEY = ("dataset", "train_dataset", "experiment", "split", "direction", "selection", "epoch")

OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "dataset": pl.String, "train_dataset": pl.String, "experiment": pl.String, "split": pl.String,
    "direction": pl.String, "selection": pl.String, "epoch": pl.Int64,
    **dict.fromkeys(METRICS, pl.Float64),
    "num_queries": pl.Int64, "num_gallery": pl.Int64, "seed": pl.Int64,
    "config_sha256": pl.String, "data_sha256": pl.String, "synonym_source": pl.String, "eval_precision": pl.String,
    **{name: {str: pl.String, int: pl.Int64}[kind] for name, kind in ENVIRONMENT_FIELDS.items()},
    "checkpoint": pl.String, "created_at": pl.String, "source": pl.String,
}


def _kind_of(dtype: pl.DataType) -> str | None:
    if dtype == pl.String:
        return _STR
    if dtype.is_integer():
        return _INT
    if dtype.is_float():
        return _FLOAT
    return None


def _read(path: Path, what: str) -> pl.DataFrame:
    return read_parquet_checked(path, f"{what} file", "rerun the stage that writes it, or fix the path")


def validate_columns(df: pl.DataFrame, expected: dict[str, str], path: Path, fix: str) -> None:
    """Exactly the expected columns, each of the expected kind (string / integer / float)."""
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise input_error(path, f"missing column(s) {', '.join(missing)}", fix)
    extra = [c for c in df.columns if c not in expected]
    if extra:
        raise input_error(path, f"unexpected column(s) {', '.join(extra)}", fix)
    for column, kind in expected.items():
        got = _kind_of(df.schema[column])
        if got != kind:
            raise input_error(path, f"column {column} has dtype {df.schema[column]}, expected {kind}", fix)


def _first_bad(df: pl.DataFrame, mask: pl.Expr) -> int | None:
    idx = df.with_row_index("_i").filter(mask)["_i"]
    return int(idx[0]) if len(idx) else None


def validate_values(df: pl.DataFrame, path: Path, non_null: Sequence[str], fix: str, *,
                    allow_empty: bool = False) -> None:
    """No nulls where a value is required; metrics finite and within [0, 100]; known splits/directions."""
    if df.height == 0 and not allow_empty:
        raise input_error(path, "has no rows", fix)
    for column in non_null:
        bad = _first_bad(df, pl.col(column).is_null())
        if bad is not None:
            raise input_error(path, f"column {column} is null", fix, record=bad)
    for column in METRICS:
        values = pl.col(column).cast(pl.Float64)
        bad = _first_bad(df, values.is_nan() | values.is_infinite())
        if bad is not None:
            raise input_error(path, f"column {column} is {df[column][bad]} (not a number)", fix, record=bad)
        bad = _first_bad(df, (values < 0) | (values > 100))
        if bad is not None:
            raise input_error(path, f"column {column} = {df[column][bad]} is outside [0, 100] (percent)", fix,
                              record=bad)
    for column, allowed in (("direction", DIRECTIONS), ("split", SPLITS)):
        bad = _first_bad(df, ~pl.col(column).is_in(allowed))
        if bad is not None:
            raise input_error(path, f"column {column} = {df[column][bad]!r} is not one of {', '.join(allowed)}",
                              fix, record=bad)
    bad = _first_bad(df, pl.col("epoch") < 0)
    if bad is not None:
        raise input_error(path, f"column epoch = {df['epoch'][bad]} is negative", fix, record=bad)
    # Only zero-shot rows describe a model trained for 0 epochs; anything else is an untrained model.
    trained = pl.col("selection") != "zero-shot" if "selection" in df.columns else pl.lit(True)
    bad = _first_bad(df, trained & (pl.col("epoch") < 1))
    if bad is not None:
        raise input_error(path, f"row with epoch {df['epoch'][bad]}: an untrained model is not a result", fix,
                          record=bad)


def parse_experiment(name: str, *, where: Path | str) -> tuple[str, str | None]:
    """``'tbps_clip@cuhk-pedes'`` -> ``('tbps_clip', 'cuhk-pedes')``; a plain name -> ``(name, None)``."""
    if "@" not in name:
        return name, None
    experiment, _, train_dataset = name.partition("@")
    if not experiment or "@" in train_dataset or not is_dataset_key(train_dataset):
        raise input_error(where, f"experiment {name!r} is not of the form <experiment>@<train dataset>",
                          f"name cross-dataset runs <experiment>@<one of {', '.join(DATASET_KEYS)} or synthetic-<name>>")
    return experiment, train_dataset


def _split_experiment(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    parsed = {name: parse_experiment(name, where=path) for name in df["experiment"].unique().to_list()}
    return df.with_columns(
        pl.col("experiment").replace_strict({k: v[0] for k, v in parsed.items()}).alias("experiment"),
        pl.col("experiment").replace_strict({k: v[1] for k, v in parsed.items()}, return_dtype=pl.String)
        .fill_null(pl.col("dataset")).alias("train_dataset"),
    )


def load_eval_metrics(path: Path) -> pl.DataFrame:
    """One ``tbps evaluate`` metrics file, validated, in the output schema."""
    path = Path(path)
    fix = "rerun `tbps evaluate` to rewrite it (collect reads only files written by tbps evaluate)"
    df = _read(path, "metrics")
    validate_columns(df, EVAL_COLUMNS, path, fix)
    validate_values(df, path, non_null=list(EVAL_COLUMNS), fix=fix)
    df = _split_experiment(df, path).with_columns(pl.lit(str(path)).alias("source"))
    return _to_output(df)


def load_test_t2i_row(path: Path, dataset: str) -> dict:
    """A run's one text->image test row of ``dataset`` from its ``tbps evaluate`` metrics file (the row
    the probe and few-shot tables report)."""
    metrics = load_eval_metrics(path).filter(
        (pl.col("direction") == "t2i") & (pl.col("split") == "test") & (pl.col("dataset") == dataset))
    if metrics.height != 1:
        raise input_error(path, f"expected one text->image test row of {dataset}, found {metrics.height}",
                          "pass the run's eval/test.parquet written by `tbps evaluate`")
    return metrics.row(0, named=True)


def val_curve_owner(path: Path) -> tuple[str, str]:
    """(dataset, experiment) of ``results/{dataset}/{experiment}/train/val_curve.parquet``."""
    train_dir = path.parent
    dataset, experiment = train_dir.parent.parent.name, train_dir.parent.name
    if train_dir.name != "train" or not is_dataset_key(dataset) or not experiment:
        raise input_error(path, "cannot tell the dataset and experiment from the path",
                          "pass validation curves at results/{dataset}/{experiment}/train/val_curve.parquet")
    return dataset, experiment


def _training_provenance(train_dir: Path) -> tuple[int | None, str | None, str | None, str | None]:
    """Seed, config hash, synonym source and evaluation precision of the run, from the config.yaml training
    writes beside its outputs."""
    import yaml

    from tbps.config import config_from_dict
    from tbps.data.synonym_sources import synonym_source_used

    config = train_dir / "config.yaml"
    if not config.is_file():
        return None, None, None, None
    try:
        cfg = config_from_dict(yaml.safe_load(config.read_text(encoding="utf-8")))
    except (yaml.YAMLError, UserInputError, ValueError, TypeError, KeyError) as e:
        raise input_error(config, f"not a training configuration ({e})", "rerun `tbps train`") from None
    return cfg.train.seed, cfg.sha256(), synonym_source_used(cfg.data), cfg.eval.precision


def read_val_curve(path: Path) -> pl.DataFrame:
    """A ``tbps train`` validation curve (epoch, split, direction, metrics), validated as written."""
    path = Path(path)
    fix = "rerun `tbps train` to rewrite it"
    df = _read(path, "validation curve")
    validate_columns(df, VAL_COLUMNS, path, fix)
    # No rows: the run had no val split (or per-epoch validation off).
    validate_values(df, path, non_null=list(VAL_COLUMNS), fix=fix, allow_empty=True)
    bad = _first_bad(df, pl.col("split") != "val")
    if bad is not None:
        raise input_error(path, f"split = {df['split'][bad]!r} in a validation curve", fix, record=bad)
    return df


def load_val_curve(path: Path) -> pl.DataFrame:
    """One validation curve in the output schema (split 'val', selection 'epoch'), owner read from its path."""
    path = Path(path)
    dataset, experiment = val_curve_owner(path)
    df = read_val_curve(path)
    seed, config_sha, synonym_source, eval_precision = _training_provenance(path.parent)
    df = df.with_columns(
        pl.lit(dataset).alias("dataset"), pl.lit(dataset).alias("train_dataset"), pl.lit(experiment).alias("experiment"),
        pl.lit("epoch").alias("selection"), pl.lit(seed, dtype=pl.Int64).alias("seed"),
        pl.lit(config_sha, dtype=pl.String).alias("config_sha256"),
        pl.lit(synonym_source, dtype=pl.String).alias("synonym_source"),
        pl.lit(eval_precision, dtype=pl.String).alias("eval_precision"), pl.lit(str(path)).alias("source"),
    )
    return _to_output(df)


def _to_output(df: pl.DataFrame) -> pl.DataFrame:
    return df.select(
        (pl.col(c) if c in df.columns else pl.lit(None)).cast(dtype).alias(c) for c, dtype in OUTPUT_SCHEMA.items()
    )


def check_unique(df: pl.DataFrame) -> None:
    dup = df.filter(pl.struct(*KEY).is_duplicated())
    if dup.height:
        first = dup.row(0, named=True)
        where = {k: first[k] for k in KEY}
        sources = sorted(set(dup.filter(*[pl.col(k) == v for k, v in where.items()])["source"]))
        raise UserInputError(
            f"{' and '.join(sources)}: more than one row for {where}. "
            "Fix: pass each run's metrics file once (one file per dataset, experiment and split)"
        )


def collect_frame(inputs: Sequence[Path], val_curves: Sequence[Path] = ()) -> pl.DataFrame:
    """Validated, de-duplicated, deterministically sorted metrics table (not written)."""
    frames = [load_eval_metrics(p) for p in inputs]
    frames += [load_val_curve(p) for p in val_curves]
    if not frames:
        raise UserInputError(
            "collect: no metrics files were given. Fix: pass them with --inputs (for results/cross/metrics.parquet: "
            "list datasets under extras: cross: train and eval in config/config.yaml)"
        )
    df = pl.concat(frames, how="vertical")
    check_unique(df)
    log.info("collected %d rows from %d metrics file(s) and %d validation curve(s)", df.height, len(inputs),
             len(val_curves))
    return df.sort(KEY)


def collect(inputs: Sequence[Path], out: Path, *, val_curves: Sequence[Path] = ()) -> pl.DataFrame:
    """Write the collected table to ``out`` (atomically) and log the text->image test results."""
    df = collect_frame(inputs, val_curves)
    write_parquet_atomic(df, out)
    log.info("wrote %s (%d rows)\n%s", out, df.height, summary_table(df))
    return df


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def summary_table(df: pl.DataFrame) -> str:
    """The text->image test rows as a fixed-width text table, with the paper's R@1/mAP where one applies."""
    from tbps.published import for_experiment

    rows = df.filter((pl.col("direction") == "t2i") & (pl.col("split") == "test")).sort(KEY)
    header = ["dataset", "trained on", "experiment", "selection", "epoch", "R@1", "R@5", "R@10", "mAP", "mINP",
              "paper R@1", "paper mAP"]
    lines = [header]
    for r in rows.iter_rows(named=True):
        paper = for_experiment(r["experiment"], r["dataset"], r["selection"]) if r["train_dataset"] == r["dataset"] \
            else None
        lines.append([r["dataset"], r["train_dataset"], r["experiment"], r["selection"], str(r["epoch"]),
                      *(_fmt(r[m]) for m in METRICS),
                      _fmt(paper.R1 if paper else None), _fmt(paper.mAP if paper else None)])
    if len(lines) == 1:
        return "(no text->image test rows)"
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = 4  # the text columns are left-aligned, the numbers right-aligned

    def fmt_line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                             strict=True)))

    text = [fmt_line(line) for line in lines]
    return ("text->image, test split (percent; paper = its best epoch, picked on the test split, "
            "docs/method.md#model-selection):\n" + "\n".join(text))
