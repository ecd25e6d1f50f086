"""Typed experiment configuration.

The defaults below are the TBPS-CLIP recipe (full preset, docs/method.md). An
experiment file in ``config/experiments/`` holds only what differs from them,
optionally on top of another experiment (``inherit: NAME``). The resolved
configuration is saved next to every checkpoint and hashed into every metrics
row.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tbps.errors import UserInputError


@dataclass(frozen=True)
class Allowed:
    """What a setting accepts beyond its type: a closed range and/or a list of choices.

    Declared next to the field (``field(default=..., metadata=allowed(...))``) so that every
    place that builds a config (experiment files, ``--set``, saved configs, the study) rejects
    the same values with the same message. ``None`` values of optional fields are not checked.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        bounds = []
        for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)):
            if bound is not None:
                bounds.append(f"{op} {bound:g}")
        return " and ".join(bounds)

    def accepts(self, value) -> bool:
        if self.choices is not None and value not in self.choices:
            return False
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )


def allowed(**limits) -> dict:
    """Field metadata declaring a setting's range or choices (see :class:`Allowed`)."""
    return {"allowed": Allowed(**{k: tuple(v) if k == "choices" else v for k, v in limits.items()})}


def _ranged(default, **limits):
    return field(default=default, metadata=allowed(**limits))


PROBABILITY = {"ge": 0.0, "le": 1.0}


@dataclass
class ImportanceChoice:
    """Text layers chosen from a measured module-importance table (paper §3.5; docs/method.md D24).

    Training replaces this request by the chosen ids (``model.freeze_text_layers`` or
    ``model.drop_text_layers``) before it builds the model, so the saved configuration names the
    layers and a trained model never needs the table again.
    """

    table: str | None = None
    """importance.parquet written by `tbps probe importance`; null = no layers chosen this way."""
    x: int = _ranged(0, ge=0)
    """How many text layers: the x whose summed whole-layer C1 + C2 is smallest."""
    mode: str = _ranged("freeze", choices=("freeze", "drop"))
    """'freeze' keeps the chosen layers at their initial weights; 'drop' removes them."""


@dataclass
class ModelConfig:
    name: str = "ViT-B-16"
    """open_clip model name; ``TBPS-*`` names are the small CPU models registered by tbps."""
    pretrained: str | None = "openai"
    """open_clip pretrained tag (uses its cache), a local weights file, a `tbps train` final.pt of the same
    architecture (a model of ours standing in for pre-trained CLIP), or null for random init."""
    image_size: tuple[int, int] = _ranged((224, 224), ge=1)
    """Input (height, width). 224x224 is the official recipe; 384x128 interpolates position embeddings."""
    text_attn_dropout: float = _ranged(0.05, **PROBABILITY)
    """Dropout on post-softmax attention probabilities in every text layer (none in the image tower)."""
    freeze_patch_embed: bool = True
    """Do not train the patch-embedding convolution (the 'LockBL' trick)."""
    logit_scale_max: float = _ranged(100.0, gt=0.0)
    """The logit scale is used as min(exp(theta), this); theta itself is never clipped."""
    logit_scale_init: float | None = _ranged(None, gt=0.0)
    """Initial logit scale s (theta = ln s) for random-init models; null keeps the checkpoint's value."""
    simclr_head_dim: int = _ranged(128, ge=1)
    """Hidden width of the SimCLR heads (512->128->512 in the recipe); the image head is built only when SS-I
    is on, the text head (same shape) only when SS-T is on."""
    freeze_text_layers: tuple[int, ...] = _ranged((), ge=1)
    """Text layers kept at their initial weights (1-based: 1 = the layer next to the token embedding;
    paper §3.5, Table 17). Ids above the model's text depth are refused when the model is built."""
    drop_text_layers: tuple[int, ...] = _ranged((), ge=1)
    """Text layers removed from the model: from the forward pass and the checkpoint (1-based)."""
    compress_from_importance: ImportanceChoice = field(default_factory=ImportanceChoice)
    """Choose the frozen or dropped text layers from a measured importance table instead of listing them."""
    peft: str = _ranged("none", choices=("none", "coop", "clip_adapter"))
    """A parameter-efficient baseline of the paper's few-shot table (App. A.3) on the frozen model: 'coop' =
    learnable prompt context vectors before the caption (Eq. 8, docs/method.md D25), 'clip_adapter' = a
    residual bottleneck adapter on the image embedding (Eq. 9, D26). Only the method's own parameters train;
    every backbone weight (and the logit scale) stays as loaded. 'none' = train the model as configured."""
    coop_context_init: str = "a pedestrian photo of"
    """CoOp: the words whose token embeddings initialise the context vectors, one vector per BPE token
    (4 for the default); they are placed after the start token, the caption after them."""
    adapter_reduction: int = _ranged(4, ge=1)
    """CLIP-Adapter: bottleneck width = embedding width / this (512 -> 128 -> 512 for ViT-B/16)."""
    adapter_alpha: float = _ranged(0.4, **PROBABILITY)
    """CLIP-Adapter: the blend f^ = alpha * G(f) + (1 - alpha) * f of the adapted and the original image embedding."""


