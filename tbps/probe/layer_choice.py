"""Which text layers to freeze or drop: the x with the smallest summed whole-layer C¹ + C²
(paper App. B.2; docs/method.md D24).

The paper enumerates all C(L, x) subsets of the L text layers and keeps the subset with the
smallest sum of its layers' "Whole" C¹ + C² scores. The sum is additive over layers, so that
subset is exactly the x layers with the smallest individual scores (ties: the lower layer id
first); :func:`choose_text_layers` takes them directly, and the choices for x = 1..5 are nested
as in Table 17.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import polars as pl

from tbps.config import ExperimentConfig, ImportanceChoice
from tbps.errors import UserInputError, input_error
from tbps.fileio import read_parquet_checked, sha256_file

log = logging.getLogger(__name__)

_FIX = "build it with `tbps probe importance`"


def layer_scores(table: pl.DataFrame, source: str | Path = "<importance table>") -> pl.DataFrame:
    """Per text layer, its whole-layer C¹ + C² (columns ``layer``, ``score``), by layer."""
    whole = table.filter((pl.col("tower") == "text") & (pl.col("module") == "Whole"))
    if whole.height == 0:
        raise input_error(source, "it has no whole-layer rows of the text tower", _FIX)
    if whole["layer"].n_unique() != whole.height:
        raise input_error(source, "a text layer appears more than once", _FIX)
    bad = whole.filter(pl.col("C1").is_null() | pl.col("C2").is_null() | ~pl.col("C1").is_finite()
                       | ~pl.col("C2").is_finite())
    if bad.height:
        raise input_error(source, f"text layer {bad['layer'][0]} has no finite C1/C2", _FIX)
    return whole.select("layer", (pl.col("C1") + pl.col("C2")).alias("score")).sort("layer")


def choose_text_layers(table: pl.DataFrame, x: int, source: str | Path = "<importance table>") -> tuple[int, ...]:
    """The x text layers (1-based, ascending) with the smallest summed whole-layer C¹ + C²."""
    scores = layer_scores(table, source)
    if not 0 <= x < scores.height:
        raise UserInputError(f"{source}: cannot choose {x} of its {scores.height} text layers. "
                             f"Fix: choose 0..{scores.height - 1}")
    return tuple(sorted(scores.sort(["score", "layer"])["layer"][:x].to_list()))


def read_importance(path: str | Path) -> pl.DataFrame:
    return read_parquet_checked(path, "importance table", _FIX, ("tower", "layer", "module", "C1", "C2", "model"))


def resolve_importance_choice(cfg: ExperimentConfig) -> tuple[ExperimentConfig, dict | None]:
    """Replace ``model.compress_from_importance`` by the layer ids it chooses.

    Returns a copy of ``cfg`` whose ``model.freeze_text_layers`` or ``model.drop_text_layers`` names
    the chosen layers (and whose choice is cleared, so the saved configuration needs no table),
    and a record of the choice for the checkpoint (None when nothing was chosen from a table).
    """
    choice = cfg.model.compress_from_importance
    if choice.table is None:
        return cfg, None
    if cfg.model.freeze_text_layers or cfg.model.drop_text_layers:
        raise UserInputError(
            "model.compress_from_importance and model.freeze_text_layers/drop_text_layers are both set. "
            "Fix: either list the layers or choose them from the table")
    table = read_importance(choice.table)
    models = table["model"].unique().to_list()
    if models != [cfg.model.name]:
        raise input_error(choice.table, f"it measured {models}, not the experiment's {cfg.model.name!r}",
                          "use the importance table of a model with the same architecture")
    layers = choose_text_layers(table, choice.x, choice.table)
    resolved = copy.deepcopy(cfg)
    target = "freeze_text_layers" if choice.mode == "freeze" else "drop_text_layers"
    setattr(resolved.model, target, layers)
    resolved.model.compress_from_importance = ImportanceChoice()
    record = {"table": str(choice.table), "table_sha256": sha256_file(choice.table), "x": choice.x,
              "mode": choice.mode, "layers": list(layers)}
    log.info("text layers to %s, chosen from %s (smallest whole-layer C1 + C2, x = %d): %s", choice.mode,
             choice.table, choice.x, list(layers))
    return resolved, record
