"""A model trained by ``tbps train``, loaded for inference (evaluation and search)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tbps import checkpoint
from tbps.config import ExperimentConfig, config_from_dict
from tbps.model.checkpoint_load import load_checkpoint_weights
from tbps.model.clip import TBPSModel, build_model


@dataclass
class TrainedModel:
    model: TBPSModel
    """On the requested device, in eval mode."""
    tokenizer: Callable
    config: ExperimentConfig
    """The resolved experiment saved in the checkpoint (``model.pretrained`` cleared: every weight
    comes from the checkpoint)."""
    epochs: int
    """Epochs completed when the checkpoint was written."""
    seed: int


def load_trained_model(checkpoint_path: str | os.PathLike, device: torch.device) -> TrainedModel:
    """Rebuild the checkpoint's model from its saved configuration and load every weight.

    Inference never uses the SimCLR heads (training-only branches of SS-I and SS-T), so they are
    neither built nor loaded; any other missing or unexpected weight is an error.
    """
    state = checkpoint.load(checkpoint_path, map_location="cpu")
    cfg = config_from_dict(state["config"])
    cfg.model.pretrained = None
    bundle = build_model(cfg.model, with_simclr_head=False)
    load_checkpoint_weights(bundle.model, state["model"], source=str(checkpoint_path),
                            ignore_prefixes=("simclr_head.", "text_simclr_head."))
    return TrainedModel(bundle.model.to(device).eval(), bundle.tokenizer, cfg, int(state["epochs"]),
                        int(state["seed"]))