@dataclass
class LossConfig:
    identity_targets: bool = True
    """Identity-aware targets (every same-person pair is a positive); false = plain CLIP one-hot targets."""
    soft_label_alpha: float = _ranged(0.5, **PROBABILITY)
    """Weight of the model's own (no-grad pass) distribution in the N-ITC targets; 0 disables soft labels."""
    soft_label_ramp_epochs: int = _ranged(1, ge=0)
    """alpha ramps linearly per iteration from 0 over this many epochs (official behaviour)."""
    mvs_i: bool = True
    """MVS-I: N-ITC also on (I~, T), I~ a second draw of the image augmentation (docs/method.md#mvs)."""
    mvs_t: bool = False
    """MVS-T (paper Table 5, not in the recipe): N-ITC also on (I, T~), T~ a second independent draw of
    the caption augmentation (docs/method.md#mvs, D20)."""
    mvs_it: bool = False
    """MVS-IT (paper Table 5, not in the recipe): N-ITC also on (I~, T~) (docs/method.md#mvs, D20)."""
    mvs_mode: str = _ranged("average", choices=("average", "add"))
    """How the N-ITC terms of the views combine: 'average' = their mean, so MVS-I alone is
    1/2[N-ITC(V,T)+N-ITC(V~,T)] (official), or 'add' = their sum (the paper's wording)."""
    r_itc_weight: float = _ranged(1.0, ge=0.0)
    """Weight of the reversed-KL R-ITC term; 0 disables it."""
    r_itc_eps: float = _ranged(1e-2, gt=0.0)
    """Smoothing added to the hard targets inside log() in R-ITC."""
    c_itc_weight: float = _ranged(0.1, ge=0.0)
    """Overall weight of C-ITC; 0 disables it."""
    c_itc_term_weight: float = _ranged(0.25, ge=0.0)
    """Weight of each of the two C-ITC terms (C^I and C^C) inside c_itc_weight."""
    ss_i_weight: float = _ranged(0.4, ge=0.0)
    """Weight of the SimCLR image self-supervision loss SS-I; 0 disables it (and the head)."""
    ss_i_temperature: float = _ranged(0.1, gt=0.0)
    """NT-Xent temperature of SS-I."""
    ss_t_weight: float = _ranged(0.0, ge=0.0)
    """Weight of the text self-supervision loss SS-T (paper Table 5, not in the recipe; 0.4 like SS-I
    when studied): NT-Xent on two independent draws of the caption augmentation through a text SimCLR
    head (docs/method.md#ss, D19). 0 disables it (and the text head). SS-IT = SS-I and SS-T both on."""
    ss_t_temperature: float = _ranged(0.1, gt=0.0)
    """NT-Xent temperature of SS-T."""
    global_grad: bool = True
    """All-gather features with gradients across processes (false: gathered copies are constants)."""
    emulated_processes: int = _ranged(1, ge=1)
    """With global_grad false: compute the loss as this many data-parallel processes without GlobalGrad
    would, however many real processes run it (each virtual rank's rows against all columns, only its
    own slice carrying gradient; the ranks' losses averaged). The paper's non-GlobalGrad rows ran on 4
    GPUs: 4 reproduces them on 1, 2 or 4 (docs/method.md#globalgrad). 1 = off; needs global_grad false,
    a multiple of the real processes and a batch divisible by it."""

    @property
    def uses_ss_i(self) -> bool:
        """SS-I is on: training builds the SimCLR head and its two augmented views."""
        return self.ss_i_weight > 0

    @property
    def uses_ss_t(self) -> bool:
        """SS-T is on: training builds the text SimCLR head and two more caption views."""
        return self.ss_t_weight > 0

    @property
    def uses_image_mvs(self) -> bool:
        """A second image view I~ is needed (MVS-I or MVS-IT)."""
        return self.mvs_i or self.mvs_it

    @property
    def uses_text_mvs(self) -> bool:
        """A second caption view T~ is needed (MVS-T or MVS-IT)."""
        return self.mvs_t or self.mvs_it


