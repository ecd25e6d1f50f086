"""Fine-tuning stage: shards -> checkpoints, per-step log, validation curve.

Launched as ``tbps train`` on one device or with ``torchrun --nproc_per_node P``
(GlobalGrad: every process gathers the features of all P; gradients are averaged
across processes after the backward). A global batch larger than memory allows is
computed exactly by gradient caching (``train.grad_cache_chunk``).

polars is imported only where the logs are written, so the training step and its helpers
(what the benchmarks and the GPU check drive) need only torch.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from tbps import checkpoint, losses, provenance
from tbps.config import ExperimentConfig, LossConfig
from tbps.data import synonym_sources
from tbps.data.loader import EpochBatchSampler, TrainPairs, pair_table
from tbps.distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from tbps.errors import UserInputError
from tbps.fileio import sha256_file, write_parquet_atomic, write_text_atomic
from tbps.gradcache import grad_cached_backward
from tbps.objective import (
    ENCODERS,
    batch_inputs,
    check_process_emulation,
    nograd_pass,
    step_loss,
    text_view_keys,
)
from tbps.progress import progress
from tbps.schedule import learning_rate
from tbps.shards.index import ShardIndex

if TYPE_CHECKING:
    from tbps.data.device_aug import DeviceAugment

log = logging.getLogger(__name__)


def val_curve_schema() -> dict:
    """Columns of val_curve.parquet. Every run writes the file (no rows without a val split or with
    per-epoch validation off), so the workflow can declare it as an output."""
    import polars as pl

    return {"epoch": pl.Int64, "split": pl.String, "direction": pl.String,
            **dict.fromkeys(("R1", "R5", "R10", "mAP", "mINP"), pl.Float64)}


@dataclass
class TrainPaths:
    out: Path

    @property
    def last(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    @property
    def final(self) -> Path:
        return self.out / "final.pt"

    @property
    def config(self) -> Path:
        return self.out / "config.yaml"

    @property
    def log(self) -> Path:
        return self.out / "train_log.parquet"

    @property
    def val(self) -> Path:
        return self.out / "val_curve.parquet"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None = full fp32. 'auto' is bf16 on CUDA (no loss scaling needed) and fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_synonym_source(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``data.synonym_source: auto`` resolved to the source this run will use, when its text
    augmentation draws synonyms (a copy; otherwise ``cfg`` itself, so runs without synonyms keep their
    configuration and its hash). Saved so, the run's config.yaml, checkpoints and metrics rows say
    which source it used."""
    if not cfg.data.uses_synonyms:
        return cfg
    source = synonym_sources.resolve_synonym_source(cfg.data.synonym_source)
    if source == cfg.data.synonym_source:
        return cfg
    resolved = copy.deepcopy(cfg)
    resolved.data.synonym_source = source
    log.info("data.synonym_source auto -> %s", source)
    return resolved


def build_training_data(cfg: ExperimentConfig, manifest: Path, model_bundle):
    """The shard index, the (image, caption) pair table and the augmenting dataset of a run."""
    from tbps.data import transforms
    from tbps.data.device_aug import ViewDraws
    from tbps.data.word_ops import word_augmenter

    index = ShardIndex.from_manifest(manifest)
    missing = [s.meta.get("image_path") for s in index.samples if s.meta.get("train_id") is None]
    if missing:
        raise UserInputError(
            f"{manifest}: {len(missing)} samples have no train_id (first: {missing[0]}). "
            "Fix: train on the train split's manifest"
        )
    pairs = pair_table(index, cfg.data.few_shot_fraction, cfg.data.few_shot_seed)
    size = tuple(cfg.model.image_size)
    view = transforms.train_transform(size, cfg.data.normalisation, cfg.data.image_aug)
    simclr = transforms.simclr_transform(size, cfg.data.normalisation) if cfg.loss.uses_ss_i else None
    if cfg.data.image_aug.on_device:
        images = {"view_draws": ViewDraws(view, mvs=cfg.loss.uses_image_mvs, simclr=simclr)}
    else:
        images = {"image_transform": view, "mvs_transform": view if cfg.loss.uses_image_mvs else None,
                  "simclr_transform": simclr}
    word_ops = None
    if cfg.data.uses_word_ops:
        source = synonym_sources.resolve_synonym_source(cfg.data.synonym_source) if cfg.data.uses_synonyms \
            else "table"
        word_ops = word_augmenter(cfg.data, source)
    dataset = TrainPairs(
        index, pairs, tokenize=model_bundle.tokenizer, **images,
        backtranslation_prob=cfg.data.backtranslation_prob, word_deletion_prob=cfg.data.word_deletion_prob,
        max_words=cfg.data.max_words, word_ops=word_ops, text_views=text_view_keys(cfg.loss),
    )
    return index, pairs, dataset


