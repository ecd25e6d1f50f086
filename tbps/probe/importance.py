"""Module importance of a trained model (paper App. A.4, Eqs. 10-11; docs/method.md D22, D23).

For every module (:mod:`tbps.probe.modules`) of both towers:

- C¹ (contribution): ΔM = R@1(θ) − R@1(module removed); C¹ = ΔM / max ΔM over the modules of the
  same tower (one heat map), so it is 1 for the tower's most important module.
- C² (criticality): the smallest alpha on the grid 0, step, 2·step, ..., 1 with
  R@1(θ) − R@1(module at (1 − alpha)·θ₀ + alpha·θ) < epsilon; alpha = 1 is θ itself, so C² <= 1.
  The grid is scanned upwards from 0 and stops at the first alpha that qualifies; R@1 is not
  assumed to be monotone in alpha.

M is text-to-image R@1 (percent) on one split, with the evaluation protocol of ``tbps evaluate``.
Speed: the split's images are decoded and transformed once and kept in memory with the
tokenised captions; both towers are encoded once for the reference. Perturbing an image module
then re-encodes only the images and scores them against the cached caption embeddings, and a
text module only the captions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from tbps.config import ExperimentConfig, config_from_dict
from tbps.data.captions import clean_caption
from tbps.data.eval_images import EvalImages
from tbps.device import resolve_device
from tbps.errors import UserInputError
from tbps.fileio import sha256_file, write_json_atomic, write_parquet_atomic
from tbps.metrics import retrieval_metrics_from_features
from tbps.probe.modules import TOWERS, Module, interpolated, modules_of, removed
from tbps.progress import progress
from tbps.provenance import environment

log = logging.getLogger(__name__)

THETA0_CHOICES = ("pretrained", "random")
DEFAULT_EPSILON = 3.0
DEFAULT_ALPHA_STEP = 0.05

IMPORTANCE_COLUMNS = {
    "tower": pl.String, "layer": pl.Int64, "module": pl.String, "C1": pl.Float64, "C2": pl.Float64,
    "R1_removed": pl.Float64, "drop_removed": pl.Float64, "R1_at_C2": pl.Float64, "encodes": pl.Int64,
    "R1_reference": pl.Float64,
}
"""The measured columns; every row also carries the provenance columns (settings, hashes, environment)."""


# ----------------------------------------------------------------------------- the measures


def alpha_grid(step: float) -> list[float]:
    """0, step, 2·step, ..., 1; ``step`` must divide 1 into a whole number of steps."""
    steps = round(1.0 / step) if step > 0 else 0
    if steps < 1 or not math.isclose(steps * step, 1.0, rel_tol=0, abs_tol=1e-9):
        raise UserInputError(f"--alpha-step {step}: must divide 1 into whole steps. Fix: e.g. 0.05, 0.1 or 0.25")
    return [i / steps for i in range(steps + 1)]


def criticality(r1_at: Callable[[float], float], reference: float, grid: Sequence[float],
                epsilon: float) -> tuple[float, float, int]:
    """C² of one module: ``(alpha, R@1 at alpha, evaluations made)``.

    ``r1_at(alpha)`` measures R@1 with the module interpolated; alpha = 1 is the model itself
    (R@1 = ``reference``, nothing to measure).
    """
    evaluations = 0
    for alpha in grid:
        if alpha >= 1.0:
            return 1.0, reference, evaluations
        r1 = r1_at(alpha)
        evaluations += 1
        if reference - r1 < epsilon:
            return alpha, r1, evaluations
    return 1.0, reference, evaluations


def contribution(drops: Sequence[float]) -> list[float]:
    """C¹ of one tower's modules from their R@1 drops: each drop over the largest (Eq. 10).

    When no removal lowers R@1 (largest drop <= 0) nothing contributes measurably: all zeros.
    """
    largest = max(drops)
    if largest <= 0:
        log.warning("no module's removal lowers R@1: C1 is 0 for the whole tower")
        return [0.0 for _ in drops]
    return [d / largest for d in drops]


# ----------------------------------------------------------------------------- the split, in memory


@dataclass
class ProbeSplit:
    """One split's eval-transformed images and tokenised cleaned captions (order of ``tbps evaluate``)."""

    images: Tensor
    image_ids: np.ndarray
    tokens: Tensor
    text_ids: np.ndarray


