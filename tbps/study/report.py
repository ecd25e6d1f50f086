"""A study table read against the paper: side by side (HTML page, terminal text) and as gains.

Everything here reads the table ``tbps study collect`` wrote (:mod:`tbps.study.table`), text->image
rows only (the paper's direction). The chart follows the house style of :mod:`tbps.plots`: our numbers
in ``C0``, the paper's in grey with a black edge, a thin line at zero, 8-9 pt labels, 11 pt title.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from tbps.html_table import write_table_html
from tbps.plots import METRIC_LABELS, _new_figure, _style, save_figure

SIDE_BY_SIDE = ("R1", "R5", "R10", "mAP")
GAIN_METRICS = ("R1", "mAP")
PAPER_BAR = {"color": "0.75", "edgecolor": "black", "linewidth": 0.6}
MISSING = "–"


def t2i_rows(df: pl.DataFrame, table: str | None = None) -> pl.DataFrame:
    rows = df.filter(pl.col("direction") == "t2i")
    if table is not None:
        rows = rows.filter(pl.col("table") == table)
    return rows.sort("position", maintain_order=True)


def tables_in(df: pl.DataFrame) -> list[str]:
    """The tables of a study table, in the order they were collected."""
    return list(dict.fromkeys(df["table"].to_list()))


def _names(rows: pl.DataFrame) -> dict[str, str]:
    return dict(zip(rows["row"].to_list(), rows["name"].to_list(), strict=True))


def _heading(rows: pl.DataFrame) -> str:
    first = rows.row(0, named=True)
    return f"{first['paper_table']} ({first['table_title']}) on {first['dataset']}"


def _gain_source(rows: pl.DataFrame) -> str | None:
    where = [d for d in rows["paper_gain_dataset"].drop_nulls().unique().to_list()]
    return ", ".join(sorted(where)) or None


def page_frame(rows: pl.DataFrame) -> pl.DataFrame:
    """One table's text->image rows as the page shows them: paper | ours | delta per metric, the gains."""
    names = _names(rows)
    columns: dict[str, list] = {"row": rows["name"].to_list(),
                                "vs": [names.get(b, "") if b else "" for b in rows["base"].to_list()]}
    for m in SIDE_BY_SIDE:
        label = METRIC_LABELS[m]
        columns[f"{label} paper"] = rows[f"paper_{m}"].to_list()
        columns[f"{label} ours"] = rows[m].to_list()
        columns[f"{label} Δ"] = rows[f"diff_{m}"].to_list()
    columns["mINP ours"] = rows["mINP"].to_list()
    for m in GAIN_METRICS:
        label = METRIC_LABELS[m]
        columns[f"gain {label} paper"] = rows[f"paper_gain_{m}"].to_list()
        columns[f"gain {label} ours"] = rows[f"gain_{m}"].to_list()
    numbers = list(columns)[2:]
    columns["status"] = rows["status"].to_list()
    columns["run"] = rows["run"].to_list()
    columns["not as in the paper"] = [d or "" for d in rows["departures"].to_list()]
    return pl.DataFrame(columns, schema_overrides=dict.fromkeys(numbers, pl.Float64))


def page_note(rows: pl.DataFrame) -> str:
    first = rows.row(0, named=True)
    gain_source = _gain_source(rows)
    has_paper = rows["paper_R1"].drop_nulls().len() > 0
    paper = (f"Paper: {first['paper_table']} of the TBPS-CLIP paper (Cao et al., AAAI 2024; "
             "its best epoch, picked on the test split)" if has_paper else
             f"Paper: none for {first['dataset']} (the paper ran its ablations on CUHK-PEDES only)")
    return (
        f"Text→image retrieval on the test split of {first['dataset']}, percent. {paper}; ours: the last "
        "epoch's checkpoint. Δ = ours − paper. Gain = a row minus the row it is read against (vs), ours "
        f"beside the paper's{f' (on {gain_source})' if gain_source else ''}: where the signs agree, the "
        "paper's conclusion holds on this data. Seed-to-seed variation in this field is about ±2 R@1. "
        "Status 'missing': the row's run has no metrics yet; 'stale': its run was trained from another "
        "definition of the row. The last column says why a row is not the paper's as described "
        "(config/study.yaml, docs/method.md D32)."
    )


def write_page(df: pl.DataFrame, table: str, out: Path) -> None:
    rows = t2i_rows(df, table)
    frame = page_frame(rows)
    floats = {c: ".2f" for c, t in frame.schema.items() if t == pl.Float64}
    write_table_html(frame, out, title=_heading(rows) + ": paper | ours | Δ", note=page_note(rows),
                     float_formats=floats)


