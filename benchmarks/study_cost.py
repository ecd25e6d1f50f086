"""Compute cost of the paper's study on a real dataset, from FLOP counts: an estimate, not a measurement.

Plans the study as the workflow does (config/study.yaml with config/config.yaml's stand-ins for the
dataset: ViT-B/32 and ViT-B/16, the recipe's schedule), counts the FLOPs of each encoder pass of
each backbone once with ``FlopCounterMode`` at batch 1 (benchmarks/train.py's ``tower_flops``;
random init: the same FLOPs as OpenAI's weights, nothing to download; with and without the frozen
patch embedding, whose backward LockBL skips), and adds up per distinct run:

- training: per sample, the passes with gradient and the soft-label pass without
  (benchmarks/train.py's ``step_flops``, the trainer's own embedding list), times the samples of
  the full batches of every epoch (the published train split: one sample per caption);
- evaluation: one forward of every test image and caption (and of the validation split after
  every epoch when the run validates).

GPU-hours = FLOPs / (peak x MFU) for the MFU values given (the bf16 dense peak of an H100 SXM by
default). Loader-bound runs (the full preset's four image views per sample on too few CPU cores:
BENCHMARKS.md, "Training") are slower than this; the estimate is the compute floor at that MFU.

    .venv/bin/python benchmarks/study_cost.py --dataset cuhk-pedes --out benchmarks/out/study-cost-cuhk.json
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import step_flops, tower_flops  # noqa: E402  (benchmarks/train.py)

from tbps.config import ModelConfig  # noqa: E402
from tbps.datasets import REAL_DATASETS  # noqa: E402
from tbps.fileio import write_json_atomic  # noqa: E402
from tbps.model import build_model  # noqa: E402
from tbps.study.plan import StudySettings, plan_study  # noqa: E402
from tbps.study.spec import load_study  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
H100_BF16_PEAK_TFLOPS = 989.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cuhk-pedes", help="a real dataset key (its published split sizes)")
    parser.add_argument("--study", type=Path, default=REPO / "config" / "study.yaml")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_TFLOPS,
                        help="the GPU's dense bf16 peak (default: H100 SXM, 989)")
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.3, 0.4],
                        help="model FLOPs utilisations to convert at (default: 0.3 0.4)")
    parser.add_argument("--out", type=Path, help="JSON file for the per-run figures")
    return parser.parse_args(argv)


def towers_for(model_cfg: ModelConfig, cache: dict) -> dict:
    """Per-sample FLOPs of every encoder pass of this backbone (batch 1), counted once per backbone and
    patch-embedding setting."""
    key = (model_cfg.name, tuple(model_cfg.image_size), model_cfg.freeze_patch_embed)
    if key not in cache:
        cfg = ModelConfig(**{**model_cfg.__dict__, "pretrained": None})
        bundle = build_model(cfg, with_simclr_head=True, with_text_simclr_head=True)
        model = bundle.model.train()
        cache[key] = tower_flops(model, torch.device("cpu"), backward=True, simclr=True, text_simclr=True)
        print(f"counted {model_cfg.name} (frozen patch embedding: {model_cfg.freeze_patch_embed}): "
              + ", ".join(f"{k} {v['fwd'] / 1e9:.2f}/{v['fwd_bwd'] / 1e9:.2f}" for k, v in cache[key].items())
              + " GFLOP fwd/fwd+bwd", flush=True)
    return cache[key]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dataset not in REAL_DATASETS:
        raise SystemExit(f"{args.dataset}: no published split sizes (use one of {', '.join(REAL_DATASETS)})")
    info = REAL_DATASETS[args.dataset]
    config = yaml.safe_load(args.config.read_text())
    entry = config["datasets"].get(args.dataset, {})
    settings = StudySettings.merged(REPO / config["experiments_dir"], config["study"], entry.get("study"),
                                    entry.get("augment_backend", "backtranslation"))
    plan = plan_study(load_study(args.study), settings)
    train, test = info.published["train"], info.published["test"]
    val = info.published.get("val")
    cache: dict = {}
    runs = []
    for run in plan.runs.values():
        cfg = run.config
        towers = towers_for(cfg.model, cache)
        per_sample = step_flops(towers, cfg.loss, chunked=False, alpha=cfg.loss.soft_label_alpha)["model"]
        samples = (train.captions // cfg.data.batch_size) * cfg.data.batch_size * cfg.optim.epochs
        evaluation = test.images * towers["image"]["fwd"] + test.captions * towers["text"]["fwd"]
        if cfg.train.eval_every_epoch and val is not None:
            evaluation += cfg.optim.epochs * (val.images * towers["image"]["fwd"] + val.captions * towers["text"]["fwd"])
        total = per_sample * samples + evaluation
        runs.append({"run": run.name, "rows": list(run.rows), "model": cfg.model.name, "batch": cfg.data.batch_size,
                     "epochs": cfg.optim.epochs, "gflop_per_sample": per_sample / 1e9, "samples": samples,
                     "train_pflop": per_sample * samples / 1e15, "eval_pflop": evaluation / 1e15,
                     "total_pflop": total / 1e15})
    total = sum(r["total_pflop"] for r in runs) * 1e15
    by_model = Counter()
    for r in runs:
        by_model[r["model"]] += r["total_pflop"]
    print(f"\n{args.dataset}: {len(runs)} distinct runs for {len(plan.rows)} rows "
          f"({train.captions:,} training pairs, {test.images:,} test images, {test.captions:,} test captions)")
    print(f"{'run':<34} {'model':<9} {'GFLOP/sample':>12} {'PFLOP':>8}")
    for r in sorted(runs, key=lambda r: -r["total_pflop"]):
        print(f"{r['run']:<34} {r['model']:<9} {r['gflop_per_sample']:>12.1f} {r['total_pflop']:>8.1f}")
    print(f"\ntotal {total / 1e18:.2f} EFLOP (" + ", ".join(f"{m} {v / 1e3:.2f}" for m, v in by_model.items())
          + " EFLOP)")
    hours = {}
    for mfu in args.mfu:
        hours[str(mfu)] = total / (args.peak_tflops * 1e12 * mfu) / 3600
        print(f"estimate at MFU {mfu:.0%} of {args.peak_tflops:g} TFLOP/s: {hours[str(mfu)]:.1f} GPU-hours")
    if args.out:
        write_json_atomic(args.out, {"dataset": args.dataset, "peak_tflops": args.peak_tflops, "gpu_hours": hours,
                                     "total_eflop": total / 1e18, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
