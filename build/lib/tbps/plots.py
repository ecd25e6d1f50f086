"""Report figures: training curves, metrics against the paper / chance, retrieval examples.

Figures are drawn on matplotlib's Agg canvas with the default style (a user's
matplotlibrc must not change them), saved as PNG without the software-version
metadata, so the same inputs give byte-identical files; they are written
atomically. Charts stay under ``MAX_FIGURE_BYTES``; the retrieval page, the only
figure made of photos, has its own measured cap (``MAX_EXAMPLES_BYTES``).

House style (for every report page, including the ones other stages add):

- Colours: experiments, runs or series take matplotlib's default cycle in a fixed order
  (``C0``, ``C1``, ... by sorted name), so one experiment keeps its colour across pages.
  Right/wrong retrievals are ``CORRECT_COLOUR`` (green) / ``WRONG_COLOUR`` (red).
- Metrics: ``METRICS`` in that order, labelled with ``METRIC_LABELS`` (R@1 ... mINP), in
  percent on a 0-105 axis; text->image on the test split unless the title says otherwise.
- Paper marks: the published value of the matching row (``tbps.published``) as a short black
  horizontal tick over the bar, value printed above it; the legend entry says where the numbers
  come from and that the paper picked its epoch on the test split. Nothing is drawn where the
  paper has no number.
- Chance: the expected value of a random ranking (``chance_levels``), a dashed grey
  (``CHANCE_COLOUR``) line across the metric's group, its R@1 in the legend.
- Text: titles 11 pt, axis labels and legends 8-9 pt, nothing smaller than 7 pt at the saved
  resolution; figures are 7-16 in wide so the report (which fits a figure to the window)
  shows them at about their design size.
- Captions (workflow/report/*.rst): say what is plotted, on which split, in which direction and
  units, and cite the paper by section/table or ``docs/method.md``. reStructuredText turns
  ``R@10`` into an e-mail link: write ``R\\@10`` (it renders as "R@10").
"""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from tbps.errors import input_error
from tbps.fileio import read_parquet_checked, write_bytes_atomic

log = logging.getLogger(__name__)

MAX_FIGURE_BYTES = 1_000_000
# The retrieval page at EXAMPLES_DPI, full colour: 24 queries x top-5 of photo-like person crops
# measured 7.6 MB, the default 12 queries 3.8 MB (benchmarks/examples_figure.py, BENCHMARKS.md
# "Report figures"). The cap leaves room for 24 queries of real photos, so they are never drawn
# at a lower resolution; only noise-like content goes over (12.5 MB at 24 queries): the page is
# then re-rendered smaller, down to MIN_EXAMPLES_DPI, with a warning.
MAX_EXAMPLES_BYTES = 10_000_000
EXAMPLES_DPI = 180
MIN_EXAMPLES_DPI = 110
# Largest (width, height) a gallery image is loaded at: more than its cell on the page at EXAMPLES_DPI.
EXAMPLE_THUMBNAIL = (256, 512)
METRICS = ("R1", "R5", "R10", "mAP", "mINP")
METRIC_LABELS = {"R1": "R@1", "R5": "R@5", "R10": "R@10", "mAP": "mAP", "mINP": "mINP"}
# Known loss terms first, in the order of docs/method.md#losses; anything else training logs follows by name.
LOSS_ORDER = ("n_itc", "n_itc_mvs", "r_itc", "ss_i", "c_itc")
TRAIN_LOG_COLUMNS = ("epoch", "global_step", "lr", "logit_scale", "samples_per_s", "loss_total")
EXAMPLE_COLUMNS = {
    "kind": pl.String, "query": pl.Int64, "caption": pl.String, "query_person_id": pl.Int64,
    "first_positive_rank": pl.Int64, "rank": pl.Int64, "image_path": pl.String, "person_id": pl.Int64,
    "correct": pl.Boolean, "score": pl.Float64,
}
CORRECT_COLOUR, WRONG_COLOUR = "#1a9850", "#d73027"
PAPER_COLOUR, CHANCE_COLOUR = "black", "0.3"
PAPER_LEGEND = "paper (its best epoch, picked on the test split)"


# --------------------------------------------------------------------------- saving


