"""The few-shot table: each method trained on the same fraction of the training images, next to the
paper's numbers (Tables 11 and 16; docs/method.md#few-shot-table).

Inputs are triples of a method key (:data:`tbps.published.FEW_SHOT_METHODS`), a run's ``tbps evaluate``
metrics file and its ``final.pt``. The metrics give the text-to-image test figures; the checkpoint gives
the fraction and the subset it trained on (``few_shot`` record), the parameter-efficient method
(``model.peft``) and the trainable parameters. Every method of one fraction must have trained on the
same images: the table refuses runs whose subsets differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from tbps.collect import METRICS, load_test_t2i_row
from tbps.errors import UserInputError, input_error
from tbps.fileio import write_parquet_atomic
from tbps.model.checkpoint_load import require_tbps_checkpoint
from tbps.published import FEW_SHOT_METHODS, few_shot_published

log = logging.getLogger(__name__)

PAPER_METRICS = ("R1", "R5", "R10", "mAP")
PEFT_OF_METHOD = {"coop": "coop", "clip_adapter": "clip_adapter"}
"""The ``model.peft`` a method's run must have ('none' for the others)."""

FEW_SHOT_SCHEMA = {
    "dataset": pl.String, "fraction": pl.Float64, "method": pl.String, "paper_method": pl.String,
    "run": pl.String, "images": pl.Int64, "of_images": pl.Int64, "pairs": pl.Int64, "batch_size": pl.Int64,
    "trainable_parameters": pl.Int64, "total_parameters": pl.Int64,
    **dict.fromkeys(METRICS, pl.Float64),
    **{f"paper_{m}": pl.Float64 for m in PAPER_METRICS},
    **{f"delta_{m}": pl.Float64 for m in PAPER_METRICS},
    "model": pl.String, "seed": pl.Int64, "few_shot_seed": pl.Int64, "subset_sha256": pl.String,
    "config_sha256": pl.String, "data_sha256": pl.String, "code_version": pl.String, "checkpoint": pl.String,
    "metrics_file": pl.String,
}


def _checkpoint_facts(path: Path, method: str) -> dict:
    state = require_tbps_checkpoint(path)
    subset = state.get("few_shot")
    if not subset:
        raise input_error(path, "not a few-shot run (no few-shot subset recorded; data.few_shot_fraction is 1 or "
                          "it was written by an older tbps)", "pass the final.pt of a `<experiment>-fsF` run")
    peft = state["config"]["model"].get("peft", "none")
    wanted = PEFT_OF_METHOD.get(method, "none")
    if peft != wanted:
        raise input_error(path, f"method {method!r} needs model.peft {wanted!r}, the run has {peft!r}",
                          "pass each method's own run, in the order of --methods")
    return {"fraction": float(subset["fraction"]), "images": int(subset["images"]),
            "of_images": int(subset["of_images"]), "pairs": int(subset["pairs"]),
            "few_shot_seed": int(subset["seed"]), "subset_sha256": subset["image_paths_sha256"],
            "batch_size": int(state["batch_size"]), "model": state["config"]["model"]["name"],
            "trainable_parameters": int(state["trainable_parameters"]),
            "total_parameters": int(state["total_parameters"])}


def few_shot_row(method: str, metrics_path: Path, checkpoint_path: Path, dataset: str) -> dict:
    """One run's row of the few-shot table."""
    if method not in FEW_SHOT_METHODS:
        raise UserInputError(f"few-shot method {method!r} is not one of {list(FEW_SHOT_METHODS)}. "
                             f"Fix: name each run's method by its key")
    row = load_test_t2i_row(metrics_path, dataset)
    facts = _checkpoint_facts(checkpoint_path, method)
    paper = few_shot_published(method, facts["fraction"], dataset)
    return {
        "dataset": dataset, "method": method, "paper_method": FEW_SHOT_METHODS[method], "run": row["experiment"],
        **facts, **{m: row[m] for m in METRICS},
        **{f"paper_{m}": paper.metric(m) if paper else None for m in PAPER_METRICS},
        **{f"delta_{m}": row[m] - paper.metric(m) if paper else None for m in PAPER_METRICS},
        "seed": row["seed"], "config_sha256": row["config_sha256"], "data_sha256": row["data_sha256"],
        "code_version": row["code_version"], "checkpoint": str(checkpoint_path), "metrics_file": str(metrics_path),
    }


def few_shot_table(methods: Sequence[str], metrics_paths: Sequence[Path], checkpoint_paths: Sequence[Path],
                   dataset: str) -> pl.DataFrame:
    if not len(methods) == len(metrics_paths) == len(checkpoint_paths):
        raise UserInputError(f"{len(methods)} methods, {len(metrics_paths)} metrics files and "
                             f"{len(checkpoint_paths)} checkpoints. Fix: pass one of each per run, in the same order")
    rows = [few_shot_row(m, Path(p), Path(c), dataset)
            for m, p, c in zip(methods, metrics_paths, checkpoint_paths, strict=True)]
    table = pl.DataFrame(rows, schema=FEW_SHOT_SCHEMA)
    order = {m: i for i, m in enumerate(FEW_SHOT_METHODS)}
    table = table.sort(["fraction", pl.col("method").replace_strict(order, return_dtype=pl.Int64)])
    duplicated = table.filter(pl.struct("fraction", "method").is_duplicated())
    if duplicated.height:
        raise UserInputError(f"runs {duplicated['run'].to_list()} repeat a (fraction, method). Fix: pass each run once")
    for fraction, group in table.group_by("fraction"):
        if group["subset_sha256"].n_unique() > 1:
            raise UserInputError(
                f"fraction {fraction[0]:g}: the runs {group['run'].to_list()} trained on different images (few-shot "
                f"seeds {sorted(set(group['few_shot_seed']))}). Fix: give every method the same data.few_shot_seed "
                f"and retrain (docs/method.md#d27-few-shot-sampling)")
    return table


def write_few_shot(methods: Sequence[str], metrics_paths: Sequence[Path], checkpoint_paths: Sequence[Path],
                   out: Path, *, dataset: str, html: Path | None = None) -> pl.DataFrame:
    table = few_shot_table(methods, metrics_paths, checkpoint_paths, dataset)
    write_parquet_atomic(table, out)
    log.info("wrote %s (%d runs)", out, table.height)
    if html is not None:
        from tbps.html_table import write_table_html

        shown = table.select("fraction", "method", "images", "pairs", "trainable_parameters",
                             *[c for m in PAPER_METRICS for c in (f"paper_{m}", m, f"delta_{m}")], "mINP", "run")
        write_table_html(shown, html, title=f"Few-shot: {dataset}",
                         note="Text-to-image test retrieval (%) after training on a fraction of the training images, "
                              "the same images for every method of one fraction; paper_* are the TBPS-CLIP paper's "
                              "Tables 11 and 16 (CUHK-PEDES only), delta_* = ours - paper.",
                         float_formats={c: ".2f" for c in shown.columns if c not in ("fraction",)})
    return table