def device_augment(cfg: ExperimentConfig) -> DeviceAugment | None:
    """What makes a batch's views on the training device (``data.image_aug.on_device``), else None."""
    from tbps.data.device_aug import DeviceAugment

    return DeviceAugment(cfg.data.normalisation) if cfg.data.image_aug.on_device else None


def make_loader(dataset, sampler, cfg: ExperimentConfig, device: torch.device) -> DataLoader:
    workers = cfg.data.num_workers
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
        # A private generator: creating the iterator must not consume the global RNG, whose
        # stream (dropout masks) has to continue exactly across a resume.
        generator=torch.Generator(), persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def make_encode(model, device: torch.device, amp_dtype: torch.dtype | None):
    """``encode(name, x)``: the tower an input goes through (``ENCODERS``), under autocast."""

    def encode(name: str, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return getattr(model, ENCODERS[name])(x)

    return encode


def train_step(model, optimizer, scaler, encode, batch: dict, loss_cfg: LossConfig, *, alpha: float, chunk: int,
               dist: DistInfo, augment: DeviceAugment | None = None) -> tuple[torch.Tensor, dict]:
    """One optimiser step: the views on the device (``augment``, the device path), soft-label pass,
    (gradient-cached) forward/backward, gradient averaging over processes, (scaled) optimiser step.
    Returns the loss and its terms (detached)."""
    if augment is not None:
        batch = augment(batch, dist.device)
    ids = batch["train_id"].to(dist.device)
    inputs = batch_inputs(batch, loss_cfg)
    nograd = nograd_pass(encode, inputs, chunk) if alpha > 0 else None
    scale = model.logit_scale_value()

    def loss_fn(emb):
        return step_loss(emb, ids, scale, loss_cfg, alpha=alpha, rank=dist.rank, nograd=nograd)

    optimizer.zero_grad(set_to_none=True)
    loss, terms = grad_cached_backward(encode, inputs, loss_fn, chunk, scale_loss=scaler.scale,
                                       rng_device=dist.device)
    _average_gradients(model, dist)
    scaler.step(optimizer)
    scaler.update()
    return loss, terms


def _average_gradients(model: torch.nn.Module, dist: DistInfo) -> None:
    """Data-parallel averaging over processes (what DDP would do), done explicitly because the
    gradient-cached step runs several backwards per step."""
    if dist.world_size == 1:
        return
    import torch.distributed as tdist

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    flat /= dist.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@dataclass
class RunState:
    """Where a run stands: what a resumable checkpoint carries besides the weights."""

    epoch: int = 0
    """0-based epoch to continue in."""
    next_batch: int = 0
    """First batch of ``epoch`` not yet trained on."""
    global_step: int = 0
    log_rows: list[dict] = field(default_factory=list)
    val_rows: list[dict] = field(default_factory=list)


@dataclass
class RunCheckpoints:
    """Restoring and writing one run's checkpoints; only the main process writes."""

    paths: TrainPaths
    cfg: ExperimentConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    is_main: bool
    train_data_sha256: str
    """sha256 of the train manifest: a resumed run must read the same shards."""
    model_record: dict = field(default_factory=dict)
    """What ``final.pt`` says about the model beyond its weights (parameter counts, chosen text layers)."""

    def restore(self) -> RunState:
        """Continue from ``last.pt`` (weights, optimiser, RNG streams, logs), or start over without it."""
        from tbps.model import load_checkpoint_weights

        last = self.paths.last
        state = checkpoint.load_checked(
            last, checkpoint.RESUME_FIELDS, "a resumable checkpoint (checkpoints/last.pt of `tbps train`)",
            "it is not the run's own checkpoint: move it away (the run then starts from scratch), or give "
            "another --out", map_location=self.device) if last.is_file() else None
        if state is not None and state["resume_sha256"] != self.cfg.resume_sha256():
            # A changed experiment reruns training (Snakemake's params/input triggers): start over
            # rather than continue a run of another configuration. The old checkpoint is replaced.
            log.warning("%s was made with another configuration: starting from scratch", last)
            state = None
        elif state is not None and state.get("train_data_sha256") != self.train_data_sha256:
            # Rebuilt training shards (e.g. another caption augmentation) rerun training with an
            # unchanged experiment: continuing the old run would keep the old data's weights.
            log.warning("%s was trained on other shards than %s: starting from scratch", last,
                        self.train_data_sha256[:12])
            state = None
        if state is None:
            log.info("no usable checkpoint at %s: starting from scratch", last)
            return RunState()
        bad = checkpoint.non_finite_weights(state["model"])
        if bad:
            raise UserInputError(
                f"{last}: {len(bad)} weight tensors hold NaN or infinite values (e.g. {bad[0]!r}): the run had "
                "diverged when it was saved. Fix: delete it and train again with a lower optim.lr")
        load_checkpoint_weights(self.model, state["model"], source=last)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            run = RunState(int(state["epoch"]), int(state["next_batch"]), int(state["global_step"]),
                           list(state["log_rows"]), list(state["val_rows"]))
            checkpoint.set_rng_state(state["rng"], self.device)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise UserInputError(
                f"{last}: its optimiser, scaler or random-number state does not fit this run "
                f"({type(e).__name__}: {str(e)[:200]}). Fix: move it away to start the run from scratch") from e
        log.info("resumed from %s at epoch %d, batch %d (step %d)", last, run.epoch + 1, run.next_batch,
                 run.global_step)
        return run

    def save_resumable(self, run: RunState) -> None:
        """``last.pt`` at ``run``'s position, and the training log so far."""
        if not self.is_main:
            return
        checkpoint.save(self.paths.last, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": run.epoch, "next_batch": run.next_batch,
            "global_step": run.global_step, "rng": checkpoint.rng_state(self.device), "config": self.cfg.to_dict(),
            "resume_sha256": self.cfg.resume_sha256(), "train_data_sha256": self.train_data_sha256,
            "log_rows": run.log_rows, "val_rows": run.val_rows,
            "environment": provenance.environment(),
        })
        if run.log_rows:
            import polars as pl

            write_parquet_atomic(pl.DataFrame(run.log_rows), self.paths.log)

    def save_final(self, run: RunState, *, stopped_early: bool, train_manifest: Path) -> None:
        """The training log, the validation curve and ``final.pt`` (weights and provenance)."""
        if not self.is_main:
            return
        import polars as pl

        write_parquet_atomic(pl.DataFrame(run.log_rows), self.paths.log)
        # Always written (empty without a val split), so the workflow can declare it.
        write_parquet_atomic(pl.DataFrame(run.val_rows, schema=val_curve_schema()), self.paths.val)
        # A run cut short by train.max_steps (a smoke run) still ends with an evaluable model; its
        # last.pt stays resumable with a larger max_steps.
        epochs_done = run.log_rows[-1]["epoch"] if run.log_rows else 0
        checkpoint.save(self.paths.final, {
            "model": self.model.state_dict(), "config": self.cfg.to_dict(), "config_sha256": self.cfg.sha256(),
            "epochs": epochs_done, "global_step": run.global_step, "seed": self.cfg.train.seed,
            "stopped_by_max_steps": stopped_early, "code_version": provenance.code_version(),
            "synonym_source": synonym_sources.synonym_source_used(self.cfg.data),
            "environment": provenance.environment(),
            "train_manifest_sha256": sha256_file(train_manifest), **self.model_record,
        })
        log.info("wrote %s (epoch %d, step %d)", self.paths.final, epochs_done, run.global_step)