IMAGE_AUG_OPS = ("resized_crop", "erasing", "grayscale", "color_jitter", "color_jitter_hue", "hflip", "vflip",
                 "gaussian_blur", "rotation")
"""Every single image op of the paper's ablation (Table 2); ``color_jitter`` is brightness/contrast/saturation."""
RECIPE_POOL_OPS = ("color_jitter", "rotation", "resized_crop", "grayscale", "hflip", "erasing")
"""The augmentation pool's six ops in the order of the pool table (docs/method.md#augmentation-pool)."""
AUTO_AUGMENT_STRATEGIES = ("autoaugment", "randaugment", "trivialaugment")
"""Strategies that are torchvision policies acting on the uint8 image (docs/method.md#d29-multi-augmentation-strategies)."""


@dataclass
class ImageAugConfig:
    """Training-image augmentation (paper §3.2, Table 2). The defaults are the recipe's pool.

    Every parameter is the one setting of an op wherever the op runs (pool, stack, a single-op row);
    the SimCLR views of SS-I keep their own fixed MoCo-v2 recipe (docs/method.md#simclr-views).
    """

    strategy: str = _ranged("pool", choices=("none", "pool", "stack", *AUTO_AUGMENT_STRATEGIES))
    """'pool' = ``pool_draws`` of ``ops`` drawn uniformly with replacement per image, applied in draw order;
    'stack' = every op of ``ops`` in the listed order, each with its own probability (one op = that op's
    single-op row); 'autoaugment' (ImageNet policy), 'randaugment', 'trivialaugment' = torchvision's
    policies on the resized uint8 image; 'none' = resize and normalise only."""
    ops: tuple[str, ...] = _ranged(RECIPE_POOL_OPS, choices=IMAGE_AUG_OPS)
    """Ops used by 'pool' and 'stack' (no repeats); the default is the recipe's pool of six."""
    pool_draws: int = _ranged(2, ge=1, le=16)
    """How many ops 'pool' draws per image (with replacement)."""
    crop_min_scale: float = _ranged(0.9, gt=0.0, le=1.0)
    """resized_crop: the crop's area share is uniform in [this, 1]; aspect ratio log-uniform in [3/4, 4/3]."""
    erasing_p: float = _ranged(0.5, **PROBABILITY)
    """erasing: probability of erasing one rectangle (value 0 before normalisation)."""
    erasing_area: tuple[float, float] = _ranged((0.10, 0.20), gt=0.0, lt=1.0)
    """erasing: the rectangle's area share is uniform in [low, high]; aspect ratio in [0.3, 3.3]."""
    grayscale_p: float = _ranged(0.1, **PROBABILITY)
    """grayscale: probability of replacing the image by its luma (3 channels)."""
    flip_p: float = _ranged(0.5, **PROBABILITY)
    """hflip, vflip: probability of flipping."""
    jitter: float = _ranged(0.1, ge=0.0, lt=1.0)
    """color_jitter: brightness, contrast and saturation factors each uniform in [1 - this, 1 + this],
    applied in random order."""
    jitter_hue: float = _ranged(0.1, ge=0.0, le=0.5)
    """color_jitter_hue: hue shift uniform in [-this, this] (fractions of the hue circle)."""
    blur_kernel: int = _ranged(3, ge=1, le=63)
    """gaussian_blur: kernel size (odd), reflect padding."""
    blur_sigma: tuple[float, float] = _ranged((0.1, 2.0), gt=0.0, le=32.0)
    """gaussian_blur: sigma uniform in [low, high]."""
    rotation_degrees: float = _ranged(15.0, ge=0.0, le=180.0)
    """rotation: angle uniform in [-this, this], nearest neighbour, black fill (0 before normalisation)."""
    randaugment_ops: int = _ranged(2, ge=1, le=16)
    """randaugment: N, ops per image."""
    randaugment_magnitude: int = _ranged(9, ge=0, le=30)
    """randaugment: M, the magnitude level out of torchvision's 31 (0..30)."""
    on_device: bool = False
    """Run the augmentation batched on the training device: loader workers only decode, resize to the
    training size and draw each sample's parameters (from the same per-sample seed as the CPU path); the
    ops, the MVS view, the SimCLR views and normalisation run after the batch reaches the device
    (docs/method.md#augmentation-on-the-device). Not for the torchvision policies."""

    def validate(self, where: str) -> None:
        """Checks across fields (each field's own range is declared above)."""
        if self.strategy in ("pool", "stack") and not self.ops:
            raise UserInputError(f"{where}.ops: empty with strategy {self.strategy!r}. Fix: list at least one op "
                                 f"of {list(IMAGE_AUG_OPS)}, or use strategy 'none'")
        repeated = sorted({op for op in self.ops if self.ops.count(op) > 1})
        if repeated:
            raise UserInputError(f"{where}.ops: {repeated} listed more than once. Fix: list each op once "
                                 "(the pool's draw is already with replacement)")
        for name in ("erasing_area", "blur_sigma"):
            low, high = getattr(self, name)
            if low > high:
                raise UserInputError(f"{where}.{name}: {[low, high]} has low > high. Fix: give [low, high]")
        if self.blur_kernel % 2 == 0:
            raise UserInputError(f"{where}.blur_kernel: {self.blur_kernel} is even. Fix: use an odd size (3, 7, 11)")
        if self.on_device and self.strategy in AUTO_AUGMENT_STRATEGIES:
            raise UserInputError(
                f"{where}.on_device: true, but strategy {self.strategy!r} (a torchvision policy) runs only in the "
                "loader workers. Fix: set on_device: false for this strategy, or use 'pool', 'stack' or 'none'"
            )