def load_split(manifest: Path, tokenizer, cfg: ExperimentConfig, *, num_workers: int = 2) -> ProbeSplit:
    loader = DataLoader(EvalImages(manifest, cfg.model.image_size, cfg.data.normalisation, num_workers),
                        batch_size=cfg.eval.batch_size, num_workers=num_workers, collate_fn=lambda rows: rows)
    images, image_ids, captions, text_ids = [], [], [], []
    for rows in loader:
        for image, pid, _path, caps in rows:
            images.append(image)
            image_ids.append(pid)
            captions.extend(clean_caption(c, max_words=cfg.data.max_words) for c in caps)
            text_ids.extend([pid] * len(caps))
    if not images or not captions:
        raise UserInputError(f"{manifest}: the split has no images or no captions to probe with")
    return ProbeSplit(torch.stack(images), np.asarray(image_ids, dtype=np.int64), tokenizer(captions),
                      np.asarray(text_ids, dtype=np.int64))


@dataclass
class TowerEncoder:
    """Encodes the split's images or captions in batches and counts every pass and its time."""

    model: torch.nn.Module
    split: ProbeSplit
    device: torch.device
    batch_size: int
    encodes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOWERS, 0))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TOWERS, 0.0))

    @torch.no_grad()
    def __call__(self, tower: str) -> Tensor:
        start = time.perf_counter()
        inputs, encode = ((self.split.images, self.model.encode_image) if tower == "image"
                          else (self.split.tokens, self.model.encode_text))
        out = torch.cat([encode(inputs[i:i + self.batch_size].to(self.device)).float()
                         for i in range(0, len(inputs), self.batch_size)])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.encodes[tower] += 1
        self.seconds[tower] += time.perf_counter() - start
        return out


def text_to_image_r1(text: Tensor, images: Tensor, split: ProbeSplit, query_chunk: int) -> float:
    # Chunk by chunk: the probe measures R@1 hundreds of times and never needs the whole matrix.
    return retrieval_metrics_from_features(text, images, split.text_ids, split.image_ids, ks=(1,),
                                           query_chunk=query_chunk)["R1"]


# ----------------------------------------------------------------------------- measuring a model


@dataclass
class ModuleScore:
    module: Module
    R1_removed: float
    C2: float
    R1_at_C2: float
    encodes: int


def score_modules(model: torch.nn.Module, theta0: dict[str, Tensor], encoder: TowerEncoder, *, epsilon: float,
                  grid: Sequence[float], query_chunk: int, modules: Sequence[Module] | None = None
                  ) -> tuple[float, list[ModuleScore]]:
    """The reference R@1 and, per module, R@1 when removed and C² (the other tower's embedding cached)."""
    model.eval()
    reference = {tower: encoder(tower) for tower in TOWERS}
    split = encoder.split

    def r1_with(tower: str) -> float:
        fresh = encoder(tower)
        text, images = (fresh, reference["image"]) if tower == "text" else (reference["text"], fresh)
        return text_to_image_r1(text, images, split, query_chunk)

    r1_reference = text_to_image_r1(reference["text"], reference["image"], split, query_chunk)
    scores = []
    todo = list(modules) if modules is not None else modules_of(model)
    for module in progress(todo, desc="probe modules", unit="module"):
        before = encoder.encodes[module.tower]
        with removed(model, module):
            r1_removed = r1_with(module.tower)

        def r1_at(alpha: float, module: Module = module) -> float:
            with interpolated(model, module, theta0, alpha):
                return r1_with(module.tower)

        c2, r1_c2, _ = criticality(r1_at, r1_reference, grid, epsilon)
        scores.append(ModuleScore(module, r1_removed, c2, r1_c2, encoder.encodes[module.tower] - before))
        log.debug("%s: R@1 removed %.2f, C2 %.2f", module, r1_removed, c2)
    return r1_reference, scores


def importance_table(r1_reference: float, scores: Sequence[ModuleScore]) -> pl.DataFrame:
    """The measured columns of the importance table, C¹ normalised per tower."""
    rows = []
    for tower in TOWERS:
        mine = [s for s in scores if s.module.tower == tower]
        if not mine:
            continue
        drops = [r1_reference - s.R1_removed for s in mine]
        for s, drop, c1 in zip(mine, drops, contribution(drops), strict=True):
            rows.append({"tower": tower, "layer": s.module.layer, "module": s.module.kind, "C1": c1, "C2": s.C2,
                         "R1_removed": s.R1_removed, "drop_removed": drop, "R1_at_C2": s.R1_at_C2,
                         "encodes": s.encodes, "R1_reference": r1_reference})
    return pl.DataFrame(rows, schema=IMPORTANCE_COLUMNS)


# ----------------------------------------------------------------------------- θ₀