def steps_per_epoch(num_pairs: int, global_batch: int, manifest: Path) -> int:
    """Full batches per epoch (the last incomplete one is dropped); at least one."""
    steps = num_pairs // global_batch
    if steps == 0:
        raise UserInputError(
            f"{manifest}: {num_pairs} training pairs are fewer than one batch of {global_batch}. "
            "Fix: lower data.batch_size"
        )
    return steps


def training_batch(cfg: ExperimentConfig, num_pairs: int, world_size: int) -> int:
    """The global batch: ``data.batch_size``, except for a few-shot subset with fewer pairs than that, which
    trains with one batch of all its pairs (rounded down to a multiple of the processes; docs/method.md
    D27): at 1 % the synthetic default's subset is smaller than one batch."""
    batch = cfg.data.batch_size
    if cfg.data.few_shot_fraction < 1.0 and 0 < num_pairs < batch:
        fitted = num_pairs - num_pairs % world_size
        if fitted:
            log.warning("few-shot subset: %d pairs are fewer than data.batch_size %d: training with batches of %d",
                        num_pairs, batch, fitted)
            return fitted
    return batch


def few_shot_record(cfg: ExperimentConfig, index: ShardIndex, pairs: np.ndarray) -> dict | None:
    """What final.pt says about a few-shot run's subset (None for a run on all images)."""
    if cfg.data.few_shot_fraction >= 1.0:
        return None
    images = np.unique(pairs[:, 0])
    return {"fraction": cfg.data.few_shot_fraction, "seed": cfg.data.few_shot_seed, "images": int(len(images)),
            "pairs": int(len(pairs)), "of_images": len(index.samples),
            "image_paths_sha256": hashlib.sha256("\n".join(
                str(index.samples[i].meta.get("image_path")) for i in images).encode()).hexdigest()}