@dataclass
class DataConfig:
    batch_size: int = _ranged(320, ge=1)
    """Global batch (all processes together). The recipe needs 320: negatives are per step."""
    num_workers: int = _ranged(4, ge=0)
    """Loader worker processes per training process."""
    normalisation: str = _ranged("imagenet", choices=("imagenet", "clip"))
    """'imagenet' (official implementation) or 'clip' (CLIP pre-training statistics)."""
    image_aug: ImageAugConfig = field(default_factory=ImageAugConfig)
    """Training-image augmentation: strategy, ops and their parameters, CPU or device path."""
    backtranslation_prob: float = _ranged(0.1, **PROBABILITY)
    """Probability of replacing a training caption by its back-translation."""
    word_deletion_prob: float = _ranged(0.05, **PROBABILITY)
    """Per-word Bernoulli deletion probability for training captions (RD; the recipe's last text op)."""
    synonym_replacement_alpha: float = _ranged(0.0, **PROBABILITY)
    """SR (paper Table 3, not in the recipe): replace n = max(1, int(alpha*L)) randomly chosen word units
    (L = words in the caption) by a synonym each; 0 = off (docs/method.md#text-augmentation-ablation)."""
    random_insertion_alpha: float = _ranged(0.0, **PROBABILITY)
    """RI (paper Table 3): n = max(1, int(alpha*L)) times, insert a synonym of a random word unit at a
    random position; 0 = off."""
    random_swap_alpha: float = _ranged(0.0, **PROBABILITY)
    """RS (paper Table 3): n = max(1, int(alpha*L)) times, swap two random word units; 0 = off."""
    eda_alpha: float = _ranged(0.0, **PROBABILITY)
    """EDA (paper Table 3): per caption, one of SR, RI, RS (n = max(1, int(alpha*L))) and unit-level
    Bernoulli deletion (p = alpha), chosen uniformly; 0 = off."""
    synonym_source: str = _ranged("auto", choices=("auto", "wordnet", "table"))
    """Where SR, RI and EDA draw synonyms: 'wordnet' (NLTK's WordNet through nlpaug; needs nltk and
    NLTK_DATA with corpora/wordnet), 'table' (the shipped pedestrian synonym table) or 'auto' (WordNet
    when available, else the table; resolved once per run and saved resolved in the run's config)."""
    max_words: int = _ranged(77, ge=1)
    """Captions are cut to this many words after cleaning."""
    few_shot_fraction: float = _ranged(1.0, gt=0.0, le=1.0)
    """Fraction F of the training images used, each with all its captions (few-shot experiments, paper
    Tables 11 and 16): a seeded random floor(F * N) of the N images (docs/method.md D27); 1.0 = all. A
    subset with fewer pairs than data.batch_size trains with one batch of all of them."""
    few_shot_seed: int = _ranged(0, ge=0)
    """Seed of the few-shot subset, independent of train.seed, so every method of one fraction trains on
    the same images."""

    @property
    def uses_word_ops(self) -> bool:
        """A word-level augmentation (SR, RI, RS or EDA) is on: training loads spaCy."""
        return any(a > 0 for a in (self.synonym_replacement_alpha, self.random_insertion_alpha,
                                   self.random_swap_alpha, self.eda_alpha))

    @property
    def uses_synonyms(self) -> bool:
        """SR, RI or EDA is on: the run draws synonyms (from ``synonym_source``)."""
        return any(a > 0 for a in (self.synonym_replacement_alpha, self.random_insertion_alpha, self.eda_alpha))