def _render(fig, dpi: float) -> bytes:
    """The figure as an RGB PNG (opaque white background: no alpha channel to store). Written by
    Pillow with no text chunks, so the matplotlib version does not change the bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="png")
    return buf.getvalue()


def save_figure(fig, out: Path, *, dpi: float = 100, min_dpi: float = 40, max_bytes: int = MAX_FIGURE_BYTES) -> int:
    """Write ``fig`` as an RGB(A) PNG atomically, lowering the resolution (not below ``min_dpi``)
    until it fits ``max_bytes``."""
    data = _render(fig, dpi)
    while len(data) > max_bytes and dpi > min_dpi:
        dpi = max(min_dpi, dpi * 0.8)
        data = _render(fig, dpi)
    if len(data) > max_bytes:
        log.warning("%s is %d bytes even at %.0f dpi", out, len(data), dpi)
    write_bytes_atomic(out, data)
    log.info("wrote %s (%d bytes, %.0f dpi)", out, len(data), dpi)
    return len(data)


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _style():
    import matplotlib.style

    return matplotlib.style.context("default")


# --------------------------------------------------------------------------- training curves


def read_train_log(path: Path) -> pl.DataFrame:
    path = Path(path)
    fix = "rerun `tbps train` to rewrite it"
    df = read_parquet_checked(path, "training log", fix, TRAIN_LOG_COLUMNS)
    if df.height == 0:
        raise input_error(path, "has no rows (no training step was logged)", fix)
    for column in [*TRAIN_LOG_COLUMNS, *loss_terms(df.columns)]:
        if not (df.schema[column].is_numeric()):
            raise input_error(path, f"column {column} has dtype {df.schema[column]}, expected a number", fix)
    return df.sort("global_step")


def loss_terms(columns: Sequence[str]) -> list[str]:
    """Loss-term columns (``loss_<term>``, without the total), known terms first."""
    terms = [c.removeprefix("loss_") for c in columns if c.startswith("loss_") and c != "loss_total"]
    known = [t for t in LOSS_ORDER if t in terms]
    return [f"loss_{t}" for t in known + sorted(set(terms) - set(known))]


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` points (shorter at the start), same length as the input."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (csum[idx] - csum[start]) / (idx - start)


def _epoch_lines(ax, df: pl.DataFrame) -> None:
    """Faint vertical lines where each epoch after the first starts."""
    starts = df.group_by("epoch").agg(pl.col("global_step").min()).sort("epoch")["global_step"].to_list()[1:]
    for x in starts:
        ax.axvline(x - 0.5, color="0.85", linewidth=0.8, zorder=0)


def _curve(ax, x, y, label: str | None, colour, window: int) -> None:
    if window > 1:
        ax.plot(x, y, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(x, moving_average(y, window), color=colour, linewidth=1.5, label=label)
    else:
        ax.plot(x, y, color=colour, linewidth=1.5, marker="." if len(x) < 30 else None, label=label)


def plot_training(train_log: Path, out: Path, *, val_curve: Path | None = None, title: str | None = None) -> None:
    """Total loss, each loss term, lr, logit scale and samples/s against the step; the per-epoch
    validation R@1/mAP (text->image, solid; image->text, dashed) when a validation curve is given."""
    from tbps.collect import read_val_curve

    df = read_train_log(train_log)
    val = read_val_curve(val_curve) if val_curve is not None else None
    x = df["global_step"].to_numpy()
    window = max(1, len(x) // 50)
    terms = loss_terms(df.columns)
    with _style():
        fig = _new_figure(12, 7.5)
        axes = fig.subplots(2, 3)
        palette = [f"C{i}" for i in range(10)]

        ax = axes[0, 0]
        _curve(ax, x, df["loss_total"].to_numpy(), "total", "C0", window)
        ax.set_title("total loss")

        ax = axes[0, 1]
        for i, term in enumerate(terms):
            _curve(ax, x, df[term].to_numpy(), term.removeprefix("loss_"), palette[(i + 1) % 10], window)
        if terms:
            values = df.select(terms).to_numpy()
            if np.all(values > 0):
                ax.set_yscale("log")  # the terms differ by orders of magnitude (C-ITC is tiny)
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no per-term losses logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("loss terms (unweighted)")

        ax = axes[0, 2]
        ax.plot(x, df["lr"].to_numpy(), color="C3")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.set_title("learning rate")

        ax = axes[1, 0]
        ax.plot(x, df["logit_scale"].to_numpy(), color="C4")
        ax.set_title("logit scale (clamped)")

        ax = axes[1, 1]
        _curve(ax, x, df["samples_per_s"].to_numpy(), None, "C5", window)
        ax.set_title("throughput (samples/s)")

        for a in (*axes[0], *axes[1, :2]):
            _epoch_lines(a, df)
            a.set_xlabel("step")
            a.grid(True, linewidth=0.3)

        _plot_val(axes[1, 2], val)
        suffix = f"  (light: per step; dark: mean of {window} steps)" if window > 1 else ""
        fig.suptitle((title or str(train_log)) + suffix, fontsize=11)
        save_figure(fig, out)


def _plot_val(ax, val: pl.DataFrame | None) -> None:
    ax.set_title("validation (per epoch)")
    if val is None or val.height == 0:
        ax.text(0.5, 0.5, "no validation curve\n(no val split, or per-epoch\nvalidation switched off)",
                ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_axis_off()
        return
    for direction, style in (("t2i", "-"), ("i2t", "--")):
        rows = val.filter(pl.col("direction") == direction).sort("epoch")
        if rows.height == 0:
            continue
        for metric, colour in (("R1", "C0"), ("mAP", "C1")):
            ax.plot(rows["epoch"].to_numpy(), rows[metric].to_numpy(), style, color=colour, marker="o",
                    markersize=4, label=f"{direction} {METRIC_LABELS[metric]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("percent")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8)


# --------------------------------------------------------------------------- metrics vs paper / chance


def chance_levels(positives: np.ndarray, gallery: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected R@K, mAP and mINP (percent) of a uniformly random ranking.

    ``positives`` holds n_q (relevant gallery items) per query, gallery size G. For one query:
    P(hit within K) = 1 - C(G-n, K) / C(G, K);
    E[AP] = (1/G) * [H_G + (n-1)/(G-1) * (G - H_G)]  (H_G the G-th harmonic number),
    from E[precision at a positive's rank r] = (1 + (r-1)(n-1)/(G-1)) / r with r uniform on 1..G;
    E[INP] = sum over m of (n/m) * P(last positive at rank m), P = C(m-1, n-1) / C(G, n).
    """
    from math import lgamma

    n = np.asarray(positives, dtype=np.int64)
    if n.size == 0 or gallery < 1 or np.any(n < 1) or np.any(n > gallery):
        raise ValueError("every query needs 1 <= positives <= gallery size")
    values, counts = np.unique(n, return_counts=True)
    harmonic = float(np.sum(1.0 / np.arange(1, gallery + 1)))
    out = {}
    for k in ks:
        miss = []
        for v in values:
            j = np.arange(min(k, gallery))
            miss.append(float(np.prod(np.clip((gallery - v - j) / (gallery - j), 0.0, None))))
        out[f"R{k}"] = 100.0 * float(np.sum(counts * (1.0 - np.asarray(miss)))) / n.size
    extra = (values - 1) / (gallery - 1) * (gallery - harmonic) if gallery > 1 else np.zeros(len(values))
    ap = (harmonic + extra) / gallery
    out["mAP"] = 100.0 * float(np.sum(counts * ap)) / n.size
    log_gamma = np.vectorize(lgamma)
    inp = []
    for v in values:
        m = np.arange(v, gallery + 1, dtype=np.float64)
        # log C(m-1, v-1) - log C(G, v), in log space: the binomials overflow for real galleries.
        log_p = (log_gamma(m) - log_gamma(float(v)) - log_gamma(m - v + 1)
                 - (lgamma(gallery + 1.0) - lgamma(v + 1.0) - lgamma(gallery - v + 1.0)))
        inp.append(float(np.sum(v / m * np.exp(log_p))))
    out["mINP"] = 100.0 * float(np.sum(counts * np.asarray(inp))) / n.size
    return out


