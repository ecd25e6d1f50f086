"""The study's output table: the runs' metrics beside the paper's, row by row of the paper's tables.

One row per (table, paper row, split, direction), in the study file's order (``STUDY_SCHEMA``):

- who: ``table`` (study table key), ``paper_table`` (where the paper prints it), ``table_title``,
  ``position`` (0-based, in print order), ``row`` (id), ``name`` (as printed), ``base`` (the row it is
  compared with, when that row is in the same table), ``run`` (the experiment that produced the numbers;
  shared by rows that resolve to the same configuration), ``backbone`` (the paper's) and ``model`` (what
  ran), ``split`` (test), ``direction`` (t2i is the paper's; i2t beside it);
- ``status``: ``done``; ``missing`` (no metrics for the run: only in a partial study, ``--allow-missing``;
  its metrics are null); ``stale`` (the run's configuration hash is not what the study resolves the row
  to now: trained from an older study file or code version; its numbers are kept and marked);
- ours: ``R1`` ... ``mINP``; the paper's: ``paper_R1`` ... (text->image rows only, null where the paper
  published nothing for this dataset: the ablations are CUHK-PEDES only) and ``paper_source``;
  ``diff_*`` = ours - paper; ``gain_*`` = ours - the base row's ours; ``paper_gain_*`` = the paper's row
  - its base row, on ``paper_gain_dataset`` (this dataset when the paper has both rows for it, else
  CUHK-PEDES, where it ran the ablations: how the paper's conclusions compare with this data);
- ``faithful`` and ``departures`` (why the row is not the paper's as described, "; "-separated),
  ``decisions`` (docs/method.md), ``synonym_source`` (where SR/RI/EDA drew synonyms, ``none`` if none);
- the provenance columns of metrics.parquet (tbps/collect.py): epoch, selection, gallery counts, seed,
  config and data hashes, code version and environment, checkpoint, creation time, source file.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from tbps.collect import DIRECTIONS, METRICS, OUTPUT_SCHEMA, load_eval_metrics
from tbps.errors import UserInputError, input_error
from tbps.fileio import read_parquet_checked, write_parquet_atomic
from tbps.published import ABLATION_DATASET, study_numbers
from tbps.study.plan import StudyPlan

log = logging.getLogger(__name__)

SPLIT = "test"
STATUSES = ("done", "missing", "stale")
_OWN = ("dataset", "train_dataset", "experiment", "split", "direction", *METRICS, "synonym_source")
PROVENANCE: dict[str, pl.DataType] = {c: t for c, t in OUTPUT_SCHEMA.items() if c not in _OWN}

STUDY_SCHEMA: dict[str, pl.DataType] = {
    "dataset": pl.String, "table": pl.String, "paper_table": pl.String, "table_title": pl.String,
    "position": pl.Int64, "row": pl.String, "name": pl.String, "base": pl.String, "run": pl.String,
    "backbone": pl.String, "model": pl.String, "split": pl.String, "direction": pl.String, "status": pl.String,
    **dict.fromkeys(METRICS, pl.Float64),
    **{f"paper_{m}": pl.Float64 for m in METRICS},
    **{f"diff_{m}": pl.Float64 for m in METRICS},
    **{f"gain_{m}": pl.Float64 for m in METRICS},
    **{f"paper_gain_{m}": pl.Float64 for m in METRICS},
    "paper_source": pl.String, "paper_gain_dataset": pl.String,
    "faithful": pl.Boolean, "departures": pl.String, "decisions": pl.String, "synonym_source": pl.String,
    **PROVENANCE,
}


def _run_metrics(files: Sequence[Path], dataset: str, runs: set[str]) -> dict[str, dict[str, dict]]:
    """run -> direction -> its test row (the last checkpoint), from ``tbps evaluate`` files."""
    found: dict[str, dict[str, dict]] = {}
    for path in files:
        df = load_eval_metrics(Path(path)).filter((pl.col("split") == SPLIT) & (pl.col("selection") == "last"))
        for row in df.iter_rows(named=True):
            fix = "pass the test metrics of this dataset's study runs (results/<dataset>/study_<row>/eval/test.parquet)"
            if row["dataset"] != dataset:
                raise input_error(path, f"metrics of dataset {row['dataset']!r}, not {dataset!r}", fix)
            if row["experiment"] not in runs:
                raise input_error(path, f"run {row['experiment']!r} is not a run of the study's table(s) here "
                                  f"({len(runs)} runs)", fix)
            if row["direction"] in found.get(row["experiment"], {}):
                raise input_error(path, f"a second {row['direction']} row of run {row['experiment']!r}",
                                  "pass each run's metrics file once")
            found.setdefault(row["experiment"], {})[row["direction"]] = row
    return found


def _expected_sha(plan: StudyPlan, run: str, synonym_source: str) -> str:
    """The hash the run's checkpoint records: its training resolves data.synonym_source 'auto' when it draws
    synonyms (tbps/train.py), so compare with that source filled in."""
    config = plan.runs[run].config
    if synonym_source not in ("none", config.data.synonym_source):
        config = copy.deepcopy(config)
        config.data.synonym_source = synonym_source
    return config.sha256()


def _paper_gain(row: str, base: str, dataset: str) -> tuple[dict[str, float | None], str | None]:
    for where in dict.fromkeys((dataset, ABLATION_DATASET)):
        ours, theirs = study_numbers(row, where), study_numbers(base, where)
        if ours is not None and theirs is not None:
            return {m: _minus(ours.metric(m), theirs.metric(m)) for m in METRICS}, where
    return dict.fromkeys(METRICS), None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 6)


def study_frame(plan: StudyPlan, dataset: str, metrics_files: Sequence[Path], *, tables: list[str] | None = None,
                allow_missing: bool = False) -> pl.DataFrame:
    """The study table of ``tables`` (all by default) from the runs' metrics files (not written)."""
    study = plan.study
    keys = list(study.tables) if tables is None else tables
    unknown = [k for k in keys if k not in study.tables]
    if unknown:
        raise UserInputError(f"{study.path}: no table(s) {unknown}. Fix: use one of {list(study.tables)}")
    runs = set(plan.table_runs(keys))
    metrics = _run_metrics(metrics_files, dataset, runs)
    missing = sorted(r for r in runs if set(metrics.get(r, {})) != set(DIRECTIONS))
    if missing and not allow_missing:
        raise UserInputError(
            f"study on {dataset}: no test metrics for {len(missing)} run(s) ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}). Fix: build them (snakemake results/{dataset}/<run>/eval/"
            f"test.parquet), or build the partial table, which lists them as missing "
            f"(snakemake results/{dataset}/study_partial.parquet)")
    records = []
    for key in keys:
        table = study.tables[key]
        for position, row_id in enumerate(table.rows):
            planned = plan.rows[row_id]
            base = study.base_in_table(key, row_id)
            paper_gain, gain_dataset = _paper_gain(row_id, base, dataset) if base else (dict.fromkeys(METRICS), None)
            for direction in DIRECTIONS:
                got = metrics.get(planned.run, {}).get(direction)
                base_got = metrics.get(plan.rows[base].run, {}).get(direction) if base else None
                paper = study_numbers(row_id, dataset) if direction == "t2i" else None
                record = {
                    "dataset": dataset, "table": key, "paper_table": table.paper, "table_title": table.title,
                    "position": position, "row": row_id, "name": planned.row.name, "base": base, "run": planned.run,
                    "backbone": planned.row.backbone, "model": planned.config.model.name, "split": SPLIT,
                    "direction": direction,
                    "paper_source": paper.source if paper else None,
                    "paper_gain_dataset": gain_dataset if direction == "t2i" else None,
                    "faithful": planned.faithful, "departures": "; ".join(planned.departures) or None,
                    "decisions": ", ".join(planned.row.decisions) or None,
                }
                for m in METRICS:
                    ours = got[m] if got else None
                    record[m] = ours
                    record[f"paper_{m}"] = paper.metric(m) if paper else None
                    record[f"diff_{m}"] = _minus(ours, record[f"paper_{m}"])
                    record[f"gain_{m}"] = _minus(ours, base_got[m] if base_got else None)
                    record[f"paper_gain_{m}"] = paper_gain[m] if direction == "t2i" else None
                if got is None:
                    record["status"] = "missing"
                    record["synonym_source"] = None
                else:
                    stale = got["config_sha256"] != _expected_sha(plan, planned.run, got["synonym_source"])
                    record["status"] = "stale" if stale else "done"
                    record["synonym_source"] = got["synonym_source"]
                    record.update({c: got[c] for c in PROVENANCE})
                records.append(record)
    df = pl.DataFrame(records, schema=STUDY_SCHEMA, strict=False).select(
        pl.col(c).cast(t) for c, t in STUDY_SCHEMA.items())
    for status in ("missing", "stale"):
        rows = df.filter((pl.col("status") == status) & (pl.col("direction") == "t2i"))["row"].to_list()
        if rows:
            log.warning("%d %s row(s): %s", len(rows), status, ", ".join(rows))
    return df


def read_study_table(path: Path) -> pl.DataFrame:
    """A table written by ``tbps study collect``, checked for the study's columns."""
    fix = "pass a table written by `tbps study collect` (results/<dataset>/study.parquet or study/<table>.parquet)"
    df = read_parquet_checked(path, "study table", fix, list(STUDY_SCHEMA))
    if df.height == 0:
        raise input_error(path, "has no rows", fix)
    bad = df.filter(~pl.col("status").is_in(STATUSES))
    if bad.height:
        raise input_error(path, f"status {bad['status'][0]!r} is not one of {', '.join(STATUSES)}", fix)
    return df


def write_study_table(df: pl.DataFrame, out: Path) -> None:
    write_parquet_atomic(df, out)
    log.info("wrote %s (%d rows, %d tables)", out, df.height, df["table"].n_unique())
