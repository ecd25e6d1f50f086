"""A study on one dataset: each row -> the experiment it trains; rows sharing a configuration -> one run.

A row resolves as config/study.yaml describes (its top): the root row's preset, every ``set:`` from the
root down, then the dataset's stand-ins (:class:`StudySettings`): the mixin of the row's backbone, the
schedule mixin and the batch scale. A mixin may not touch a setting some row of the chain sets (that
would silently undo the row). Rows whose resolved configurations have the same ``sha256()`` share one
run, named ``study_<id>`` after the alphabetically first of their ids, so a run keeps its name however
the file's tables are ordered or which of them is built.

The workflow trains a run with the existing ``train`` rule: ``--experiment`` = the root preset's file and
``--set`` = :attr:`PlannedRun.overrides`, the leaves where the resolved configuration differs from that
preset (values as JSON). Snakemake records them as the job's params, so a changed row, mixin or setting
retrains exactly the runs it changes. Nothing here reads data or writes a file (planning, dry runs).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from tbps.config import (
    ExperimentConfig,
    apply_overrides,
    check_allowed,
    experiment_file_settings,
    load_experiment,
    parse_dotted,
)
from tbps.errors import UserInputError
from tbps.study import RUN_PREFIX
from tbps.study.spec import Study, StudyRow

PAPER_PRETRAINED = "openai"
"""Every backbone of the paper starts from OpenAI's CLIP weights."""
CPU_MODEL_PREFIX = "TBPS-"
"""The tiny CPU models are registered under TBPS-* names (tbps/model/tiny.py)."""
RECIPE_BACKTRANSLATION = "backtranslation"


@dataclass(frozen=True)
class StudySettings:
    """What stands in for the paper's setup on one dataset (config/config.yaml, ``study:``)."""

    experiments_dir: Path
    """Folder of the presets and mixins."""
    backbones: dict[str, str]
    """Backbone named in the study file (ViT-B-32, ViT-B-16) -> the mixin that sets it."""
    schedule: str | None = None
    """Mixin applied to every row after the backbone (e.g. a shorter schedule), or None."""
    batch_scale: float = 1.0
    """Every row's global batch is multiplied by this (rounded)."""
    augment_backend: str = RECIPE_BACKTRANSLATION
    """Where the dataset's stored caption paraphrases come from (the `augment` stage's backend)."""

    @classmethod
    def merged(cls, experiments_dir: str | Path, common: dict, per_dataset: dict | None,
               augment_backend: str, every_row_on: str | None = None) -> StudySettings:
        """The top-level ``study:`` settings with a dataset's own ``study:`` over them (backbones key by key).

        ``every_row_on`` (config/config.yaml's ``study_backbone``, e.g. ``--config study_backbone=ViT-B-16``)
        trains every row with one stand-in: a backbone name of the merged mapping (its mixin on this
        dataset), else the name of a mixin of ``experiments_dir``."""
        per_dataset = per_dataset or {}
        backbones = {**common.get("backbones", {}), **per_dataset.get("backbones", {})}
        if every_row_on:
            mixin = backbones.get(every_row_on, every_row_on)
            if not (Path(experiments_dir) / f"{mixin}.yaml").is_file():
                raise UserInputError(
                    f"study_backbone {every_row_on!r}: neither a backbone of `study: backbones:` "
                    f"({', '.join(sorted(backbones))}) nor a mixin of {experiments_dir}. Fix: name one of them, "
                    "e.g. --config study_backbone=ViT-B-16 (or a mixin such as _study_tiny_vit)")
            backbones = dict.fromkeys(backbones, mixin)
        schedule = per_dataset["schedule"] if "schedule" in per_dataset else common.get("schedule")
        scale = per_dataset.get("batch_scale", common.get("batch_scale", 1.0))
        return cls(Path(experiments_dir), backbones, schedule, float(scale), augment_backend)


