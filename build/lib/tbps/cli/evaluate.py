"""`tbps evaluate`: checkpoint + shards -> retrieval metrics (R@1/5/10, mAP, mINP)."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="retrieval metrics of a checkpoint (or zero-shot pretrained weights) on a split",
        description=(
            "Every caption of the split is a query, every image is in the gallery, relevance = same person id. "
            "Writes one Parquet row per direction (t2i reported, i2t beside it) with provenance columns."
        ),
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="final.pt written by `tbps train`")
    which.add_argument("--zero-shot", dest="experiment_file", type=Path, metavar="EXPERIMENT_YAML",
                       help="evaluate this experiment's pretrained weights without fine-tuning")
    parser.add_argument("--shards", required=True, type=Path, help="manifest.json of the evaluated split")
    parser.add_argument("--out", required=True, type=Path, help="metrics Parquet file to write")
    parser.add_argument("--examples", type=Path, default=None, help="also write retrieval examples (Parquet)")
    parser.add_argument("--dataset", required=True, help="dataset key recorded in the rows")
    parser.add_argument("--experiment", required=True, help="experiment name recorded in the rows")
    parser.add_argument("--split", default="test", help="split name recorded in the rows (default: test)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=2, help="image decoding workers (default: 2)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="arithmetic of the embedding passes (default: the run's eval.precision, fp32 unless "
                             "set); recorded in the rows' eval_precision column")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from tbps.evaluate import evaluate

    evaluate(args.checkpoint, args.shards, args.out, dataset=args.dataset, experiment=args.experiment,
             split=args.split, examples_out=args.examples, device=args.device, experiment_file=args.experiment_file,
             num_workers=args.workers, precision=args.precision)
    return 0
