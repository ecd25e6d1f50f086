"""``tbps plots training|metrics|examples|table``: figures and pages for the Snakemake report."""

from __future__ import annotations

import argparse
from pathlib import Path

from tbps.cli.argtypes import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plots",
        help="report figures: training curves, metrics vs the paper, retrieval examples (PNG); tables (HTML)",
        description="Deterministic PNG figures and HTML pages (same inputs, same bytes), written atomically. "
                    "Charts stay under 1 MB, the retrieval examples under 10 MB (see tbps/plots.py).",
    )
    figures = parser.add_subparsers(dest="figure", metavar="FIGURE", required=True)

    training = figures.add_parser(
        "training", help="loss (total and per term), lr, logit scale, samples/s per step; val R@1/mAP per epoch")
    training.add_argument("--log", required=True, type=Path, help="train_log.parquet written by `tbps train`")
    training.add_argument("--val-curve", type=Path, default=None, metavar="PATH",
                          help="val_curve.parquet written by `tbps train` (drawn when it has rows)")
    training.add_argument("--out", required=True, type=Path, help="PNG file to write")
    training.add_argument("--title", default=None, help="figure title (default: the log's path)")
    training.set_defaults(func=_training)

    metrics = figures.add_parser(
        "metrics", help="R@1/R@5/R@10/mAP/mINP bars per experiment, with the paper's values and chance level")
    metrics.add_argument("--inputs", required=True, nargs="+", type=Path, metavar="PARQUET",
                         help="metrics files written by `tbps evaluate` (validated as by `tbps collect`)")
    metrics.add_argument("--dataset", required=True, help="dataset whose text->image test rows are drawn")
    metrics.add_argument("--annotations", type=Path, default=None,
                         help="annotations.parquet of the dataset: draws the chance level of a random ranking")
    metrics.add_argument("--out", required=True, type=Path, help="PNG file to write")
    metrics.add_argument("--title", default=None, help="figure title")
    metrics.add_argument("--headline", type=Path, default=None, metavar="RST",
                         help="also write the figure's numbers (ours, the paper's, chance) as a reStructuredText "
                              "table: the report's landing page includes it")
    metrics.set_defaults(func=_metrics)

    examples = figures.add_parser(
        "examples", help="sample queries and worst failures with their top-5 images (green = correct)")
    examples.add_argument("--examples", required=True, type=Path,
                          help="examples Parquet written by `tbps evaluate --examples`")
    examples.add_argument("--raw", required=True, type=Path,
                          help="raw dataset folder (image_path in the examples is relative to it)")
    examples.add_argument("--out", required=True, type=Path, help="PNG file to write")
    examples.add_argument("--per-kind", type=positive_int, default=6,
                          help="queries shown per kind (sample, worst; default 6)")
    examples.add_argument("--title", default=None, help="figure title")
    examples.set_defaults(func=_examples)

    table = figures.add_parser(
        "table", help="a Parquet table as a self-contained HTML page (opens in a browser and in the report)")
    table.add_argument("--table", required=True, type=Path, help="Parquet file written by a tbps stage")
    table.add_argument("--out", required=True, type=Path, help="HTML file to write")
    table.add_argument("--title", default=None, help="page title (default: the table's path)")
    table.add_argument("--note", default=None, help="a sentence under the title (what the rows are)")
    table.add_argument("--max-rows", type=positive_int, default=2000,
                       help="longest table shown in full; a longer one shows this many evenly spaced rows "
                            "(default 2000)")
    table.set_defaults(func=_table)


def _training(args) -> int:
    from tbps.plots import plot_training

    plot_training(args.log, args.out, val_curve=args.val_curve, title=args.title)
    return 0


def _metrics(args) -> int:
    from tbps.plots import plot_metrics_from_files

    plot_metrics_from_files(args.inputs, args.out, dataset=args.dataset, annotations=args.annotations,
                            title=args.title, headline=args.headline)
    return 0


def _examples(args) -> int:
    from tbps.plots import plot_examples

    plot_examples(args.examples, args.raw, args.out, per_kind=args.per_kind, title=args.title)
    return 0


def _table(args) -> int:
    from tbps.html_table import parquet_to_html

    parquet_to_html(args.table, args.out, title=args.title, note=args.note, max_rows=args.max_rows)
    return 0