def chance_from_annotations(annotations: Path, split: str = "test") -> dict[str, float]:
    """Chance levels of the text->image protocol (every caption a query, every image in the gallery)."""
    path = Path(annotations)
    fix = "pass the annotations.parquet written by `tbps prepare`"
    try:
        table = pl.read_parquet(path, columns=["split", "person_id", "image_path"])
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise input_error(path, f"cannot read split, person_id and image_path ({type(e).__name__})", fix) from None
    table = table.filter(pl.col("split") == split)
    if table.height == 0:
        raise input_error(path, f"has no {split} rows", fix)
    images = table.unique("image_path").group_by("person_id").agg(pl.len().alias("n"))
    per_query = table.join(images, on="person_id")["n"].to_numpy()
    return chance_levels(per_query, int(images["n"].sum()))


def _bar_label(row: dict, dataset: str) -> str:
    label = row["experiment"]
    if row["train_dataset"] != dataset:
        label += f" (trained on {row['train_dataset']})"
    if row["selection"] != "last":
        label += f" ({row['selection']})"
    return label


def metric_rows(metrics: pl.DataFrame, dataset: str) -> pl.DataFrame:
    """The text->image test rows of ``dataset`` in the order the figure and the headline show them."""
    rows = metrics.filter((pl.col("dataset") == dataset) & (pl.col("split") == "test")
                          & (pl.col("direction") == "t2i")).sort(["train_dataset", "experiment", "selection"])
    if rows.height == 0:
        raise input_error(dataset, "no text->image test rows for this dataset in the metrics",
                          "pass the evaluation files of this dataset")
    return rows


