"""The compression table: frozen-vs-dropped text layer runs side by side (paper §3.5, Fig. 3, Table 17).

Inputs are pairs of a run's ``tbps evaluate`` metrics file and its ``final.pt``. The metrics give
the text-to-image test figures; the checkpoint gives what was compressed (its saved configuration
names the frozen or dropped layers), how the layers were chosen and the trainable-parameter
count. Runs are named ``<preset>`` (x = 0) and ``<preset>-freeze<x>`` / ``<preset>-drop<x>`` by the
workflow; the name and the checkpoint must agree.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from tbps.collect import METRICS, load_test_t2i_row
from tbps.errors import UserInputError, input_error
from tbps.fileio import write_parquet_atomic
from tbps.model.checkpoint_load import require_tbps_checkpoint
from tbps.published import COMPRESSION_PRESETS, compression_row

log = logging.getLogger(__name__)

MODES = ("none", "freeze", "drop")
_RUN = re.compile(r"^(?P<preset>.+?)-(?P<mode>freeze|drop)(?P<x>\d+)$")
_TEXT_BLOCK = re.compile(r"^clip\.transformer\.resblocks\.(\d+)\.")
PAPER_MODEL = "ViT-B-16"

COMPRESSION_SCHEMA = {
    "dataset": pl.String, "preset": pl.String, "run": pl.String, "mode": pl.String, "x": pl.Int64,
    "text_layers": pl.List(pl.Int64), "text_depth": pl.Int64, "layers_source": pl.String,
    "trainable_parameters": pl.Int64, "total_parameters": pl.Int64, "paper_trainable_M": pl.Float64,
    **dict.fromkeys(METRICS, pl.Float64),
    "model": pl.String, "seed": pl.Int64, "config_sha256": pl.String, "data_sha256": pl.String,
    "code_version": pl.String, "checkpoint": pl.String, "metrics_file": pl.String,
}


def run_kind(run: str) -> tuple[str, str, int | None]:
    """``'tbps_clip-drop3'`` -> ``('tbps_clip', 'drop', 3)``; a plain name -> ``(name, 'none', None)``."""
    match = _RUN.match(run)
    if match is None:
        return run, "none", None
    return match["preset"], match["mode"], int(match["x"])


def paper_trainable_millions(model: str, preset: str, x: int) -> float | None:
    """Table 17's trainable parameters for this run, when it is the paper's ViT-B/16 setting."""
    row = compression_row(x)
    if model != PAPER_MODEL or row is None or preset not in COMPRESSION_PRESETS:
        return None
    return row.trainable_millions[preset]


def _checkpoint_facts(path: Path) -> dict:
    state = require_tbps_checkpoint(path)
    if "trainable_parameters" not in state:
        raise input_error(path, "it does not record its trainable parameters (written by an older tbps)",
                          "retrain the run")
    model = state["config"]["model"]
    frozen, dropped = list(model.get("freeze_text_layers", [])), list(model.get("drop_text_layers", []))
    if frozen and dropped:
        raise input_error(path, "both frozen and dropped text layers: not a run of the compression probe",
                          "freeze or drop, one per run")
    kept = {int(m[1]) for key in state["model"] if (m := _TEXT_BLOCK.match(key))}
    choice = state.get("text_layer_choice")
    return {
        "mode": "freeze" if frozen else "drop" if dropped else "none",
        "text_layers": frozen or dropped, "text_depth": len(kept) + len(dropped), "model": model["name"],
        "layers_source": f"importance table {choice['table']} (sha256 {choice['table_sha256'][:12]})"
        if choice else "experiment config",
        "trainable_parameters": int(state["trainable_parameters"]), "total_parameters": int(state["total_parameters"]),
    }


def compression_row_of(metrics_path: Path, checkpoint_path: Path, dataset: str) -> dict:
    """One run's row of the compression table."""
    row = load_test_t2i_row(metrics_path, dataset)
    preset, mode, x = run_kind(row["experiment"])
    facts = _checkpoint_facts(checkpoint_path)
    layers = facts["text_layers"]
    if (mode, x if x is not None else 0) != (facts["mode"], len(layers)):
        raise input_error(
            checkpoint_path,
            f"run {row['experiment']!r} should have {x or 0} {mode} text layer(s) but its configuration has "
            f"{facts['mode']} {layers}", "pass each run's metrics file and its own final.pt, in the same order")
    return {
        "dataset": dataset, "preset": preset, "run": row["experiment"], "x": len(layers),
        **facts, "paper_trainable_M": paper_trainable_millions(facts["model"], preset, len(layers)),
        **{m: row[m] for m in METRICS},
        "seed": row["seed"], "config_sha256": row["config_sha256"], "data_sha256": row["data_sha256"],
        "code_version": row["code_version"], "checkpoint": str(checkpoint_path), "metrics_file": str(metrics_path),
    }


def compression_table(metrics_paths: Sequence[Path], checkpoint_paths: Sequence[Path], dataset: str) -> pl.DataFrame:
    if len(metrics_paths) != len(checkpoint_paths):
        raise UserInputError(f"{len(metrics_paths)} metrics files but {len(checkpoint_paths)} checkpoints. "
                             f"Fix: pass one final.pt per metrics file, in the same order")
    rows = [compression_row_of(Path(m), Path(c), dataset) for m, c in zip(metrics_paths, checkpoint_paths, strict=True)]
    table = pl.DataFrame(rows, schema=COMPRESSION_SCHEMA).sort(["preset", "mode", "x"])
    for preset in table["preset"].unique().to_list():
        if table.filter((pl.col("preset") == preset) & (pl.col("mode") == "none")).height != 1:
            raise UserInputError(f"preset {preset!r}: the compression table needs exactly one uncompressed run "
                                 f"(x = 0). Fix: pass the metrics and final.pt of {preset} itself")
    duplicated = table.filter(pl.struct("preset", "mode", "x").is_duplicated())
    if duplicated.height:
        raise UserInputError(f"runs {duplicated['run'].to_list()} repeat a (preset, mode, x). Fix: pass each run once")
    return table


def write_compression(metrics_paths: Sequence[Path], checkpoint_paths: Sequence[Path], out: Path, *, dataset: str,
                      figure: Path | None = None) -> pl.DataFrame:
    table = compression_table(metrics_paths, checkpoint_paths, dataset)
    write_parquet_atomic(table, out)
    log.info("wrote %s (%d runs)", out, table.height)
    if figure is not None:
        from tbps.probe.figures import plot_compression

        plot_compression(table, figure, dataset=dataset)
    return table