def lr_schedule(cfg: ExperimentConfig, steps: int) -> Callable[[int], float]:
    """The learning rate at each global step (warm-up, then cosine) for ``steps`` steps per epoch."""
    optim = cfg.optim
    return functools.partial(learning_rate, steps_per_epoch=steps, epochs=optim.epochs, peak=optim.lr,
                             warmup_start=optim.warmup_start_lr, warmup_epochs=optim.warmup_epochs,
                             final=optim.min_lr)


def log_step(run: RunState, terms: dict, *, epoch: int, step_in_epoch: int, lr: float, alpha: float,
             logit_scale: float, samples_per_s: float) -> dict:
    """Append one step's row (loss terms averaged over processes) to the training log; returns it."""
    row = {"epoch": epoch + 1, "step": step_in_epoch + 1, "global_step": run.global_step, "lr": lr,
           "alpha": alpha, "logit_scale": logit_scale, "samples_per_s": samples_per_s}
    row.update({f"loss_{k}": float(all_reduce_mean(v)) for k, v in terms.items()})
    run.log_rows.append(row)
    if not math.isfinite(row["loss_total"]):
        raise UserInputError(f"training diverged: the loss became {row['loss_total']} at step {run.global_step}. "
                             "Fix: lower optim.lr (or warm up longer, optim.warmup_epochs)")
    return row


