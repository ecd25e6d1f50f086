"""`tbps collect`: per-run metrics (+ validation curves) -> one validated metrics table."""

from __future__ import annotations

from pathlib import Path

TABLE_NOTE = (
    "One row per (dataset, train_dataset, experiment, split, direction, selection, epoch); metrics in percent. "
    "split test, selection last: the reported numbers (the last epoch's checkpoint); split val, selection epoch: "
    "the per-epoch validation curve; direction t2i is text->image (the reported direction), i2t image->text. "
    "The provenance columns say which seed, config, data, code and environment produced each row."
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="merge per-run metrics files (and validation curves) into one metrics table",
        description=(
            "Concatenate the Parquet files written by `tbps evaluate` (strictly validated: columns, dtypes, "
            "NaN, ranges), optionally with the per-epoch validation curves written by `tbps train` "
            "(split 'val', selection 'epoch'). Cross-dataset runs named <experiment>@<train dataset> get a "
            "train_dataset column (= dataset for in-domain rows). One row per (dataset, train_dataset, "
            "experiment, split, direction, selection, epoch), sorted; the text->image test rows are logged."
        ),
    )
    parser.add_argument("--inputs", required=True, nargs="*", type=Path, metavar="PARQUET",
                        help="metrics files written by `tbps evaluate`")
    parser.add_argument("--val-curves", nargs="*", default=[], type=Path, metavar="PARQUET",
                        help="val_curve.parquet files written by `tbps train`, at "
                        "results/{dataset}/{experiment}/train/ (dataset and experiment are read from the path)")
    parser.add_argument("--out", required=True, type=Path, help="metrics Parquet file to write")
    parser.add_argument("--html", type=Path, default=None, metavar="PATH",
                        help="also write the table as a self-contained HTML page (for the browser and the report)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from tbps.collect import collect

    df = collect(args.inputs, args.out, val_curves=args.val_curves)
    if args.html is not None:
        from tbps.html_table import write_table_html
        from tbps.plots import METRICS

        write_table_html(df, args.html, title=f"metrics table: {args.out}", note=TABLE_NOTE,
                         float_formats=dict.fromkeys(METRICS, ".2f"))
    return 0