@dataclass
class OptimConfig:
    epochs: int = _ranged(5, ge=1)
    lr: float = _ranged(1e-4, gt=0.0, le=1.0)
    """Peak learning rate (every parameter, the SimCLR head included)."""
    warmup_start_lr: float = _ranged(1e-6, ge=0.0, le=1.0)
    warmup_epochs: float = _ranged(1.0, ge=0.0)
    min_lr: float = _ranged(5e-6, ge=0.0, le=1.0)
    """Cosine decay ends here."""
    weight_decay: float = _ranged(0.02, ge=0.0, le=1.0)
    """Decoupled weight decay; 0 for biases, norms and parameters with fewer than 2 dims."""
    betas: tuple[float, float] = _ranged((0.9, 0.98), ge=0.0, lt=1.0)
    """Adam's (beta1, beta2); each in [0, 1)."""
    eps: float = _ranged(1e-8, gt=0.0, le=1.0)


@dataclass
class TrainConfig:
    seed: int = _ranged(1, ge=0)
    """The same seed on every process (1 = full preset, 0 = simplified, as in the official code)."""
    precision: str = _ranged("auto", choices=("auto", "fp32", "bf16", "fp16"))
    """'auto' = bf16 autocast on CUDA, fp32 on CPU; or 'fp32', 'bf16', 'fp16'."""
    grad_cache_chunk: int = _ranged(0, ge=0)
    """Per-process chunk size for exact big batches by gradient caching; 0 = no chunking."""
    checkpoint_every_steps: int = _ranged(200, ge=1)
    """Write a resumable checkpoint every N optimiser steps (and at each epoch end)."""
    max_steps: int | None = _ranged(None, ge=1)
    """Stop after this many steps (smoke runs); null = all epochs."""
    eval_every_epoch: bool = True
    """Evaluate on the validation split (when the dataset has one) after every epoch."""
    log_every_steps: int = _ranged(10, ge=1)


