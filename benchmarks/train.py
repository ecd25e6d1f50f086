"""Benchmark: training throughput of the real TBPS-CLIP training step (prints figures, asserts nothing).

Three modes side by side in one process, on one model and optimiser:

- ``synthetic``: one fixed batch of random images (the model's size) and tokenised random
  captions, no loader, driving the trainer's step (soft-label no-grad pass, gradient-cached
  forward/backward, optimiser step) at steady state (alpha at its full value);
- ``loader``: the real data path (``TrainPairs`` + ``EpochBatchSampler`` + the trainer's
  ``DataLoader`` with N workers over a shard manifest) feeding the same step, so the gap
  between the two is the loader's cost;
- ``loader-only``: the same DataLoader iterated without the model (the data path alone);
- ``worker``: what one loader worker spends per sample, in this process with one torch thread
  as in a worker: CPU time of ``TrainPairs[...]`` (read, decode, the CPU path's views or, with
  ``--device-aug``, the resize and the parameter draws) and of collating the samples;
- ``device-aug`` (with ``--device-aug``): the device path's batched cost per sample, i.e.
  ``DeviceAugment`` on loader batches already on the device (CPU tensors on a CPU).

``--device-aug`` sets ``data.image_aug.on_device=true``: workers ship uint8 images and drawn
parameters, and the views are made on the device inside the trainer's step (docs/method.md
#augmentation-on-the-device).

Figures per mode: samples/s, step time (median, p90), time blocked waiting for the batch,
peak memory (CPU: the process's VmHWM, reset through /proc/self/clear_refs at the start of
the mode; loader workers are separate processes and not included. CUDA: torch's peak
allocated memory), FLOPs per sample and, on a GPU, MFU/HFU against the bf16 dense peak.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts one forward, and one
forward+backward, of each tower at batch 1 (math SDPA kernel, so attention is counted on
every device); per sample the step runs, with gradient, the main image, the text, and
(full preset) the MVS image and two SimCLR views; without gradient (soft labels) the main
image, the text and the MVS image. Gradient caching adds one forward of every gradient
pass. MFU counts the algorithm's FLOPs (no re-forward), HFU the executed ones (with it).
``--check-flops`` counts one whole synthetic step too, as a check on that bookkeeping.

    .venv/bin/python benchmarks/train.py --experiment config/experiments/tiny_tbps_clip.yaml \\
        --manifest results/synthetic/shards/train/manifest.json --batch 64 --steps 20
    .venv/bin/python benchmarks/train.py --experiment config/experiments/tbps_clip_simplified.yaml \\
        --set model.pretrained=null --batch 4 --steps 2 --warmup 1 --modes synthetic
    # GPU: ViT-B/16 (random init) for both presets at batch 320 and at the largest unchunked batch
    .venv/bin/python benchmarks/train.py --preset-sweep --device cuda \\
        --manifest results/synthetic/shards/train/manifest.json --workers 14

Nothing here re-implements the training step: it calls tbps.objective (batch_inputs,
nograd_pass, step_loss), tbps.gradcache.grad_cached_backward, the optimiser's parameter
groups and the trainer's data builders; only the few lines of the step body that
``tbps.train.train`` keeps inline are repeated in :func:`train_step`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rss  # benchmarks/rss.py, beside this script
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from tbps.config import ExperimentConfig, LossConfig, load_experiment, parse_dotted
from tbps.data.loader import EpochBatchSampler
from tbps.distributed import DistInfo
from tbps.fileio import write_json_atomic
from tbps.model import build_model, param_groups
from tbps.objective import ENCODERS, NOGRAD_NAMES, embedding_names, text_view_keys
from tbps.train import (
    autocast_dtype,
    build_training_data,
    device_augment,
    make_encode,
    make_loader,
    seed_everything,
    train_step,
)

MODES = ("synthetic", "loader", "loader-only", "worker", "device-aug")
DEFAULT_MODES = ("synthetic", "loader", "loader-only")
EXPERIMENTS = Path(__file__).resolve().parent.parent / "config" / "experiments"
SWEEP_PRESETS = ("tbps_clip_simplified", "tbps_clip")
SWEEP_BATCHES = (320, 288, 256, 224, 192, 160, 128, 96, 64, 32)
SWEEP_OVERRIDES = ("model.pretrained=null",)  # random init: nothing to download, same FLOPs
# bf16 dense tensor-core peaks (TFLOP/s) by a substring of torch.cuda.get_device_name().
# PCIe/NVL H100s are slower than the SXM part: those need --peak-tflops.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0))
CAPTION_WORDS = (
    "a man woman wearing black white red blue green grey dark light shirt jacket coat pants jeans "
    "shorts skirt dress shoes sneakers boots bag backpack carrying holding long short hair walking "
    "with and the in on of his her striped plaid sleeves glasses hat cap"
).split()


# ----------------------------------------------------------------------------- shared helpers
# (benchmarks/embed.py imports these)

def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory from ``reset()`` to ``read()``: CUDA peak allocated, or this process's peak RSS."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        gc.collect()
        self.baseline = rss.reset_peak()

    def read(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {"kind": "cuda_max_allocated", "peak_bytes": torch.cuda.max_memory_allocated(self.device),
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device)}
        return {"kind": "cpu_peak_rss", "peak_bytes": rss.peak_bytes(),
                "baseline_rss_bytes": self.baseline}


def load_average() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def machine_info(device: torch.device) -> str:
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    info = (f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs "
            f"(torch threads {torch.get_num_threads()}), RAM {total_kib / 2**20:.1f} GiB, "
            f"{platform.processor() or platform.machine()}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info += f", GPU {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        info += ", no GPU used"
    return info


def peak_tflops(requested: float | None, device: torch.device) -> float | None:
    """The bf16 dense peak used for MFU: ``--peak-tflops``, else by GPU name; None on CPU."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name and ("PCIe" in name or "NVL" in name):
        raise SystemExit(f"GPU {name!r}: pass --peak-tflops (bf16 dense peak) for MFU")
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value
    raise SystemExit(f"GPU {name!r} has no known bf16 peak: pass --peak-tflops")