def plot_gains(df: pl.DataFrame, table: str, out: Path) -> None:
    """Each row's gain over the row it is read against, the paper's beside ours: R@1 and mAP."""
    rows = t2i_rows(df, table).filter(pl.col("base").is_not_null())
    names = _names(t2i_rows(df, table))
    dataset = df["dataset"][0]
    gain_source = _gain_source(rows) or "CUHK-PEDES"
    with _style():
        n = max(rows.height, 1)
        fig = _new_figure(11.0, 1.6 + 0.34 * n)
        axes = fig.subplots(1, len(GAIN_METRICS), sharey=True)
        y = np.arange(rows.height)[::-1]
        labels = [f"{name}  (vs {names[base]})" for name, base in zip(rows["name"], rows["base"], strict=True)]
        for ax, m in zip(axes, GAIN_METRICS, strict=True):
            paper = np.array([math.nan if v is None else v for v in rows[f"paper_gain_{m}"].to_list()], dtype=float)
            ours = np.array([math.nan if v is None else v for v in rows[f"gain_{m}"].to_list()], dtype=float)
            ax.barh(y + 0.2, np.nan_to_num(paper), 0.38, label=f"paper ({gain_source}, best epoch on test)",
                    **PAPER_BAR)
            ax.barh(y - 0.2, np.nan_to_num(ours), 0.38, color="C0", label=f"ours ({dataset}, last epoch)")
            for yi, value in zip(y, paper, strict=True):
                if math.isnan(value):
                    ax.annotate("not printed", (0, yi + 0.2), xytext=(3, 0), textcoords="offset points",
                                va="center", fontsize=7, color="0.4")
            for yi, value in zip(y, ours, strict=True):
                if math.isnan(value):
                    ax.annotate("no result", (0, yi - 0.2), xytext=(3, 0), textcoords="offset points",
                                va="center", fontsize=7, color="C0")
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_yticks(y, labels, fontsize=8)
            ax.set_xlabel(f"gain in {METRIC_LABELS[m]} (points, text→image, test)", fontsize=9)
            ax.grid(True, axis="x", linewidth=0.3)
            ax.tick_params(axis="x", labelsize=8)
        if rows.height == 0:
            axes[0].text(0.5, 0.5, "no row of this table is read against another", ha="center", va="center",
                         transform=axes[0].transAxes)
        handles, legend = axes[0].get_legend_handles_labels()
        fig.legend(handles, legend, fontsize=8, loc="outside lower center", ncols=2)
        fig.suptitle(f"{_heading(t2i_rows(df, table))}: gain of each row over the row it is read against", fontsize=11)
        save_figure(fig, out)


# --------------------------------------------------------------------------- terminal


def _fmt(value, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def text_table(df: pl.DataFrame, table: str) -> str:
    """One table as fixed-width text: R@1 and mAP side by side with the paper, both gains, the status."""
    rows = t2i_rows(df, table)
    names = _names(rows)
    # Without published numbers for this dataset (the ablations elsewhere than CUHK-PEDES) only the
    # gains compare with the paper.
    side_by_side = rows["paper_R1"].drop_nulls().len() > 0
    if side_by_side:
        header = ["row", "vs", "R@1 paper", "ours", "Δ", "mAP paper", "ours", "Δ", "gain R@1 paper", "ours", "status"]
    else:
        header = ["row", "vs", "R@1", "mAP", "mINP", "gain R@1 paper", "ours", "gain mAP paper", "ours", "status"]
    lines = [header]
    for r in rows.iter_rows(named=True):
        vs = names.get(r["base"], "") if r["base"] else ""
        if side_by_side:
            numbers = [_fmt(r["paper_R1"]), _fmt(r["R1"]), _fmt(r["diff_R1"], True), _fmt(r["paper_mAP"]),
                       _fmt(r["mAP"]), _fmt(r["diff_mAP"], True), _fmt(r["paper_gain_R1"], True),
                       _fmt(r["gain_R1"], True)]
        else:
            numbers = [_fmt(r["R1"]), _fmt(r["mAP"]), _fmt(r["mINP"]), _fmt(r["paper_gain_R1"], True),
                       _fmt(r["gain_R1"], True), _fmt(r["paper_gain_mAP"], True), _fmt(r["gain_mAP"], True)]
        lines.append([r["name"], vs, *numbers, r["status"]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text_columns = (0, 1, len(header) - 1)
    text = ["  ".join(c.ljust(w) if i in text_columns else c.rjust(w) for i, (c, w) in
                      enumerate(zip(line, widths, strict=True))).rstrip() for line in lines]
    departures = sorted({d for value in rows["departures"].drop_nulls() for d in value.split("; ")})
    notes = [f"  not as in the paper: {d}" for d in departures]
    gain_source = _gain_source(rows)
    intro = (f"{_heading(rows)}: text->image, test split, percent; paper = its best epoch on the test split"
             + (f", paper gains on {gain_source}" if gain_source else ""))
    return "\n".join([intro, *text, *notes])


def text_report(df: pl.DataFrame, tables: list[str] | None = None) -> str:
    """Every table of a study table (or ``tables``), one after the other."""
    keys = tables_in(df) if tables is None else tables
    unknown = [k for k in keys if k not in tables_in(df)]
    if unknown:
        from tbps.errors import UserInputError

        raise UserInputError(f"no table(s) {unknown} in this study table. Fix: use one of {tables_in(df)}")
    counts = df.filter((pl.col("direction") == "t2i") & pl.col("table").is_in(keys)).group_by("status").len()
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.iter_rows()))
    return "\n\n".join([text_table(df, k) for k in keys] + [f"rows: {status}"]) + "\n"