def initial_weights(saved_config: dict, kind: str) -> tuple[dict[str, Tensor], str]:
    """θ₀ for C²: the weights the run started from (``pretrained``) or a seeded random initialisation
    of the same architecture (``random``); returns the state dict and a description of its source."""
    from tbps.model import build_model

    cfg = config_from_dict(saved_config)
    model_cfg = replace(cfg.model, freeze_text_layers=(), drop_text_layers=())
    if kind == "pretrained":
        if not model_cfg.pretrained:
            raise UserInputError(
                "--theta0 pretrained: this model was trained from random initialisation (model.pretrained is null), "
                "so it has no pre-trained weights. Fix: use --theta0 random")
        source = f"pretrained: {model_cfg.pretrained}"
    elif kind == "random":
        model_cfg = replace(model_cfg, pretrained=None)
        # The training seed: for a run trained from scratch this rebuilds its very first weights.
        torch.manual_seed(cfg.train.seed)
        source = f"random initialisation, seed {cfg.train.seed}"
    else:
        raise UserInputError(f"--theta0 {kind!r}: unknown. Fix: use one of {', '.join(THETA0_CHOICES)}")
    state = build_model(model_cfg, with_simclr_head=False).model.state_dict()
    return state, source


# ----------------------------------------------------------------------------- the stage


def probe_importance(checkpoint_path: Path, manifest: Path, out: Path, *, summary_out: Path | None = None,
                     dataset: str, experiment: str, split: str, theta0: str = "pretrained",
                     epsilon: float = DEFAULT_EPSILON, alpha_step: float = DEFAULT_ALPHA_STEP,
                     device: str = "auto", num_workers: int = 2, batch_size: int | None = None) -> pl.DataFrame:
    """Measure C¹ and C² of every module of a trained model; write the table (and a timing summary)."""
    from tbps.model import load_trained_model
    from tbps.model.checkpoint_load import require_tbps_checkpoint

    started = time.perf_counter()
    dev = resolve_device(device)
    grid = alpha_grid(alpha_step)
    if not epsilon > 0:
        raise UserInputError(f"--epsilon {epsilon}: must be > 0 (R@1 points). Fix: use 3 (the paper's)")
    saved = require_tbps_checkpoint(Path(checkpoint_path))
    if saved["config"]["model"].get("drop_text_layers"):
        raise UserInputError(
            f"{checkpoint_path}: text layers {saved['config']['model']['drop_text_layers']} of this model were "
            f"dropped, so its layers no longer line up with the architecture's. Fix: probe the uncompressed model")
    theta0_state, theta0_source = initial_weights(saved["config"], theta0)
    trained = load_trained_model(checkpoint_path, dev)
    cfg = trained.config
    split_data = load_split(Path(manifest), trained.tokenizer, cfg, num_workers=num_workers)
    # Kept on the device for the whole probe (CUHK-PEDES val at 224x224: 1.9 GB of fp32 images).
    split_data.images, split_data.tokens = split_data.images.to(dev), split_data.tokens.to(dev)
    encoder = TowerEncoder(trained.model, split_data, dev, batch_size or cfg.eval.batch_size)
    log.info("probing %s on %s (%d images, %d captions), theta0 = %s, epsilon %.3g, %d alphas",
             experiment, split, len(split_data.image_ids), len(split_data.text_ids), theta0_source, epsilon, len(grid))
    r1_reference, scores = score_modules(trained.model, theta0_state, encoder, epsilon=epsilon, grid=grid,
                                         query_chunk=cfg.eval.query_chunk)
    wall = time.perf_counter() - started
    provenance = {
        "dataset": dataset, "experiment": experiment, "model": cfg.model.name, "split": split, "theta0": theta0,
        "theta0_source": theta0_source, "epsilon": float(epsilon), "alpha_step": float(alpha_step),
        "num_queries": len(split_data.text_ids), "num_gallery": len(split_data.image_ids),
        "seed": trained.seed, "config_sha256": cfg.sha256(), "data_sha256": sha256_file(manifest),
        **environment(), "checkpoint": str(checkpoint_path),
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    table = importance_table(r1_reference, scores).with_columns(
        *(pl.lit(v).alias(k) for k, v in provenance.items()))
    write_parquet_atomic(table, out)
    if summary_out is not None:
        write_json_atomic(summary_out, {
            **{k: provenance[k] for k in ("dataset", "experiment", "model", "split", "theta0", "epsilon",
                                          "alpha_step", "num_queries", "num_gallery", "code_version", "gpu_model")},
            "device": str(dev), "R1_reference": r1_reference, "modules": len(scores), "alphas": len(grid),
            "wall_s": round(wall, 2), "encodes": encoder.encodes,
            "encode_s": {k: round(v, 2) for k, v in encoder.seconds.items()},
            "s_per_encode": {k: round(encoder.seconds[k] / n, 4) for k, n in encoder.encodes.items() if n},
        })
    log.info("reference R@1 %.2f; %d modules in %.1f s (%s encodes)", r1_reference, len(scores), wall,
             encoder.encodes)
    return table