def random_captions(n: int, seed: int) -> list[str]:
    """Person-description-like captions of 10-40 words (CUHK-PEDES averages ~23)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(CAPTION_WORDS, size=int(rng.integers(10, 41)))) + "." for _ in range(n)]


@contextlib.contextmanager
def countable_attention() -> Iterator[None]:
    """Attention as plain matmuls that FlopCounterMode sees: the math SDPA kernel, and no fused
    eval-mode MultiheadAttention fast path (whose single op it does not count)."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def count_flops(fn: Callable[[], torch.Tensor], backward: bool) -> int:
    """FLOPs of ``fn()`` (and of the backward of its sum), with attention counted."""
    with countable_attention(), FlopCounterMode(display=False) as counter:
        if backward:
            fn().float().sum().backward()
        else:
            with torch.no_grad():
                fn()
    return counter.get_total_flops()


def tower_flops(model, device: torch.device, *, backward: bool, simclr: bool,
                text_simclr: bool = False) -> dict[str, dict[str, int]]:
    """Per-sample FLOPs of each encoder pass (batch 1):
    ``{"image"|"text"|"simclr"|"text_simclr": {"fwd", "fwd_bwd"}}``."""
    h, w = model.image_size
    image = torch.zeros(1, 3, h, w, device=device)
    tokens = torch.zeros(1, model.context_length, dtype=torch.long, device=device)
    tokens[0, :3] = torch.tensor([49406, 320, 49407])  # SOT "a" EOT: length is irrelevant to FLOPs
    passes = {"image": lambda: model.encode_image(image), "text": lambda: model.encode_text(tokens)}
    if simclr:
        passes["simclr"] = lambda: model.simclr(image)
    if text_simclr:
        passes["text_simclr"] = lambda: model.text_simclr(tokens)
    out = {}
    for name, fn in passes.items():
        out[name] = {"fwd": count_flops(fn, backward=False)}
        if backward:
            out[name]["fwd_bwd"] = count_flops(fn, backward=True)
    model.zero_grad(set_to_none=True)
    return out