def train(cfg: ExperimentConfig, train_manifest: Path, out: Path, *, val_manifest: Path | None = None,
          resume: bool = False, device: str = "auto") -> Path:
    """Fine-tune ``cfg``'s model on the shards of ``train_manifest``; returns the path of ``final.pt``."""
    from tbps.model import build_model, param_groups
    from tbps.probe.layer_choice import resolve_importance_choice

    # Before anything is built or written: the saved configuration names the chosen layers.
    cfg, layer_choice = resolve_importance_choice(cfg)
    dist = init_distributed(device)
    dev = dist.device
    if dev.type == "cpu" and device == "auto":
        warnings.warn("no GPU found: training on the CPU (fine for the tiny models, far too slow for ViT-B/16)",
                      stacklevel=1)
    paths = TrainPaths(Path(out))
    check_process_emulation(cfg.loss, world_size=dist.world_size, global_batch=cfg.data.batch_size)
    cfg = resolve_synonym_source(cfg)
    seed_everything(cfg.train.seed)
    bundle = build_model(cfg.model, with_simclr_head=cfg.loss.uses_ss_i, with_text_simclr_head=cfg.loss.uses_ss_t)
    model = bundle.model.to(dev)
    index, pairs, dataset = build_training_data(cfg, Path(train_manifest), bundle)

    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
    )
    global_batch = training_batch(cfg, len(pairs), dist.world_size)
    steps = steps_per_epoch(len(pairs), global_batch, train_manifest)
    lr_at = lr_schedule(cfg, steps)
    amp_dtype = autocast_dtype(cfg.train.precision, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    model_record = {"trainable_parameters": bundle.parameters.trainable, "total_parameters": bundle.parameters.total,
                    "text_layer_choice": layer_choice, "batch_size": global_batch,
                    "few_shot": few_shot_record(cfg, index, pairs)}
    checkpoints = RunCheckpoints(paths, cfg, model, optimizer, scaler, dev, is_main=dist.is_main,
                                 train_data_sha256=sha256_file(train_manifest), model_record=model_record)
    run = checkpoints.restore() if resume else RunState()

    if dist.is_main:
        paths.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(paths.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log.info("training %s on %d pairs (%d images): %d epochs x %d steps of %d, %d process(es), device %s",
             cfg.name, len(pairs), len(index.samples), cfg.optim.epochs, steps, global_batch,
             dist.world_size, dev)

    encode = make_encode(model, dev, amp_dtype)
    augment = device_augment(cfg)
    max_steps = cfg.train.max_steps
    stopped_early = max_steps is not None and run.global_step >= max_steps
    model.train()
    for epoch in range(run.epoch, cfg.optim.epochs):
        if stopped_early:
            break
        sampler = EpochBatchSampler(len(pairs), global_batch, seed=cfg.train.seed, epoch=epoch, rank=dist.rank,
                                    world_size=dist.world_size, start_batch=run.next_batch)
        bar = progress(total=steps, initial=sampler.start_batch, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                       disable=not dist.is_main)
        tick = time.perf_counter()
        for step_in_epoch, batch in enumerate(make_loader(dataset, sampler, cfg, dev), start=sampler.start_batch):
            lr = lr_at(run.global_step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            alpha = losses.soft_label_alpha(step_in_epoch, steps, epoch, alpha=cfg.loss.soft_label_alpha,
                                            ramp_epochs=cfg.loss.soft_label_ramp_epochs)
            scale_used = float(model.logit_scale_value().detach())
            _, terms = train_step(model, optimizer, scaler, encode, batch, cfg.loss, alpha=alpha,
                                  chunk=cfg.train.grad_cache_chunk, dist=dist, augment=augment)
            run.global_step += 1
            run.epoch, run.next_batch = epoch, step_in_epoch + 1

            now = time.perf_counter()
            samples_per_s = global_batch / max(now - tick, 1e-9)
            tick = now
            row = log_step(run, terms, epoch=epoch, step_in_epoch=step_in_epoch, lr=lr, alpha=alpha,
                           logit_scale=scale_used, samples_per_s=samples_per_s)
            bar.set_postfix(loss=f"{row['loss_total']:.3f}", sps=f"{samples_per_s:.0f}")
            bar.update(1)
            if run.global_step % cfg.train.log_every_steps == 0:
                log.info("epoch %d step %d/%d loss %.4f lr %.2e scale %.1f %.0f samples/s", epoch + 1,
                         step_in_epoch + 1, steps, row["loss_total"], lr, row["logit_scale"], samples_per_s)
            stopped_early = max_steps is not None and run.global_step >= max_steps
            if stopped_early or run.global_step % cfg.train.checkpoint_every_steps == 0:
                checkpoints.save_resumable(run)
            if stopped_early:
                break
        bar.close()
        if stopped_early:
            log.info("stopped after %d steps (train.max_steps); resume with --resume", run.global_step)
            break
        if val_manifest is not None and cfg.train.eval_every_epoch and dist.is_main:
            run.val_rows.extend(_validate(model, bundle, cfg, Path(val_manifest), dev, epoch + 1))
            model.train()
        run.epoch, run.next_batch = epoch + 1, 0
        checkpoints.save_resumable(run)
        barrier()

    checkpoints.save_final(run, stopped_early=stopped_early, train_manifest=train_manifest)
    cleanup()
    return paths.final


def _validate(model, bundle, cfg: ExperimentConfig, manifest: Path, device: torch.device, epoch: int) -> list[dict]:
    from tbps.evaluate import evaluate_model

    results = evaluate_model(model, bundle.tokenizer, manifest, cfg, device)
    rows = []
    for direction, metrics in results.metrics.items():
        rows.append({"epoch": epoch, "split": "val", "direction": direction, **metrics})
    t2i = results.metrics["t2i"]
    log.info("epoch %d val t2i: R@1 %.2f R@5 %.2f R@10 %.2f mAP %.2f mINP %.2f", epoch, t2i["R1"], t2i["R5"],
             t2i["R10"], t2i["mAP"], t2i["mINP"])
    return rows
