"""Report figures of the compression probe: importance heat maps and R@1 against x.

Same conventions as :mod:`tbps.plots`: matplotlib's default style on an Agg canvas, PNG without
version metadata (same inputs, same bytes), written atomically and kept under its size limit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from tbps.errors import input_error
from tbps.fileio import read_parquet_checked
from tbps.plots import save_figure
from tbps.probe.modules import KINDS, TOWERS

MEASURES = {"C1": "C¹ contribution (R@1 drop when removed, / tower max)",
            "C2": "C² criticality (smallest α keeping R@1 within ε)"}
MODE_STYLE = {"freeze": ("C0", "-", "o"), "drop": ("C3", "--", "s")}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _style():
    import matplotlib.style

    return matplotlib.style.context("default")


def importance_grid(table: pl.DataFrame, tower: str, measure: str) -> tuple[np.ndarray, list[int]]:
    """``measure`` of one tower as a (module kind x layer) array; NaN where a module is missing."""
    rows = table.filter(pl.col("tower") == tower)
    layers = sorted(rows["layer"].unique().to_list())
    grid = np.full((len(KINDS), len(layers)), np.nan)
    for row in rows.iter_rows(named=True):
        grid[KINDS.index(row["module"]), layers.index(row["layer"])] = row[measure]
    return grid, layers


def plot_importance(table: pl.DataFrame, out: Path, *, title: str | None = None) -> None:
    """Four heat maps (image/text x C¹/C²), layers across and SA/FF/Whole down, as in the paper's Fig. 5."""
    towers = [t for t in TOWERS if t in set(table["tower"].to_list())]
    with _style():
        fig = _figure(4.0 + 0.55 * max(table["layer"].max(), 6) * 2, 1.9 * len(towers) + 1.2)
        axes = fig.subplots(len(towers), len(MEASURES), squeeze=False)
        for i, tower in enumerate(towers):
            for j, (measure, label) in enumerate(MEASURES.items()):
                ax = axes[i][j]
                grid, layers = importance_grid(table, tower, measure)
                image = ax.imshow(grid, cmap="viridis", vmin=min(0.0, np.nanmin(grid)), vmax=1.0, aspect="auto")
                for (r, c), value in np.ndenumerate(grid):
                    if np.isfinite(value):
                        # Round half-hundredths to a plain 0.00 rather than "-0.00".
                        label = f"{value:.2f}" if abs(value) >= 0.005 else "0.00"
                        ax.text(c, r, label, ha="center", va="center", fontsize=7,
                                color="white" if value < 0.6 else "black")
                ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
                ax.set_yticks(range(len(KINDS)), KINDS)
                ax.set_xlabel(f"{tower} layer (1 = next to the {'patch' if tower == 'image' else 'token'} embedding)")
                ax.set_title(f"{tower} encoder: {label}", fontsize=9)
                fig.colorbar(image, ax=ax, shrink=0.9)
        first = table.row(0, named=True)
        fig.suptitle(title or f"{first['experiment']} on {first['dataset']} ({first['split']} split, "
                     f"reference R@1 {first['R1_reference']:.2f}, θ₀ = {first['theta0']}, ε = {first['epsilon']:g})",
                     fontsize=10)
        save_figure(fig, out)


def plot_compression(table: pl.DataFrame, out: Path, *, dataset: str, title: str | None = None) -> None:
    """R@1 against the number x of text layers frozen or dropped, one panel per preset (paper Fig. 3)."""
    presets = sorted(table["preset"].unique().to_list())
    if not presets:
        raise input_error(out, "the compression table is empty", "pass the runs of at least one preset")
    with _style():
        fig = _figure(5.0 * len(presets) + 0.5, 4.2)
        axes = fig.subplots(1, len(presets), squeeze=False, sharey=True)[0]
        for ax, preset in zip(axes, presets, strict=True):
            rows = table.filter(pl.col("preset") == preset)
            base = rows.filter(pl.col("mode") == "none")
            depth = int(rows["text_depth"].max())
            for mode, (colour, line, marker) in MODE_STYLE.items():
                series = pl.concat([base, rows.filter(pl.col("mode") == mode)]).sort("x")
                ax.plot(series["x"], series["R1"], color=colour, linestyle=line, marker=marker, label=mode)
                for row in series.filter(pl.col("x") > 0).iter_rows(named=True):
                    ax.annotate(",".join(map(str, row["text_layers"])), (row["x"], row["R1"]), xytext=(0, 6),
                                textcoords="offset points", ha="center", fontsize=7, color=colour)
            ax.set_xticks(sorted(rows["x"].unique().to_list()))
            ax.set_xlabel(f"x = text layers frozen or dropped (of {depth}; labels: layer ids, 1-based)")
            ax.set_title(preset, fontsize=10)
            ax.grid(True, linewidth=0.3)
            ax.legend(fontsize=8)
        # At least 10 points of R@1 in view: a zoomed axis would make seed noise look like an effect.
        low, high = float(table["R1"].min()), float(table["R1"].max())
        middle, half = (low + high) / 2, max(5.0, (high - low) / 2 + 1.5)
        axes[0].set_ylim(max(0.0, middle - half), min(100.0, middle + half))
        axes[0].set_ylabel("R@1 (text->image, test, %)")
        fig.suptitle(title or f"{dataset}: freezing vs dropping text layers", fontsize=11)
        save_figure(fig, out)


def plot_importance_file(path: Path, out: Path, *, title: str | None = None) -> None:
    table = read_parquet_checked(path, "importance table", "build it with `tbps probe importance`",
                                 ("tower", "layer", "module", "C1", "C2", "experiment", "dataset", "split",
                                  "R1_reference", "theta0", "epsilon"))
    plot_importance(table, out, title=title)
