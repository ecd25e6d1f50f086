"""Typed experiment configuration.

The defaults below are the TBPS-CLIP recipe (full preset, spec §4-§7). An
experiment file in ``config/experiments/`` holds only what differs from them,
optionally on top of another experiment (``inherit: NAME``). The resolved
configuration is saved next to every checkpoint and hashed into every metrics
row.
"""

from __future__ import annotations

import dataclasses
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
    """Hidden width of the SimCLR head (512->128->512 in the recipe); built only when SS-I is on."""
    freeze_text_layers: tuple[int, ...] = _ranged((), ge=1)
    """Text layers kept at their initial weights (1-based: 1 = the layer next to the token embedding;
    paper §3.5, Table 17). Ids above the model's text depth are refused when the model is built."""
    drop_text_layers: tuple[int, ...] = _ranged((), ge=1)
    """Text layers removed from the model: from the forward pass and the checkpoint (1-based)."""
    compress_from_importance: ImportanceChoice = field(default_factory=ImportanceChoice)
    """Choose the frozen or dropped text layers from a measured importance table instead of listing them."""


@dataclass
class LossConfig:
    identity_targets: bool = True
    """Identity-aware targets (every same-person pair is a positive); false = plain CLIP one-hot targets."""
    soft_label_alpha: float = _ranged(0.5, **PROBABILITY)
    """Weight of the model's own (no-grad pass) distribution in the N-ITC targets; 0 disables soft labels."""
    soft_label_ramp_epochs: int = _ranged(1, ge=0)
    """alpha ramps linearly per iteration from 0 over this many epochs (official behaviour)."""
    mvs_i: bool = True
    """Multi-view image supervision: N-ITC on a second augmented view."""
    mvs_mode: str = _ranged("average", choices=("average", "add"))
    """'average' = 1/2[N-ITC(V,T)+N-ITC(V~,T)] (official) or 'add' = N-ITC(V,T)+N-ITC(V~,T) (paper)."""
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
    global_grad: bool = True
    """All-gather features with gradients across processes (false: gathered copies are constants)."""

    @property
    def uses_ss_i(self) -> bool:
        """SS-I is on: training builds the SimCLR head and its two augmented views."""
        return self.ss_i_weight > 0


@dataclass
class DataConfig:
    batch_size: int = _ranged(320, ge=1)
    """Global batch (all processes together). The recipe needs 320: negatives are per step."""
    num_workers: int = _ranged(4, ge=0)
    """Loader worker processes per training process."""
    normalisation: str = _ranged("imagenet", choices=("imagenet", "clip"))
    """'imagenet' (official implementation) or 'clip' (CLIP pre-training statistics)."""
    image_pool: bool = True
    """Apply the augmentation pool (2 of 6 ops, with replacement) to training images."""
    backtranslation_prob: float = _ranged(0.1, **PROBABILITY)
    """Probability of replacing a training caption by its back-translation."""
    word_deletion_prob: float = _ranged(0.05, **PROBABILITY)
    """Per-word Bernoulli deletion probability for training captions."""
    max_words: int = _ranged(77, ge=1)
    """Captions are cut to this many words after cleaning."""
    few_shot_fraction: float = _ranged(1.0, gt=0.0, le=1.0)
    """Fraction of training identities' images used (few-shot experiments); 1.0 = all."""


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
              "data": ("num_workers",), "eval": ("batch_size", "query_chunk")}


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
    return obj


def _check_allowed(value, rule: Allowed | None, where: str) -> None:
    if rule is None or value is None:
        return
    items = value if isinstance(value, (tuple, list)) and rule.choices is None else (value,)
    for item in items:
        if not rule.accepts(item):
            raise UserInputError(f"{where}: {value!r} is not allowed. Fix: use a value {rule.describe()}")


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


def apply_overrides(cfg: ExperimentConfig, overrides: dict, where: str = "overrides") -> ExperimentConfig:
    """Apply a nested dict of differences to ``cfg`` (in place) with type checks."""
    return _build(ExperimentConfig, overrides, where, base=cfg)


def parse_dotted(pairs: list[str]) -> dict:
    """``["optim.lr=1e-3", "train.max_steps=10"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserInputError(f"override {pair!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def _experiment_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """(file, differences) pairs in the order they apply: parents first, then the file itself."""
    path = path.resolve()
    if path in seen:
        raise UserInputError(f"{seen[0]}: 'inherit' loops through {path}. Fix: remove the cycle")
    if not path.is_file():
        raise UserInputError(f"{path}: experiment file not found. Fix: pick one of config/experiments/*.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserInputError(f"{path}: not valid YAML ({e}). Fix: correct the syntax") from e
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: top level must be a mapping of config sections")
    parents = data.pop("inherit", None) or []
    if isinstance(parents, str):
        parents = [parents]
    chain: list[tuple[Path, dict]] = []
    for parent in parents:
        chain += _experiment_chain(path.parent / f"{parent}.yaml", (*seen, path))
    return chain + [(path, data)]


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
    return apply_overrides(ExperimentConfig(), d, where="saved config")