@dataclass
class EvalConfig:
    batch_size: int = _ranged(256, ge=1)
    query_chunk: int = _ranged(1024, ge=1)
    """Queries ranked per chunk: bounds memory at chunk x gallery."""
    precision: str = _ranged("fp32", choices=("fp32", "bf16"))
    """Arithmetic of the embedding passes: 'fp32' (the faithful protocol) or 'bf16' autocast (several
    times the throughput on a GPU's tensor cores; the features are rounded to bf16's 8-bit mantissa, so
    close scores may swap ranks). Ranking is fp32 either way; metrics rows record it (eval_precision)."""


@dataclass
class ExperimentConfig:
    name: str = "tbps_clip"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def sha256(self) -> str:
        """Hash of the science (everything but name/description)."""
        d = self.to_dict()
        d.pop("name", None)
        d.pop("description", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def resume_sha256(self) -> str:
        """Hash of what a resumed run must share with the interrupted one."""
        d = self.to_dict()
        for section, keys in _RESUMABLE.items():
            for key in keys:
                d[section].pop(key, None)
        d.pop("name", None)
        d.pop("description", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# Settings that change neither the numbers nor the data order: a run may be resumed with other values.
_RESUMABLE = {"train": ("max_steps", "checkpoint_every_steps", "log_every_steps", "eval_every_epoch"),
              "data": ("num_workers",), "eval": ("batch_size", "query_chunk", "precision")}


def _to_plain(obj):
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(value, annotation, where: str):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UserInputError as e:
                errors.append(str(e))
        raise UserInputError(errors[0] if errors else f"{where}: cannot be null")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise UserInputError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserInputError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept what float() accepts.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise UserInputError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserInputError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserInputError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise UserInputError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where)
    return value


def _build(cls, values: dict, where: str, base=None):
    if not isinstance(values, dict):
        raise UserInputError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserInputError(
            f"{where}: unknown key(s) {unknown}. Fix: use one of {sorted(known)}"
        )
    obj = base if base is not None else cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            setattr(obj, key, _build(type(current), value, f"{where}.{key}", base=current))
        else:
            coerced = _coerce(value, hints[key], f"{where}.{key}")
            _check_allowed(coerced, fields[key].metadata.get("allowed"), f"{where}.{key}")
            setattr(obj, key, coerced)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def _check_allowed(value, rule: Allowed | None, where: str) -> None:
    if rule is None or value is None:
        return
    items = value if isinstance(value, (tuple, list)) else (value,)  # a list setting: each item
    for item in items:
        if not rule.accepts(item):
            wanted = rule.describe() if rule.choices is not None else f"a value {rule.describe()}"
            raise UserInputError(f"{where}: {value!r} is not allowed. Fix: use {wanted}")


def check_allowed(cfg) -> None:
    """Check every field of a (nested) config dataclass against its declared range or choices.

    Building a config through :func:`apply_overrides` already checks each value it sets; this
    also covers values set directly in code (e.g. tests or programmatic studies).
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_allowed(value)
        else:
            _check_allowed(value, f.metadata.get("allowed"), f"{type(cfg).__name__}.{f.name}")
    if hasattr(cfg, "validate"):
        cfg.validate(type(cfg).__name__)


def apply_overrides(cfg: ExperimentConfig, overrides: dict, where: str = "overrides") -> ExperimentConfig:
    """Apply a nested dict of differences to ``cfg`` (in place) with type checks."""
    return _build(ExperimentConfig, overrides, where, base=cfg)


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML (no Python objects) that also refuses a key given twice in one mapping, which
    plain YAML loading resolves silently by dropping the first value."""


def _no_duplicate_keys(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def load_yaml(text: str):
    """Parse YAML safely (see :class:`_StrictLoader`); errors are ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def parse_dotted(pairs: list[str]) -> dict:
    """``["optim.lr=1e-3", "train.max_steps=10"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserInputError(f"--set {pair!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, raw = pair.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise UserInputError(f"--set {pair!r}: the key {key!r} has an empty part. "
                                 "Fix: write SECTION.SETTING=VALUE, e.g. --set optim.lr=1e-3")
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as e:
            problem = " ".join(str(e).split())
            raise UserInputError(f"--set {pair!r}: the value {raw!r} is not valid YAML ({problem}). "
                                 "Fix: quote it or correct it, e.g. --set optim.lr=1e-3") from None
        node = out
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserInputError(f"--set {pair!r}: {'.'.join(parts[:depth + 1])} was already set to a value, "
                                     "not a section. Fix: set it either as a whole or setting by setting")
        if isinstance(node.get(parts[-1]), dict):
            raise UserInputError(f"--set {pair!r}: {key} already has settings from another --set. "
                                 "Fix: set it either as a whole or setting by setting")
        node[parts[-1]] = value
    return out


@functools.lru_cache(maxsize=256)
def _parsed_experiment_text(text: str):
    """Planning the paper's study resolves ~70 rows from the same few presets and mixins (each through
    its ``inherit`` chain, some 1,700 file reads): each distinct text is parsed once. Keyed by the text,
    so an edited file is parsed again; callers get a copy (they pop ``inherit`` and apply the rest)."""
    return load_yaml(text)


def _experiment_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """(file, differences) pairs in the order they apply: parents first, then the file itself."""
    path = path.resolve()
    if path in seen:
        raise UserInputError(f"{seen[0]}: 'inherit' loops through {path}. Fix: remove the cycle")
    if not path.is_file():
        raise UserInputError(f"{path}: experiment file not found. Fix: pick one of config/experiments/*.yaml")
    try:
        data = copy.deepcopy(_parsed_experiment_text(path.read_text(encoding="utf-8"))) or {}
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}). "
                             "Fix: save the experiment file as UTF-8") from None
    except yaml.YAMLError as e:
        raise UserInputError(f"{path}: not valid YAML ({e}). Fix: correct the syntax") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: top level must be a mapping of config sections")
    parents = data.pop("inherit", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise UserInputError(f"{path}: 'inherit' is {parents!r}. Fix: give an experiment name or a list of names "
                             "(files next to this one, without .yaml)")
    chain: list[tuple[Path, dict]] = []
    for parent in parents:
        chain += _experiment_chain(path.parent / f"{parent}.yaml", (*seen, path))
    return chain + [(path, data)]


def experiment_file_settings(path: str | Path) -> list[tuple[Path, dict]]:
    """The differences an experiment file makes, as (file, differences) pairs in the order they apply: its
    ``inherit`` parents first, then the file itself (without the ``inherit`` key). For applying a mixin
    (e.g. ``_tiny``) on top of another configuration: ``apply_overrides(cfg, data, str(file))`` for each."""
    return _experiment_chain(Path(path))


def load_experiment(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Load an experiment file: differences from the defaults, on top of its ``inherit`` parents
    (a name or a list of names of sibling files, applied in order)."""
    path = Path(path)
    cfg = ExperimentConfig()
    for file, data in _experiment_chain(path):
        apply_overrides(cfg, data, where=str(file))
    cfg.name = path.stem
    if overrides:
        apply_overrides(cfg, overrides)
    return cfg


def config_from_dict(d: dict) -> ExperimentConfig:
    """Rebuild a resolved config (e.g. the one saved beside a checkpoint)."""
    data = d.get("data")
    if isinstance(data, dict) and "image_pool" in data:
        # Saved before data.image_aug existed: image_pool true was the recipe's pool, false no augmentation.
        data = {k: v for k, v in data.items() if k != "image_pool"}
        data["image_aug"] = {"strategy": "pool" if d["data"]["image_pool"] else "none"}
        d = {**d, "data": data}
    return apply_overrides(ExperimentConfig(), d, where="saved config")
