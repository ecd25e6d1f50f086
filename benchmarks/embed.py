"""Benchmark: evaluation embedding throughput, images/s and captions/s (prints figures, asserts nothing).

The model runs as ``tbps.evaluate`` runs it: eval mode (no dropout), no gradients, fp32 (no
autocast), inputs moved from the CPU to the device per batch and features copied back.
``--precision tf32|bf16`` shows what the same GPU does with TF32 matmuls or bf16 autocast
(the evaluation itself stays fp32).

- ``synthetic``: random images of the model's size and tokenised random captions, batch after
  batch (model + host/device transfer only);
- ``split`` (with ``--manifest``): ``tbps.evaluate.encode_split`` on a real test split: shard
  reading, decode and the eval transform in DataLoader workers, caption cleaning and
  tokenisation. Timed by phase: images/s from the start to the last image batch, captions/s
  from there to the end; the model's own share is timed around each call.

Peak memory per part: CPU, the process's VmHWM (reset through /proc/self/clear_refs;
loader workers not included); CUDA, torch's peak allocated memory. FLOPs per image and per
caption come from ``FlopCounterMode`` (forward, batch 1, math attention).

    .venv/bin/python benchmarks/embed.py --experiment config/experiments/tiny_tbps_clip.yaml \\
        --manifest results/synthetic/shards/test/manifest.json --batch 64
    .venv/bin/python benchmarks/embed.py --experiment config/experiments/tbps_clip.yaml \\
        --set model.pretrained=null --batch 512 --device cuda --precision fp32,tf32,bf16
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

from tbps.config import load_experiment, parse_dotted
from tbps.evaluate import encode_split, score
from tbps.fileio import write_json_atomic
from tbps.model import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import (  # noqa: E402  (benchmarks/train.py: the shared measuring helpers)
    PeakMemory,
    load_average,
    machine_info,
    peak_tflops,
    random_captions,
    select_device,
    summarise,
    synchronize,
    tower_flops,
)

PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def precision_mode(precision: str, device: torch.device):
    """fp32 as tbps.evaluate (TF32 matmuls off, PyTorch's default), TF32 matmuls, or bf16 autocast."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class TimedModel:
    """Stands in for the model inside ``encode_split``: the same calls, each one timed (synchronised)."""

    def __init__(self, model, device: torch.device, precision: str):
        self.model, self.device, self.precision = model, device, precision
        self.image_s = self.text_s = 0.0
        self.images = self.captions = 0
        self.last_image_done = None

    def eval(self):
        self.model.eval()
        return self

    def _timed(self, fn, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        with precision_mode(self.precision, self.device):
            out = fn(x)
        synchronize(self.device)
        return out, time.perf_counter() - start

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        out, seconds = self._timed(self.model.encode_image, images)
        self.image_s += seconds
        self.images += images.shape[0]
        self.last_image_done = time.perf_counter()
        return out

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        out, seconds = self._timed(self.model.encode_text, tokens)
        self.text_s += seconds
        self.captions += tokens.shape[0]
        return out


@torch.no_grad()
def bench_synthetic(model, tokenizer, device: torch.device, *, batch: int, batches: int, warmup: int,
                    precision: str) -> list[dict]:
    """Fixed random batches through each tower; per-batch time incl. the transfers encode_split does."""
    gen = torch.Generator().manual_seed(0)
    h, w = model.image_size
    images = torch.randn(batch, 3, h, w, generator=gen)
    tokens = tokenizer(random_captions(batch, seed=0))
    rows = []
    for kind, fn, x in (("images", model.encode_image, images), ("captions", model.encode_text, tokens)):
        memory = PeakMemory(device)
        memory.reset()
        times = []
        for i in range(warmup + batches):
            start = time.perf_counter()
            with precision_mode(precision, device):
                fn(x.to(device)).float().cpu()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        rows.append({"mode": "synthetic", "kind": kind, "batch": batch, "batches": batches, "precision": precision,
                     "per_s": batch * batches / sum(times), "batch_s": summarise(times), "memory": memory.read()})
    return rows


def bench_split(model, tokenizer, cfg, manifest: Path, device: torch.device, *, batch: int, workers: int,
                precision: str) -> list[dict]:
    """tbps.evaluate.encode_split on a real split, timed by phase."""
    timed = TimedModel(model, device, precision)
    memory = PeakMemory(device)
    memory.reset()
    start = time.perf_counter()
    encoded = encode_split(timed, tokenizer, manifest, image_size=cfg.model.image_size,
                           normalisation=cfg.data.normalisation, batch_size=batch, device=device,
                           max_words=cfg.data.max_words, num_workers=workers,
                           precision="bf16" if precision == "bf16" else "fp32")
    end = time.perf_counter()
    peak = memory.read()
    metrics = score(encoded, cfg.eval.query_chunk).metrics
    n_img, n_cap = len(encoded.image_ids), len(encoded.text_ids)
    image_phase, text_phase = timed.last_image_done - start, end - timed.last_image_done
    common = {"mode": "split", "batch": batch, "workers": workers, "precision": precision, "memory": peak,
              "manifest": str(manifest), "metrics": metrics}
    return [
        {**common, "kind": "images", "count": n_img, "per_s": n_img / image_phase, "phase_s": image_phase,
         "model_s": timed.image_s, "model_per_s": n_img / timed.image_s},
        {**common, "kind": "captions", "count": n_cap, "per_s": n_cap / text_phase, "phase_s": text_phase,
         "model_s": timed.text_s, "model_per_s": n_cap / timed.text_s},
    ]


def metric_drift(rows: list[dict]) -> dict:
    """Each precision's split metrics minus fp32's (points of 100), by direction: how far the arithmetic
    moves the numbers on the same model and split."""
    split = {r["precision"]: r["metrics"] for r in rows if r["mode"] == "split" and r["kind"] == "images"}
    if "fp32" not in split:
        return {}
    return {p: {d: {k: m[d][k] - split["fp32"][d][k] for k in m[d]} for d in m}
            for p, m in split.items() if p != "fp32"}


def print_table(rows: list[dict], flops: dict) -> None:
    header = (f"{'mode':<10} {'kind':<9} {'prec':<5} {'batch':>5} {'per s':>10} {'model-only/s':>13} "
              f"{'batch med':>10} {'peak mem':>10} {'GFLOP/item':>11} {'TFLOP/s':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        tower = "image" if r["kind"] == "images" else "text"
        gflop = flops[tower]["fwd"] / 1e9
        model_rate = r.get("model_per_s")
        batch_med = f"{1e3 * r['batch_s']['median']:.1f}ms" if "batch_s" in r else "-"
        print(f"{r['mode']:<10} {r['kind']:<9} {r['precision']:<5} {r['batch']:>5} {r['per_s']:>10.1f} "
              f"{(f'{model_rate:.1f}' if model_rate else '-'):>13} {batch_med:>10} "
              f"{r['memory']['peak_bytes'] / 2**30:>6.2f} GiB {gflop:>11.3f} "
              f"{gflop * (model_rate or r['per_s']) / 1e3:>8.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, required=True, help="experiment file (config/experiments/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.pretrained=null (repeatable)")
    parser.add_argument("--manifest", type=Path, help="test shards' manifest.json (adds the encode_split run)")
    parser.add_argument("--batch", type=int, help="batch size (default: the experiment's eval.batch_size)")
    parser.add_argument("--batches", type=int, default=10, help="timed synthetic batches per tower")
    parser.add_argument("--warmup", type=int, default=2, help="untimed synthetic batches first")
    parser.add_argument("--workers", type=int, default=2, help="encode_split's loader workers (tbps evaluate: 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's, = cores)")
    parser.add_argument("--precision", default="fp32",
                        help="comma-separated subset of fp32 (evaluation's), tf32, bf16 (GPU comparisons)")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak (only recorded in the JSON)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/embed.json"))
    args = parser.parse_args(argv)
    precisions = [p for p in args.precision.split(",") if p]
    if set(precisions) - set(PRECISIONS):
        parser.error(f"--precision: use a subset of {','.join(PRECISIONS)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    cfg = load_experiment(args.experiment, parse_dotted(args.set))
    batch = args.batch if args.batch is not None else cfg.eval.batch_size
    load_before = load_average()
    print(machine_info(device))
    print(f"load average before: {load_before}", flush=True)

    # Evaluation builds the towers only (no SimCLR head) and never trains: the same here.
    bundle = build_model(cfg.model, with_simclr_head=False)
    model = bundle.model.to(device).eval()
    flops = tower_flops(model, device, backward=False, simclr=False)
    rows = []
    for precision in precisions:
        print(f"[{cfg.name}] synthetic, {precision}, batch {batch} ...", file=sys.stderr, flush=True)
        rows += bench_synthetic(model, bundle.tokenizer, device, batch=batch, batches=args.batches,
                                warmup=args.warmup, precision=precision)
        if args.manifest is not None:
            print(f"[{cfg.name}] encode_split, {precision} ...", file=sys.stderr, flush=True)
            rows += bench_split(model, bundle.tokenizer, cfg, args.manifest, device, batch=batch,
                                workers=args.workers, precision=precision)
    drift = metric_drift(rows)
    load_after = load_average()
    print(f"experiment {cfg.name}: {cfg.model.name}, image {list(model.image_size)}, "
          f"context {model.context_length}")
    print_table(rows, flops)
    for precision, by_direction in drift.items():
        for direction, diffs in by_direction.items():
            print(f"metric drift {precision} - fp32 ({direction}): "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in diffs.items()))
    print(f"load average after: {load_after}")
    write_json_atomic(args.out, {
        "machine": machine_info(device), "load_average_before": load_before, "load_average_after": load_after,
        "argv": sys.argv[1:], "experiment": cfg.name, "model": cfg.model.name,
        "image_size": list(model.image_size), "flops_per_item": flops,
        "peak_tflops": peak_tflops(args.peak_tflops, device) if device.type == "cuda" else args.peak_tflops,
        "torch_version": torch.__version__, "rows": rows, "metric_drift_vs_fp32": drift,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