def paper_row(row: dict, dataset: str):
    """The published row a metrics row compares with (tbps.published), or None."""
    from tbps.published import for_experiment

    if row["train_dataset"] != dataset:
        return None
    return for_experiment(row["experiment"], dataset, row["selection"])


def plot_metrics(metrics: pl.DataFrame, out: Path, *, dataset: str, chance: dict[str, float] | None = None,
                 title: str | None = None) -> None:
    """Grouped bars of R@1/R@5/R@10/mAP/mINP (text->image, test) per experiment of ``dataset``; the
    paper's value of the matching method as a black tick on each bar (real datasets); chance as dashed
    lines."""
    entries = list(metric_rows(metrics, dataset).iter_rows(named=True))
    n_bars = len(entries)
    width = 0.8 / n_bars
    group_x = np.arange(len(METRICS))
    with _style():
        fig = _new_figure(min(16.0, max(8.0, 2.0 + 2.8 * n_bars)), 5.0)
        ax = fig.subplots()
        paper_handle = None
        for i, row in enumerate(entries):
            xs = group_x - 0.4 + width * (i + 0.5)
            ys = [row[m] for m in METRICS]
            paper = paper_row(row, dataset)
            label = _bar_label(row, dataset) + (f"  [paper: {paper.method}]" if paper else "")
            bars = ax.bar(xs, ys, width * 0.92, color=f"C{i % 10}", label=label)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center", color="white", fontweight="bold")
            if paper is not None:
                for x, m in zip(xs, METRICS, strict=True):
                    value = paper.metric(m)
                    if value is None:
                        continue
                    paper_handle = ax.hlines(value, x - width * 0.5, x + width * 0.5, colors=PAPER_COLOUR,
                                             linewidth=2.5, zorder=3)
                    ax.annotate(f"{value:.1f}", (x, value), xytext=(0, 2), textcoords="offset points",
                                ha="center", va="bottom", fontsize=7, fontweight="bold")
        chance_handle = None
        if chance:
            for gx, m in zip(group_x, METRICS, strict=True):
                if m in chance:
                    chance_handle = ax.hlines(chance[m], gx - 0.45, gx + 0.45, colors=CHANCE_COLOUR,
                                              linestyles="dashed", linewidth=1.2, zorder=4)
        handles, labels = ax.get_legend_handles_labels()
        if paper_handle is not None:
            handles.append(paper_handle)
            labels.append(PAPER_LEGEND)
        if chance_handle is not None:
            handles.append(chance_handle)
            labels.append(f"chance (random ranking; R@1 {chance['R1']:.2f})")
        fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=2)
        ax.set_xticks(group_x, [METRIC_LABELS[m] for m in METRICS])
        ax.set_ylabel("percent (text->image, test split)")
        ax.set_ylim(0, 105)
        ax.grid(True, axis="y", linewidth=0.3)
        ax.set_title(title or f"{dataset}: retrieval metrics (ours: last epoch)", fontsize=11)
        save_figure(fig, out)


# --------------------------------------------------------------------------- retrieval examples


def read_examples(path: Path) -> pl.DataFrame:
    path = Path(path)
    fix = "rerun `tbps evaluate --examples` to rewrite it"
    df = read_parquet_checked(path, "examples file", fix, EXAMPLE_COLUMNS)
    try:
        return df.select(pl.col(c).cast(t, strict=True) for c, t in EXAMPLE_COLUMNS.items())
    except pl.exceptions.PolarsError as e:
        raise input_error(path, f"a column has the wrong type ({e})", fix) from None


def _load_image(raw: Path, rel: str, source: Path, record: int):
    from tbps.image_decode import ImageDecodeError, decode_image
    from tbps.ingest.image_files import OUTSIDE_RAW_ROOT, RefusedImagePath, raw_image_file

    try:
        im = decode_image(raw_image_file(raw, rel).read_bytes())
    except RefusedImagePath as refused:
        if refused.reason == OUTSIDE_RAW_ROOT:
            raise input_error(source, f"image_path {rel!r} {refused.detail}", "rerun `tbps evaluate`",
                              record=record) from None
        raise input_error(source, f"image {rel} is not in {raw} ({refused.detail})",
                          "pass --raw the raw dataset folder the shards were built from", record=record) from None
    except (ImageDecodeError, OSError) as e:
        raise input_error(source, f"image {rel} cannot be decoded ({e})", "check the raw dataset",
                          record=record) from None
    im.thumbnail(EXAMPLE_THUMBNAIL)  # never below the pixels its cell gets on the page
    return np.asarray(im)


