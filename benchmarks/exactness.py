"""Benchmark-side exactness check on the training device (prints and records differences, asserts nothing).

Two questions a GPU run has to answer before its throughput figures mean anything:

- ``chunked``: does gradient caching (``train.grad_cache_chunk``) give the gradients of one unchunked
  batch on this device and precision? One step's parameter gradients, unchunked vs chunked, at a batch
  both fit; the same comparison is repeated unchunked vs unchunked, which is the device's own
  run-to-run nondeterminism (atomics in the attention backward, for instance). Text attention dropout
  is switched off here, because an unchunked pass draws its masks for the whole batch at once and a
  chunked one chunk by chunk (the replay of the masks inside gradient caching is tested in
  tests/test_gradcache.py). Only towers without batch statistics are exact under chunking: the tiny
  ResNet (TBPS-Tiny-RN) has BatchNorm, whose train-mode statistics are taken per chunk (measured:
  relative L2 0.51 in fp32), so run this with a ViT (ViT-B/16, or TBPS-Tiny-ViT on a CPU).
- ``resume``: does a 2-step run stopped after step 1, written to a checkpoint (weights, optimiser,
  scaler, every random stream, as ``tbps.train`` saves ``last.pt``) and resumed in a fresh model, end
  with the weights of an uninterrupted 2-step run? Also compared: two uninterrupted runs (the floor).

Tolerances are stated in the output: fp32 on a CPU is expected bit-exact for the resume and within
1e-5 (relative) for chunking; under bf16 autocast the chunked gradients are rounded differently (each
chunk's matmuls are other shapes), so the bound is 2e-2 relative to the gradient norm, the size of
bf16's rounding (2^-8 = 3.9e-3) accumulated over the towers' layers.

    .venv/bin/python benchmarks/exactness.py --experiment config/experiments/tiny_tbps_clip.yaml \\
        --batch 16 --chunk 4
    python benchmarks/exactness.py --experiment config/experiments/tbps_clip.yaml \\
        --set model.pretrained=null --device cuda --batch 64 --chunk 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from tbps.config import load_experiment, parse_dotted
from tbps.fileio import write_json_atomic
from tbps.train import RunCheckpoints, RunState, TrainPaths

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import build_rig, machine_info, run_step, select_device, synthetic_batch  # noqa: E402

TOLERANCE = {"fp32": {"chunked": 1e-5, "resume": 0.0}, "bf16": {"chunked": 2e-2, "resume": 0.0}}
"""Relative L2 difference allowed (per check and precision); resume 0.0 = bitwise, else the measured floor."""


def gradients(rig, batch: dict, chunk: int) -> torch.Tensor:
    """All parameter gradients of one step (learning rate 0: the weights stay as they are), flattened."""
    for group in rig.optimizer.param_groups:
        group["lr"] = 0.0
    torch.manual_seed(1234)
    run_step(rig, batch, chunk)
    return torch.cat([p.grad.reshape(-1).float() for p in rig.model.parameters() if p.grad is not None]).cpu()


def difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a - b).float()
    return {"max_abs": float(diff.abs().max()), "relative_l2": float(diff.norm() / b.float().norm().clamp_min(1e-30)),
            "cosine": float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0)),
            "bitwise_equal": bool(torch.equal(a, b))}


def check_chunked(cfg, device, batch_size: int, chunk: int) -> dict:
    rig = build_rig(cfg, device)
    batch = synthetic_batch(rig, batch_size)
    unchunked = gradients(rig, batch, 0)
    again = gradients(rig, batch, 0)
    chunked = gradients(rig, batch, chunk)
    return {"batch": batch_size, "chunk": chunk, "chunked_vs_unchunked": difference(chunked, unchunked),
            "unchunked_vs_unchunked": difference(again, unchunked)}


def _weights(rig) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in rig.model.parameters()]).cpu()


def check_resume(cfg, device, batch_size: int, chunk: int) -> dict:
    """2 steps straight vs 1 step, checkpoint, fresh model and optimiser, restore, 1 step."""
    def straight():
        rig = build_rig(cfg, device)
        batch = synthetic_batch(rig, batch_size)
        for _ in range(2):
            run_step(rig, batch, chunk)
        return _weights(rig)

    first, second = straight(), straight()
    rig = build_rig(cfg, device)
    batch = synthetic_batch(rig, batch_size)
    run_step(rig, batch, chunk)
    with tempfile.TemporaryDirectory() as tmp:
        # The trainer's own save and restore (tbps.train.RunCheckpoints), so the check covers what it writes.
        def checkpoints(r):
            return RunCheckpoints(TrainPaths(Path(tmp)), r.cfg, r.model, r.optimizer, r.scaler, device,
                                  is_main=True, train_data_sha256="exactness")

        checkpoints(rig).save_resumable(RunState())
        del rig
        resumed = build_rig(cfg, device)  # reseeds: a fresh process would start from the same seed
        # Scramble the random streams, so only the checkpoint's can make the result equal.
        torch.manual_seed(98765)
        checkpoints(resumed).restore()
    run_step(resumed, batch, chunk)
    return {"batch": batch_size, "chunk": chunk, "resumed_vs_uninterrupted": difference(_weights(resumed), first),
            "uninterrupted_vs_uninterrupted": difference(second, first)}


def verdict(result: dict, key: str, floor_key: str, tolerance: float) -> str:
    got, floor = result[key], result[floor_key]
    if got["bitwise_equal"]:
        return "bitwise equal"
    bound = max(tolerance, 10 * floor["relative_l2"])
    state = "within" if got["relative_l2"] <= bound else "OUTSIDE"
    return f"{state} tolerance (relative L2 {got['relative_l2']:.2e}, bound {bound:.1e}; floor {floor['relative_l2']:.2e})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, required=True, help="experiment file (config/experiments/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--batch", type=int, default=16, help="batch for both checks (must fit unchunked)")
    parser.add_argument("--chunk", type=int, default=4, help="gradient-cache chunk of the chunked run")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", default="bf16,fp32", help="comma-separated train.precision values")
    parser.add_argument("--checks", default="chunked,resume", help="comma-separated subset of chunked,resume")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/exactness.json"))
    args = parser.parse_args(argv)
    device = select_device(args.device)
    print(machine_info(device), flush=True)
    results = {"machine": machine_info(device), "torch_version": torch.__version__, "argv": sys.argv[1:],
               "tolerance_relative_l2": TOLERANCE, "rows": []}
    for precision in [p for p in args.precision.split(",") if p]:
        for check in [c for c in args.checks.split(",") if c]:
            # Dropout stays on for the resume check: its masks are what the restored random streams decide.
            no_dropout = ["model.text_attn_dropout=0.0"] if check == "chunked" else []
            cfg = load_experiment(args.experiment, parse_dotted([*args.set, f"train.precision={precision}", *no_dropout]))
            start = time.perf_counter()
            if check == "chunked":
                row = check_chunked(cfg, device, args.batch, args.chunk)
                text = verdict(row, "chunked_vs_unchunked", "unchunked_vs_unchunked", TOLERANCE[precision]["chunked"])
            else:
                row = check_resume(cfg, device, args.batch, args.chunk)
                text = verdict(row, "resumed_vs_uninterrupted", "uninterrupted_vs_uninterrupted",
                               TOLERANCE[precision]["resume"])
            row.update({"check": check, "precision": precision, "experiment": cfg.name, "verdict": text,
                        "seconds": time.perf_counter() - start})
            results["rows"].append(row)
            print(f"[{cfg.name}] {precision} {check}: {text}", flush=True)
            write_json_atomic(args.out, results)  # after every check: a timeout keeps what was measured
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