def summarise(times: list[float]) -> dict:
    arr = np.asarray(times, dtype=np.float64)
    return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)), "mean": float(arr.mean()),
            "min": float(arr.min()), "max": float(arr.max())}


# ----------------------------------------------------------------------------- the training step

@dataclass
class Rig:
    """What ``tbps.train.train`` sets up before its loop, for one experiment on one device."""

    cfg: ExperimentConfig
    device: torch.device
    bundle: object
    model: torch.nn.Module
    amp_dtype: torch.dtype | None
    optimizer: torch.optim.Optimizer = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)
    simulate_oom_above: int | None = None
    augment: object = field(init=False)
    """The trainer's device-side augmentation (``data.image_aug.on_device``), else None."""

    def __post_init__(self):
        self.reset_optimizer()
        self.augment = device_augment(self.cfg)

    def reset_optimizer(self) -> None:
        optim = self.cfg.optim
        self.optimizer = torch.optim.AdamW(param_groups(self.model, optim.weight_decay), lr=optim.lr,
                                           betas=tuple(optim.betas), eps=optim.eps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    @property
    def alpha(self) -> float:
        """Steady-state soft-label weight (after the ramp), so the no-grad pass always runs."""
        return self.cfg.loss.soft_label_alpha

    def encode(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The trainer's encode (tbps.train.make_encode), with an optional simulated OOM."""
        if self.simulate_oom_above is not None and torch.is_grad_enabled() and x.shape[0] > self.simulate_oom_above:
            raise torch.OutOfMemoryError(f"simulated: a {x.shape[0]}-row pass with gradient "
                                         f"(--simulate-oom-above {self.simulate_oom_above})")
        return make_encode(self.model, self.device, self.amp_dtype)(name, x)


def build_rig(cfg: ExperimentConfig, device: torch.device, simulate_oom_above: int | None = None) -> Rig:
    seed_everything(cfg.train.seed)
    bundle = build_model(cfg.model, with_simclr_head=cfg.loss.uses_ss_i, with_text_simclr_head=cfg.loss.uses_ss_t)
    model = bundle.model.to(device)
    model.train()
    return Rig(cfg, device, bundle, model, autocast_dtype(cfg.train.precision, device),
               simulate_oom_above=simulate_oom_above)


def run_step(rig: Rig, batch: dict[str, torch.Tensor], chunk: int) -> float:
    """One optimiser step exactly as the trainer runs it (one process, steady-state alpha)."""
    single = DistInfo(rank=0, world_size=1, local_rank=0, device=rig.device)
    augment = rig.augment if "views" in batch else None  # synthetic batches hold finished views
    loss, _ = train_step(rig.model, rig.optimizer, rig.scaler, rig.encode, batch, rig.cfg.loss, alpha=rig.alpha,
                         chunk=chunk, dist=single, augment=augment)
    return float(loss)  # the trainer reads every loss term back each step: a host sync


# tower_flops key of each model method that tbps.objective.ENCODERS names.
_TOWER_FLOPS_KEY = {"encode_image": "image", "encode_text": "text", "simclr": "simclr", "text_simclr": "text_simclr"}


def step_flops(towers: dict, loss_cfg: LossConfig, *, chunked: bool, alpha: float) -> dict[str, float]:
    """Per-sample FLOPs of one step: ``model`` (what the algorithm needs) and ``executed`` (+ re-forward)."""
    names = embedding_names(loss_cfg)
    grad_passes = [_TOWER_FLOPS_KEY[ENCODERS[name]] for name in names]
    nograd_passes = [_TOWER_FLOPS_KEY[ENCODERS[name]] for name in NOGRAD_NAMES if name in names] if alpha > 0 else []
    model = sum(towers[p]["fwd_bwd"] for p in grad_passes) + sum(towers[p]["fwd"] for p in nograd_passes)
    refwd = sum(towers[p]["fwd"] for p in grad_passes) if chunked else 0
    return {"model": float(model), "executed": float(model + refwd), "grad_passes": grad_passes,
            "nograd_passes": nograd_passes}


# ----------------------------------------------------------------------------- batches

def synthetic_batch(rig: Rig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs shaped like a DataLoader batch (CPU, pinned on CUDA as the trainer's loader pins)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = rig.model.image_size

    def images():
        return torch.randn(batch, 3, h, w, generator=gen)

    out = {"image": images(), "tokens": rig.bundle.tokenizer(random_captions(batch, seed)),
           # Few repeated ids, like a uniform batch from thousands of identities.
           "train_id": torch.randint(0, 10_000, (batch,), generator=gen),
           "pair": torch.arange(batch)}
    if rig.cfg.loss.uses_image_mvs:
        out["image_mvs"] = images()
    if rig.cfg.loss.uses_ss_i:
        out["simclr_a"], out["simclr_b"] = images(), images()
    for key in text_view_keys(rig.cfg.loss):
        out[key] = rig.bundle.tokenizer(random_captions(batch, seed + 1 + len(out)))
    if rig.device.type == "cuda":
        out = {k: v.pin_memory() for k, v in out.items()}
    return out


def loader_batches(rig: Rig, manifest: Path, batch: int) -> tuple[Iterator[dict], int]:
    """The trainer's DataLoader over ``manifest``, epoch after epoch; also the pairs count."""
    _, pairs, dataset = build_training_data(rig.cfg, manifest, rig.bundle)

    def batches():
        epoch = 0
        while True:
            sampler = EpochBatchSampler(len(pairs), batch, seed=rig.cfg.train.seed, epoch=epoch)
            yield from make_loader(dataset, sampler, rig.cfg, rig.device)
            epoch += 1

    return batches(), len(pairs)


# ----------------------------------------------------------------------------- measurement

def measure(rig: Rig, mode: str, batches: Iterator[dict], *, batch: int, chunk: int, steps: int, warmup: int,
            model_step: bool = True) -> dict:
    """Time ``warmup + steps`` iterations; figures from the last ``steps``."""
    memory = PeakMemory(rig.device)
    memory.reset()
    step_times, wait_times, loss = [], [], float("nan")
    for i in range(warmup + steps):
        start = time.perf_counter()
        data = next(batches)
        got = time.perf_counter()
        if model_step:
            loss = run_step(rig, data, chunk)
            synchronize(rig.device)
        end = time.perf_counter()
        if i >= warmup:
            step_times.append(end - start)
            wait_times.append(got - start)
    return {"mode": mode, "batch": batch, "chunk": chunk, "steps": steps, "warmup": warmup,
            "samples_per_s": batch * steps / sum(step_times),
            "samples_per_s_at_median": batch / float(np.median(step_times)), "step_s": summarise(step_times),
            "wait_s": summarise(wait_times), "memory": memory.read(), "loss_last": loss}


def counted_step_flops(rig: Rig, batch: dict, chunk: int) -> float:
    """FLOPs of one whole synthetic step, counted (math attention), per sample."""
    with countable_attention(), FlopCounterMode(display=False) as counter:
        run_step(rig, batch, chunk)
    return counter.get_total_flops() / batch["image"].shape[0]


def add_flops(row: dict, towers: dict, rig: Rig, peak: float | None) -> dict:
    if row.get("mode") == "loader-only" or "samples_per_s" not in row:
        return row
    f = step_flops(towers, rig.cfg.loss, chunked=0 < row["chunk"] < row["batch"], alpha=rig.alpha)
    row["flops_per_sample"] = f
    row["tflops_per_s"] = f["executed"] * row["samples_per_s"] / 1e12
    if peak:
        row["mfu"] = f["model"] * row["samples_per_s"] / (peak * 1e12)
        row["hfu"] = f["executed"] * row["samples_per_s"] / (peak * 1e12)
    return row


def measure_worker(rig: Rig, manifest: Path, samples: int, warmup: int = 8) -> dict:
    """CPU milliseconds per sample of one loader worker's work, measured in this process with one torch
    thread (DataLoader workers run with one): ``TrainPairs[key]``, then collating those samples."""
    _, pairs, dataset = build_training_data(rig.cfg, manifest, rig.bundle)
    keys = [key for batch in EpochBatchSampler(len(pairs), 1, seed=rig.cfg.train.seed, epoch=0) for key in batch]
    keys = keys[:warmup + samples]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key in keys[:warmup]:
            dataset[key]
        start = time.process_time()
        items = [dataset[key] for key in keys[warmup:]]
        getitem = time.process_time() - start
        start = time.process_time()
        for lo in range(0, len(items), 64):
            default_collate(items[lo:lo + 64])
        collate = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    n = len(items)
    return {"mode": "worker", "samples": n, "worker_cpu_ms": {
        "getitem": 1e3 * getitem / n, "collate": 1e3 * collate / n, "total": 1e3 * (getitem + collate) / n}}


def measure_device_aug(rig: Rig, manifest: Path, batch: int, steps: int, warmup: int) -> dict:
    """Milliseconds per sample of ``DeviceAugment`` on loader batches already moved to the device: wall time,
    and on a CPU also the process's CPU time (steadier than wall time on a shared machine)."""
    if rig.augment is None:
        raise SystemExit("--modes device-aug needs --device-aug (data.image_aug.on_device=true)")
    batches, _ = loader_batches(rig, manifest, batch)
    times, cpu_times = [], []
    for i in range(warmup + steps):
        data = next(batches)
        data = {**data, "image": data["image"].to(rig.device)}
        synchronize(rig.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        rig.augment(data, rig.device)
        synchronize(rig.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    batches.close()
    row = {"mode": "device-aug", "batch": batch, "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(),
           "ms_per_sample": {k: 1e3 * v / batch for k, v in summarise(times).items()}}
    if rig.device.type == "cpu":
        row["cpu_ms_per_sample"] = {k: 1e3 * v / batch for k, v in summarise(cpu_times).items()}
    return row


def run_modes(rig: Rig, *, modes: list[str], manifest: Path | None, batch: int, chunk: int, steps: int,
              warmup: int, check_flops: bool, label: str) -> list[dict]:
    rows = []
    common = {"experiment": label, "model": rig.cfg.model.name, "image_size": list(rig.model.image_size),
              "precision": str(rig.amp_dtype).replace("torch.", "") if rig.amp_dtype else "fp32"}
    for mode in modes:
        print(f"[{label}] {mode}: batch {batch}, chunk {chunk}, {warmup}+{steps} steps ...", file=sys.stderr,
              flush=True)
        if mode in ("worker", "device-aug"):
            if manifest is None:
                continue
            row = (measure_worker(rig, manifest, samples=batch * steps) if mode == "worker"
                   else measure_device_aug(rig, manifest, batch, steps, warmup))
            rows.append({**common, "on_device": rig.cfg.data.image_aug.on_device, **row})
            continue
        if mode == "synthetic":
            data = synthetic_batch(rig, batch)
            row = measure(rig, mode, _repeat(data), batch=batch, chunk=chunk, steps=steps, warmup=warmup)
            if check_flops:
                row["counted_flops_per_sample"] = counted_step_flops(rig, data, chunk)
            del data
        else:
            if manifest is None:
                continue
            batches, num_pairs = loader_batches(rig, manifest, batch)
            row = measure(rig, mode, batches, batch=batch, chunk=chunk, steps=steps, warmup=warmup,
                          model_step=mode == "loader")
            row["pairs"] = num_pairs
            batches.close()  # shuts the loader's worker processes down
        row["workers"] = rig.cfg.data.num_workers if mode != "synthetic" else None
        rows.append({**common, **row})
    return rows


def _repeat(item):
    while True:
        yield item


# ----------------------------------------------------------------------------- preset sweep

def free_after_oom(rig: Rig) -> None:
    """Drop the failed step's tensors and start the optimiser afresh (its state may be half-made)."""
    rig.model.zero_grad(set_to_none=True)
    rig.reset_optimizer()
    gc.collect()
    if rig.device.type == "cuda":
        torch.cuda.empty_cache()


def try_synthetic(rig: Rig, label: str, batch: int, chunk: int, steps: int, warmup: int) -> dict | None:
    """One synthetic measurement, or None if it ran out of memory (memory freed again)."""
    failed = False
    try:
        return run_modes(rig, modes=["synthetic"], manifest=None, batch=batch, chunk=chunk, steps=steps,
                         warmup=warmup, check_flops=False, label=label)[0]
    except torch.OutOfMemoryError as e:
        print(f"[{label}] batch {batch} chunk {chunk}: out of memory ({str(e).splitlines()[0][:120]})",
              file=sys.stderr, flush=True)
        failed = True
    if failed:  # outside the except block, so the traceback's frames (and tensors) are gone
        free_after_oom(rig)
    return None


def sweep_preset(args, rig: Rig) -> list[dict]:
    """The largest unchunked batch that fits (``--sweep-batches``, tried in descending order), and the
    target batch ``--sweep-target`` (default: the first batch tried): unchunked if it fits, otherwise
    gradient-cached with the largest batch that fits as the chunk (halved on OOM)."""
    preset = rig.cfg.name
    target = args.sweep_target or args.sweep_batches[0]
    rows, largest = [], None
    for batch in args.sweep_batches:
        row = try_synthetic(rig, preset, batch, 0, args.steps, args.warmup)
        if row is None:
            rows.append({"experiment": preset, "mode": "synthetic", "batch": batch, "chunk": 0, "status": "oom",
                         "simulated": args.simulate_oom_above is not None})
            continue
        rows.append({**row, "status": "ok", "note": "largest unchunked batch that fits"})
        largest = batch
        break
    if largest is None:
        return rows
    chunk = 0
    if largest > target:
        row = try_synthetic(rig, preset, target, 0, args.steps, args.warmup)
        if row is not None:
            rows.append({**row, "status": "ok", "note": f"batch {target} unchunked"})
    elif largest < target:
        chunk = largest
        while chunk >= 1:
            row = try_synthetic(rig, preset, target, chunk, args.steps, args.warmup)
            if row is not None:
                rows.append({**row, "status": "ok", "note": f"batch {target} by gradient caching"})
                break
            rows.append({"experiment": preset, "mode": "synthetic", "batch": target, "chunk": chunk, "status": "oom",
                         "simulated": args.simulate_oom_above is not None})
            chunk //= 2
        if chunk == 0:
            return rows
    if args.manifest is not None:
        loader_modes = [m for m in args.modes if m != "synthetic"]
        rows += [{**r, "status": "ok"} for r in run_modes(
            rig, modes=loader_modes, manifest=args.manifest, batch=target, chunk=chunk, steps=args.steps,
            warmup=args.warmup, check_flops=False, label=preset)]
    return rows


# ----------------------------------------------------------------------------- report

def _fmt_memory(memory: dict) -> str:
    return f"{memory['peak_bytes'] / 2**30:.2f} GiB"


def print_augmentation_rows(rows: list[dict]) -> None:
    for r in rows:
        path = "device path" if r["on_device"] else "CPU path"
        if r["mode"] == "worker":
            ms = r["worker_cpu_ms"]
            print(f"[{r['experiment']}] worker, {path}, {r['image_size'][0]}x{r['image_size'][1]}: "
                  f"{ms['total']:.2f} CPU-ms/sample ({ms['getitem']:.2f} read+decode+views, {ms['collate']:.2f} "
                  f"collate) over {r['samples']} samples")
        else:
            ms = r["ms_per_sample"]
            cpu = r.get("cpu_ms_per_sample")
            cpu_text = f", CPU time median {cpu['median']:.2f} ms/sample" if cpu else ""
            print(f"[{r['experiment']}] device-aug on {r['threads']} thread(s), batch {r['batch']}: wall median "
                  f"{ms['median']:.2f} ms/sample (p90 {ms['p90']:.2f}){cpu_text}")


def print_table(rows: list[dict]) -> None:
    aug_rows = [r for r in rows if r.get("mode") in ("worker", "device-aug")]
    rows = [r for r in rows if r.get("mode") not in ("worker", "device-aug")]
    print_augmentation_rows(aug_rows)
    if not rows:
        return
    header = (f"{'experiment':<27} {'mode':<11} {'batch':>5} {'chunk':>5} {'wrk':>3} {'samples/s':>10} {'@median':>8} "
              f"{'step med':>9} {'p90':>9} {'wait med':>9} {'peak mem':>10} {'GFLOP/smp':>10} {'TFLOP/s':>8} "
              f"{'MFU':>6} {'HFU':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        lead = f"{r['experiment']:<27} {r['mode']:<11} {r['batch']:>5} {r['chunk']:>5}"
        if r.get("status") == "oom":
            print(f"{lead} {'':>3} out of memory")
            continue
        flops = r.get("flops_per_sample")
        gflop = f"{flops['executed'] / 1e9:.2f}" if flops else "-"
        tflops = f"{r['tflops_per_s']:.3f}" if "tflops_per_s" in r else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        hfu = f"{100 * r['hfu']:.1f}%" if "hfu" in r else "-"
        workers = "-" if r["workers"] is None else r["workers"]
        print(f"{lead} {workers:>3} {r['samples_per_s']:>10.1f} "
              f"{r['samples_per_s_at_median']:>8.1f} {1e3 * r['step_s']['median']:>7.1f}ms "
              f"{1e3 * r['step_s']['p90']:>7.1f}ms {1e3 * r['wait_s']['median']:>7.1f}ms "
              f"{_fmt_memory(r['memory']):>10} {gflop:>10} {tflops:>8} {mfu:>6} {hfu:>6}")
    for r in rows:
        if "counted_flops_per_sample" in r:
            f = r["flops_per_sample"]
            print(f"[{r['experiment']}] FLOPs per sample: counted whole step {r['counted_flops_per_sample'] / 1e9:.3f} G "
                  f"vs bookkeeping {f['executed'] / 1e9:.3f} G executed ({f['model'] / 1e9:.3f} G model); "
                  f"grad passes {f['grad_passes']}, no-grad passes {f['nograd_passes']}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, help="experiment file (config/experiments/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override as in `tbps train`, e.g. --set model.pretrained=null (repeatable)")
    parser.add_argument("--manifest", type=Path, help="train shards' manifest.json (for the loader modes)")
    parser.add_argument("--batch", type=int, help="global batch (default: the experiment's data.batch_size)")
    parser.add_argument("--chunk", type=int, help="gradient-cache chunk, 0 = none (default: train.grad_cache_chunk)")
    parser.add_argument("--workers", type=int, help="loader workers (default: the experiment's data.num_workers)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (worker start-up, allocator)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help="comma-separated subset of " + ",".join(MODES) + " (default: the first three)")
    parser.add_argument("--device-aug", action="store_true",
                        help="augment on the training device (sets data.image_aug.on_device=true)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int,
                        help="torch.set_num_threads in the main process (default: torch's, = cores); loader "
                             "workers always use 1")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak for MFU (default by GPU name: "
                        + ", ".join(f"{k} {v:g}" for k, v in PEAK_BF16_TFLOPS) + ")")
    parser.add_argument("--check-flops", action="store_true",
                        help="also count one whole synthetic step with FlopCounterMode (checks the bookkeeping)")
    parser.add_argument("--preset-sweep", action="store_true",
                        help="ViT-B/16 random init, 224x224: each of --sweep-presets at the largest unchunked "
                             "batch that fits (descending from 320) and at 320 (gradient-cached if needed)")
    parser.add_argument("--sweep-presets", default=",".join(SWEEP_PRESETS),
                        help="experiments (names in config/experiments) for --preset-sweep")
    parser.add_argument("--sweep-batches", default=",".join(map(str, SWEEP_BATCHES)),
                        help="batch sizes tried in order (descending) for the largest unchunked batch that fits")
    parser.add_argument("--sweep-target", type=int,
                        help="the batch measured besides the largest that fits (default: the first of --sweep-batches)")
    parser.add_argument("--simulate-oom-above", type=int, help=argparse.SUPPRESS)  # exercises the OOM path on CPU
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/train.json"))
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; use {','.join(MODES)}")
    args.sweep_presets = [p for p in args.sweep_presets.split(",") if p]
    args.sweep_batches = [int(b) for b in args.sweep_batches.split(",") if b]
    if not args.preset_sweep and args.experiment is None:
        parser.error("--experiment is required (or use --preset-sweep)")
    if args.manifest is None and any(m != "synthetic" for m in args.modes):
        print("no --manifest: only the synthetic mode runs", file=sys.stderr)
    return args


def experiment_config(path: Path, overrides: list[str], workers: int | None,
                      device_aug: bool = False) -> ExperimentConfig:
    extra = ["data.image_aug.on_device=true"] if device_aug else []
    cfg = load_experiment(path, parse_dotted([*overrides, *extra]))
    if workers is not None:
        cfg.data.num_workers = workers
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    peak = peak_tflops(args.peak_tflops, device)
    load_before = load_average()
    print(machine_info(device))
    print(f"load average before: {load_before}", flush=True)
    started = time.perf_counter()
    if args.preset_sweep:
        jobs = [(experiment_config(EXPERIMENTS / f"{p}.yaml", [*SWEEP_OVERRIDES, *args.set], args.workers,
                                   args.device_aug), None, None)
                for p in args.sweep_presets]
    else:
        cfg = experiment_config(args.experiment, args.set, args.workers, args.device_aug)
        jobs = [(cfg, args.batch if args.batch is not None else cfg.data.batch_size,
                 args.chunk if args.chunk is not None else cfg.train.grad_cache_chunk)]
    rows: list[dict] = []
    towers_by_experiment: dict[str, dict] = {}
    for cfg, batch, chunk in jobs:
        rig = build_rig(cfg, device, args.simulate_oom_above)
        towers = tower_flops(rig.model, device, backward=True, simclr=rig.cfg.loss.uses_ss_i,
                             text_simclr=rig.cfg.loss.uses_ss_t)
        towers_by_experiment[cfg.name] = towers
        if args.preset_sweep:
            new_rows = sweep_preset(args, rig)
        else:
            new_rows = run_modes(rig, modes=args.modes, manifest=args.manifest, batch=batch, chunk=chunk,
                                 steps=args.steps, warmup=args.warmup, check_flops=args.check_flops, label=cfg.name)
        rows += [add_flops(row, towers, rig, peak) for row in new_rows]
        # After every experiment, so a run cut short by a time cap keeps what it measured.
        write_json_atomic(args.out, {
            "machine": machine_info(device), "torch_version": torch.__version__, "load_average_before": load_before,
            "argv": sys.argv[1:], "peak_tflops": peak, "tower_flops_per_sample": towers_by_experiment, "rows": rows,
            "complete": False})
        del rig
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    load_after = load_average()
    print_table(rows)
    print(f"load average after: {load_after}; wall {time.perf_counter() - started:.0f} s")
    write_json_atomic(args.out, {
        "machine": machine_info(device), "torch_version": torch.__version__, "load_average_before": load_before,
        "load_average_after": load_after, "argv": sys.argv[1:], "peak_tflops": peak,
        "tower_flops_per_sample": towers_by_experiment, "rows": rows, "complete": True,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
