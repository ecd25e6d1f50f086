"""`tbps train`: shards -> fine-tuned checkpoint (one process, or one per GPU under torchrun)."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model on a split's shards (TBPS-CLIP recipe)",
        description=(
            "Train the experiment's model on the train shards. Single process by default; for several GPUs "
            "launch with `torchrun --nproc_per_node N -m tbps train ...` (GlobalGrad: the global batch "
            "data.batch_size is split over the processes). Writes OUT/final.pt, OUT/checkpoints/last.pt "
            "(resumable), OUT/config.yaml, OUT/train_log.parquet and OUT/val_curve.parquet (per-epoch "
            "validation on --val; no rows without it)."
        ),
    )
    parser.add_argument("--experiment", required=True, type=Path, help="experiment file (config/experiments/*.yaml)")
    parser.add_argument("--train", required=True, type=Path, help="manifest.json of the train shards")
    # nargs="?": the workflow writes `--val {input.val:q}` with an empty input list for a dataset
    # without a val split, so every value it passes stays a single quoted word.
    parser.add_argument("--val", type=Path, nargs="?", default=None, const=None, metavar="MANIFEST",
                        help="manifest.json of the validation shards (per-epoch curve); "
                        "given without a value: no validation")
    parser.add_argument("--out", required=True, type=Path, help="output folder of this run")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set optim.lr=1e-3 data.batch_size=160 "
                        "(repeatable; given without a value: no override)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt if it exists")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available, else CPU (with a warning)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from tbps.config import load_experiment, parse_dotted
    from tbps.train import train

    cfg = load_experiment(args.experiment, parse_dotted(args.overrides))
    train(cfg, args.train, args.out, val_manifest=args.val, resume=args.resume, device=args.device)
    return 0
