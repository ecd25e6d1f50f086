"""Benchmark: what one encode of each tower costs the importance probe, and its whole wall time (prints
figures, asserts nothing).

``tbps probe importance`` keeps a split's transformed images and tokenised captions on the device
and re-encodes one tower per measurement (``tbps.probe.importance.TowerEncoder``). This script
builds the experiment's model, fills a split of ``--images`` random images and ``--captions``
random person-like captions, times the probe's own encoder on each tower (median of
``--repeats`` after one warm-up) and turns that into the probe's wall time from the number of
encodes per tower:

- 1 (reference) + M (removals) + M·k (the C² scan), with M modules per tower (3 per layer);
- k = 1 when every C² is 0 (best case) and k = 20 when every module needs the whole grid
  0, 0.05, ..., 0.95 (worst case); ``--summary`` (an ``importance.json`` written by the probe)
  adds the k that run measured, tower by tower.

    .venv/bin/python benchmarks/probe.py --experiment config/experiments/tiny_probe_tbps_clip.yaml \\
        --set model.pretrained=null --images 304 --captions 609 \\
        --summary results/synthetic/tiny_probe_tbps_clip/probe/importance.json
    # CUHK-PEDES val (3,078 images, 6,158 captions) on a GPU, ViT-B/16 at 224x224
    .venv/bin/python benchmarks/probe.py --experiment config/experiments/tbps_clip.yaml \\
        --set model.pretrained=null --images 3078 --captions 6158 --device cuda --batch 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

# As the `tbps` command does (tbps/cli/__init__.py): OpenMP threads that spin while waiting make a
# shared 2-core machine ~25x slower here. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tbps.config import load_experiment, parse_dotted  # noqa: E402
from tbps.fileio import write_json_atomic  # noqa: E402
from tbps.model import build_model  # noqa: E402
from tbps.probe.importance import ProbeSplit, TowerEncoder  # noqa: E402
from tbps.probe.modules import KINDS, TOWERS, tower_blocks  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import load_average, machine_info, random_captions, select_device  # noqa: E402

WORST_ALPHAS = 20  # 0, 0.05, ..., 0.95: alpha = 1 is never measured


def encodes_per_tower(modules: int, alphas_per_module: float) -> float:
    return 1 + modules + modules * alphas_per_module


def measured_alphas(summary: dict, modules: dict[str, int]) -> dict[str, float]:
    """Mean C² evaluations per module of a real probe run, per tower."""
    return {t: (summary["encodes"][t] - 1 - modules[t]) / modules[t] for t in TOWERS}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--images", type=int, required=True, help="images of the probed split")
    parser.add_argument("--captions", type=int, required=True, help="captions of the probed split")
    parser.add_argument("--batch", type=int, default=None, help="encoding batch (default: eval.batch_size)")
    parser.add_argument("--repeats", type=int, default=3, help="timed encodes per tower (after one warm-up)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--summary", type=Path, default=None, help="importance.json of a probe run (its k)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/probe.json"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    print(machine_info(device))
    print(f"load average before: {load_average()}")
    cfg = load_experiment(args.experiment, parse_dotted(args.set))
    torch.manual_seed(0)
    built = build_model(cfg.model, with_simclr_head=False)
    model = built.model.to(device).eval()
    h, w = cfg.model.image_size
    split = ProbeSplit(torch.randn(args.images, 3, h, w, device=device), np.zeros(args.images, dtype=np.int64),
                       built.tokenizer(random_captions(args.captions, seed=0)).to(device),
                       np.zeros(args.captions, dtype=np.int64))
    encoder = TowerEncoder(model, split, device, args.batch or cfg.eval.batch_size)
    modules = {t: len(tower_blocks(model, t)) * len(KINDS) for t in TOWERS}
    seconds = {}
    for tower in TOWERS:
        encoder(tower)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            encoder(tower)
            times.append(time.perf_counter() - start)
        seconds[tower] = statistics.median(times)
    cases = {"best (every C2 = 0)": dict.fromkeys(TOWERS, 1.0),
             "worst (every module scans 20 alphas)": dict.fromkeys(TOWERS, float(WORST_ALPHAS))}
    if args.summary:
        summary = json.loads(args.summary.read_text())
        cases[f"as measured in {args.summary}"] = measured_alphas(summary, modules)
    rows = []
    print(f"\n{cfg.model.name} {h}x{w}, {args.images} images / {args.captions} captions, batch "
          f"{encoder.batch_size}, device {device}; one encode: image {seconds['image']:.3f} s, "
          f"text {seconds['text']:.3f} s; modules per tower: {modules}")
    print(f"{'case':<55} {'k image':>8} {'k text':>7} {'encodes':>12} {'estimate':>10}")
    for case, k in cases.items():
        encodes = {t: encodes_per_tower(modules[t], k[t]) for t in TOWERS}
        total = sum(encodes[t] * seconds[t] for t in TOWERS)
        rows.append({"case": case, "alphas_per_module": k, "encodes": encodes, "estimate_s": total})
        print(f"{case:<55} {k['image']:>8.2f} {k['text']:>7.2f} {encodes['image']:>5.0f}+{encodes['text']:<6.0f} "
              f"{total / 60:>8.1f} min")
    print(f"load average after: {load_average()}")
    write_json_atomic(args.out, {"model": cfg.model.name, "image_size": [h, w], "images": args.images,
                                 "captions": args.captions, "device": str(device), "encode_s": seconds,
                                 "modules": modules, "cases": rows, "machine": machine_info(device)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