def _select_queries(df: pl.DataFrame, per_kind: int) -> list[tuple[str, int]]:
    """The first ``per_kind`` queries of each kind, in the file's order."""
    chosen = []
    for kind in ("sample", "worst"):
        queries = df.filter(pl.col("kind") == kind)["query"].unique(maintain_order=True).to_list()
        chosen += [(kind, q) for q in queries[:per_kind]]
    return chosen


def plot_examples(examples: Path, raw: Path, out: Path, *, per_kind: int = 6, top_k: int = 5,
                  title: str | None = None) -> None:
    """One row per query: the caption, then its top-k gallery images framed green (same person) or red.

    Laid out for the report, which fits a figure to the window (about 1100 px): at EXAMPLES_DPI the
    page is about 1550 px wide, so its 8.5 pt captions show at about 15 px; photos keep their
    aspect ratio and colours (RGB PNG, no palette)."""
    examples, raw = Path(examples), Path(raw)
    df = read_examples(examples).with_row_index("_record")
    queries = _select_queries(df, per_kind)
    if not queries:
        raise input_error(examples, "has no 'sample' or 'worst' queries", "rerun `tbps evaluate --examples`")
    text_in, image_in, row_in = 2.9, 1.15, 2.0
    with _style():
        fig = _new_figure(text_in + image_in * top_k, row_in * len(queries) + 0.5)
        grid = fig.add_gridspec(len(queries), top_k + 1, width_ratios=[text_in] + [image_in] * top_k)
        for r, (kind, query) in enumerate(queries):
            hits = df.filter((pl.col("kind") == kind) & (pl.col("query") == query)).sort("rank").head(top_k)
            first = hits.row(0, named=True)
            text_ax = fig.add_subplot(grid[r, 0])
            text_ax.set_axis_off()
            heading = ("sample query" if kind == "sample" else "worst failure") + \
                f" #{query}, person {first['query_person_id']}\nfirst correct image at rank {first['first_positive_rank']}"
            caption = textwrap.fill(first["caption"], width=42, max_lines=8, placeholder=" ...")
            text_ax.text(0.0, 1.0, heading, fontsize=9, fontweight="bold", va="top", transform=text_ax.transAxes)
            text_ax.text(0.0, 0.76, caption, fontsize=8.5, va="top", transform=text_ax.transAxes)
            for c, hit in enumerate(hits.iter_rows(named=True)):
                ax = fig.add_subplot(grid[r, c + 1])
                ax.imshow(_load_image(raw, hit["image_path"], examples, hit["_record"]))
                ax.set_xticks([])
                ax.set_yticks([])
                colour = CORRECT_COLOUR if hit["correct"] else WRONG_COLOUR
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3)
                ax.set_title(f"#{hit['rank']} id {hit['person_id']} ({hit['score']:.2f})", fontsize=7.5, color=colour)
        fig.suptitle(title or f"retrieval examples: {examples}", fontsize=11)
        save_figure(fig, out, dpi=EXAMPLES_DPI, min_dpi=MIN_EXAMPLES_DPI, max_bytes=MAX_EXAMPLES_BYTES)


def plot_metrics_from_files(inputs: Sequence[Path], out: Path, *, dataset: str, annotations: Path | None = None,
                            title: str | None = None, headline: Path | None = None) -> None:
    """``plot_metrics`` from per-run evaluation files (validated like ``tbps collect`` does); with
    ``headline``, the same numbers as the report's landing-page table (``tbps.headline``)."""
    from tbps.collect import collect_frame

    chance = chance_from_annotations(annotations) if annotations is not None else None
    if chance is not None:
        log.info("chance levels on %s: %s", dataset, {k: round(v, 3) for k, v in chance.items()})
    metrics = collect_frame(inputs)
    plot_metrics(metrics, out, dataset=dataset, chance=chance, title=title)
    if headline is not None:
        from tbps.headline import write_headline

        write_headline(metrics, headline, dataset=dataset, chance=chance)
        log.info("wrote %s", headline)


__all__ = [
    "chance_from_annotations", "chance_levels", "loss_terms", "metric_rows", "moving_average", "paper_row",
    "plot_examples", "plot_metrics", "plot_metrics_from_files", "plot_training", "save_figure",
]
