"""`tbps probe importance|heatmaps|layers|compression`: the paper's model-compression probe (§3.5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tbps.cli.argtypes import positive_int

# Mirrors tbps.probe.importance (not imported: keeps --help fast).
THETA0_CHOICES = ("pretrained", "random")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="model-compression probe: module importance (C1, C2), layer choice, frozen-vs-dropped table",
        description="The paper's model-compression probe (§3.5, App. A.4 and B.2; docs/method.md D22-D24).",
    )
    sub = parser.add_subparsers(dest="probe", metavar="STEP", required=True)

    importance = sub.add_parser(
        "importance", help="C1 and C2 of every self-attention, feed-forward and whole layer of both towers",
        description=(
            "C1: the R@1 drop when a module's residual branch is skipped, over the largest drop of its tower. "
            "C2: the smallest alpha on the grid 0, step, ..., 1 such that the module at (1-alpha)*theta0 + "
            "alpha*theta keeps R@1 within epsilon points of the trained model. Only the perturbed tower is "
            "re-encoded; the other tower's embeddings are cached."),
    )
    importance.add_argument("--checkpoint", required=True, type=Path, help="final.pt written by `tbps train`")
    importance.add_argument("--shards", required=True, type=Path, help="manifest.json of the split R@1 is measured on")
    importance.add_argument("--out", required=True, type=Path, help="importance Parquet table to write")
    importance.add_argument("--summary", type=Path, default=None,
                            help="also write a JSON summary (reference R@1, encodes per tower, wall time)")
    importance.add_argument("--html", type=Path, default=None, metavar="PATH",
                            help="also write the table as an HTML page (the report shows it)")
    importance.add_argument("--dataset", required=True, help="dataset key recorded in the rows")
    importance.add_argument("--experiment", required=True, help="experiment name recorded in the rows")
    importance.add_argument("--split", required=True, help="name of the measured split, recorded in the rows")
    importance.add_argument("--theta0", choices=THETA0_CHOICES, default="pretrained",
                            help="initial weights of C2: the pre-trained weights the run started from "
                                 "(default), or a seeded random initialisation")
    importance.add_argument("--epsilon", type=_positive_float, default=3.0,
                            help="R@1 points C2 may lose (default 3, the paper's)")
    importance.add_argument("--alpha-step", type=_positive_float, default=0.05,
                            help="step of the alpha grid from 0 to 1 (default 0.05: 21 values)")
    importance.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    importance.add_argument("--workers", type=int, default=2, help="image decoding workers (default: 2)")
    importance.add_argument("--batch-size", type=positive_int, default=None,
                            help="encoding batch (default: the experiment's eval.batch_size)")
    importance.set_defaults(func=_importance)

    heatmaps = sub.add_parser("heatmaps", help="heat maps of an importance table (PNG)")
    heatmaps.add_argument("--importance", required=True, type=Path, help="table written by `tbps probe importance`")
    heatmaps.add_argument("--out", required=True, type=Path, help="PNG file to write")
    heatmaps.add_argument("--title", default=None, help="figure title")
    heatmaps.set_defaults(func=_heatmaps)

    layers = sub.add_parser("layers", help="print the x text layers with the smallest whole-layer C1 + C2")
    layers.add_argument("--importance", required=True, type=Path, help="table written by `tbps probe importance`")
    layers.add_argument("--x", required=True, type=int, nargs="+", help="numbers of layers to choose")
    layers.set_defaults(func=_layers)

    compression = sub.add_parser(
        "compression", help="frozen-vs-dropped runs in one table (and the R@1-vs-x figure)",
        description="Each --metrics file (eval/test.parquet) is paired with the --checkpoints file at the same "
                    "position (the run's train/final.pt).")
    compression.add_argument("--metrics", required=True, nargs="+", type=Path, metavar="PARQUET")
    compression.add_argument("--checkpoints", required=True, nargs="+", type=Path, metavar="FINAL_PT")
    compression.add_argument("--dataset", required=True, help="dataset whose test rows are collected")
    compression.add_argument("--out", required=True, type=Path, help="compression Parquet table to write")
    compression.add_argument("--figure", type=Path, default=None, help="also draw R@1 against x (PNG)")
    compression.add_argument("--html", type=Path, default=None, metavar="PATH",
                             help="also write the table as an HTML page (the report shows it)")
    compression.set_defaults(func=_compression)


def _importance(args) -> int:
    from tbps.probe.importance import probe_importance

    probe_importance(args.checkpoint, args.shards, args.out, summary_out=args.summary, dataset=args.dataset,
                     experiment=args.experiment, split=args.split, theta0=args.theta0, epsilon=args.epsilon,
                     alpha_step=args.alpha_step, device=args.device, num_workers=args.workers,
                     batch_size=args.batch_size)
    if args.html is not None:
        _html_page(args.out, args.html, title=f"module importance: {args.experiment} on {args.dataset}",
                   note="C1 (normalised R@1 drop when the module is removed) and C2 (smallest alpha that keeps "
                        "R@1 within epsilon) per tower, layer and module; docs/method.md D22-D23.")
    return 0


def _html_page(table: Path, out: Path, *, title: str, note: str) -> None:
    from tbps.html_table import parquet_to_html

    parquet_to_html(table, out, title=title, note=note)


def _heatmaps(args) -> int:
    from tbps.probe.figures import plot_importance_file

    plot_importance_file(args.importance, args.out, title=args.title)
    return 0


def _layers(args) -> int:
    from tbps.probe.layer_choice import choose_text_layers, read_importance

    table = read_importance(args.importance)
    for x in args.x:
        print(f"x={x}: {', '.join(map(str, choose_text_layers(table, x, args.importance))) or '-'}")
    return 0


def _compression(args) -> int:
    from tbps.probe.compression import write_compression

    write_compression(args.metrics, args.checkpoints, args.out, dataset=args.dataset, figure=args.figure)
    if args.html is not None:
        _html_page(args.out, args.html, title=f"frozen vs dropped text layers: {args.dataset}",
                   note="Each preset with x text layers frozen or dropped, its trainable parameters beside the "
                        "paper's Table 17 and its test R@1 (paper Sec. 3.5; docs/method.md D24).")
    return 0