@dataclass(frozen=True)
class PlannedRow:
    row: StudyRow
    run: str
    config: ExperimentConfig
    """The resolved experiment, named after its run."""
    departures: tuple[str, ...]
    """Why this row on this dataset is not the paper's row as described (empty: faithful)."""

    @property
    def faithful(self) -> bool:
        return not self.departures


@dataclass(frozen=True)
class PlannedRun:
    name: str
    rows: tuple[str, ...]
    """The row ids that resolve to this run's configuration, sorted."""
    preset: str
    """The root preset whose file the run's ``tbps train --experiment`` reads."""
    overrides: tuple[str, ...]
    """``--set`` KEY=VALUE pairs that turn the preset into the run's configuration (name included)."""
    config: ExperimentConfig
    sha256: str

    @property
    def on_cpu(self) -> bool:
        """The tiny CPU models train without a GPU."""
        return self.config.model.name.startswith(CPU_MODEL_PREFIX)


@dataclass(frozen=True)
class StudyPlan:
    study: Study
    settings: StudySettings
    rows: dict[str, PlannedRow] = field(repr=False)
    runs: dict[str, PlannedRun] = field(repr=False)

    def table_runs(self, tables: list[str] | None = None) -> list[str]:
        """The runs of ``tables`` (every table by default), each once, in table order."""
        return list(dict.fromkeys(self.rows[r].run for r in self.study.table_rows(tables)))


def preset_file(settings: StudySettings, name: str) -> Path:
    return settings.experiments_dir / f"{name}.yaml"


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are leaves."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _apply_mixin(cfg: ExperimentConfig, name: str, what: str, row_id: str, chain_keys: dict[str, str],
                 settings: StudySettings) -> None:
    path = preset_file(settings, name)
    if not path.is_file():
        raise UserInputError(f"{path}: the {what} mixin {name!r} (config/config.yaml, `study:`) does not exist. Fix: "
                             f"name a file of {settings.experiments_dir} (without .yaml)")
    for file, data in experiment_file_settings(path):
        data = {k: v for k, v in data.items() if k not in ("name", "description")}
        for key in _leaves(data):
            if key in chain_keys:
                raise UserInputError(
                    f"{file}: the {what} mixin sets {key}, which the study's row {chain_keys[key]!r} sets "
                    f"(needed by row {row_id!r}): the mixin would silently undo the row. Fix: remove {key} from the "
                    "mixin (a stand-in sets the model and the schedule, not what a row varies)")
        apply_overrides(cfg, copy.deepcopy(data), where=str(file))


def resolve_row(study: Study, row_id: str, settings: StudySettings) -> ExperimentConfig:
    """The experiment one row trains on a dataset with ``settings`` (named after the row until planned)."""
    chain = study.chain(row_id)
    root = chain[0]
    cfg = load_experiment(preset_file(settings, root.experiment))
    chain_keys: dict[str, str] = {}
    for row in chain:
        apply_overrides(cfg, copy.deepcopy(row.overrides), where=f"{study.path}: rows.{row.id}.set")
        chain_keys.update(dict.fromkeys(_leaves(row.overrides), row.id))
    row = study.rows[row_id]
    if row.backbone not in settings.backbones:
        raise UserInputError(
            f"{study.path}: row {row_id!r} is trained with backbone {row.backbone!r}, which config/config.yaml's "
            f"`study: backbones:` does not map (it maps {sorted(settings.backbones)}). Fix: add `{row.backbone}: "
            "<mixin>` there (per dataset under `datasets: <key>: study: backbones:`)")
    _apply_mixin(cfg, settings.backbones[row.backbone], f"{row.backbone} backbone", row_id, chain_keys, settings)
    if settings.schedule:
        _apply_mixin(cfg, settings.schedule, "schedule", row_id, chain_keys, settings)
    if settings.batch_scale != 1.0:
        cfg.data.batch_size = max(1, round(cfg.data.batch_size * settings.batch_scale))
    processes = cfg.loss.emulated_processes
    if cfg.data.batch_size % processes:
        raise UserInputError(
            f"{study.path}: row {row_id!r} emulates {processes} processes, but its global batch is "
            f"{cfg.data.batch_size} (batch_scale {settings.batch_scale:g}), not a multiple of {processes}. Fix: pick "
            "a `study: batch_scale:` that keeps the batch a multiple of it (0.2: 320 -> 64, 160 -> 32)")
    check_allowed(cfg)
    cfg.name = f"{RUN_PREFIX}{row_id}"
    cfg.description = f"study row {row_id}: {row.name}"
    return cfg


def _backbone_label(name: str) -> str:
    """open_clip's ViT-B-32 -> the paper's ViT-B/32."""
    return name[::-1].replace("-", "/", 1)[::-1] if name.startswith("ViT-") else name


def departures(row: StudyRow, cfg: ExperimentConfig, settings: StudySettings) -> tuple[str, ...]:
    """Why the row, resolved on this dataset, is not the paper's row as the paper describes it."""
    reasons = [row.reason] if row.reason else []
    if cfg.model.name != row.backbone or cfg.model.pretrained != PAPER_PRETRAINED:
        weights = f"weights {cfg.model.pretrained}" if cfg.model.pretrained else "trained from scratch"
        reasons.append(f"{cfg.model.name} ({weights}) stands in for {_backbone_label(row.backbone)} with OpenAI's "
                       "weights")
    if settings.schedule:
        reasons.append(f"schedule {settings.schedule}: {cfg.optim.epochs} epoch(s)")
    if settings.batch_scale != 1.0:
        reasons.append(f"global batch {cfg.data.batch_size} (batch_scale {settings.batch_scale:g})")
    if cfg.data.backtranslation_prob > 0 and settings.augment_backend != RECIPE_BACKTRANSLATION:
        if settings.augment_backend == "none":
            reasons.append("back-translation is a no-op (augment_backend: none)")
        else:
            reasons.append(f"back-translation replaced by offline paraphrases (augment_backend: "
                           f"{settings.augment_backend})")
    return tuple(reasons)


def overrides_from(preset: ExperimentConfig, cfg: ExperimentConfig) -> tuple[str, ...]:
    """``--set`` pairs that turn ``preset`` into ``cfg`` (every differing leaf, values as JSON, sorted), the
    name last."""
    before = _leaves({k: v for k, v in preset.to_dict().items() if k not in ("name", "description")})
    after = _leaves({k: v for k, v in cfg.to_dict().items() if k not in ("name", "description")})
    pairs = [f"{key}={json.dumps(value)}" for key, value in sorted(after.items()) if before.get(key) != value]
    return (*pairs, f"name={json.dumps(cfg.name)}")


def plan_study(study: Study, settings: StudySettings) -> StudyPlan:
    """Resolve every row of every table and group the rows into runs."""
    configs = {row_id: resolve_row(study, row_id, settings) for row_id in study.table_rows()}
    groups: dict[str, list[str]] = {}
    for row_id, cfg in configs.items():
        groups.setdefault(cfg.sha256(), []).append(row_id)
    rows: dict[str, PlannedRow] = {}
    runs: dict[str, PlannedRun] = {}
    for sha, ids in groups.items():
        ids = sorted(ids)
        name = f"{RUN_PREFIX}{ids[0]}"
        config = copy.deepcopy(configs[ids[0]])
        config.name = name
        config.description = "study rows " + ", ".join(ids)
        root = study.chain(ids[0])[0].experiment
        preset = load_experiment(preset_file(settings, root))
        overrides = overrides_from(preset, config)
        rebuilt = load_experiment(preset_file(settings, root), parse_dotted(list(overrides)))
        if rebuilt.sha256() != sha:  # the --set text must give back exactly this configuration
            raise RuntimeError(f"study run {name}: the --set overrides do not rebuild its configuration")
        runs[name] = PlannedRun(name, tuple(ids), root, overrides, config, sha)
        for row_id in ids:
            row = study.rows[row_id]
            rows[row_id] = PlannedRow(row, name, config, departures(row, configs[row_id], settings))
    return StudyPlan(study, settings, rows, runs)
