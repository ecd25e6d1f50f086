"""A model trained by ``tbps train``, loaded for inference (evaluation and search)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tbps import checkpoint
from tbps.config import ExperimentConfig, config_from_dict
from tbps.errors import UserInputError
from tbps.model.checkpoint_load import load_checkpoint_weights
from tbps.model.clip import TBPSModel, build_model

_FINAL = "a final.pt written by `tbps train`"


@dataclass
class TrainedModel:
    model: TBPSModel
    """On the requested device, in eval mode."""
    tokenizer: Callable
    config: ExperimentConfig
    """The resolved experiment saved in the checkpoint (``model.pretrained`` cleared: every weight
    comes from the checkpoint)."""
    config_sha256: str
    """The hash of the configuration the model was trained with (as training recorded it), the
    one metrics rows carry; ``config.sha256()`` differs once ``model.pretrained`` is cleared."""
    epochs: int
    """Epochs completed when the checkpoint was written."""
    seed: int


def _integer(path, state: dict, field: str, minimum: int) -> int:
    value = state[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserInputError(f"{path}: its {field!r} is {value!r}, not an integer. Fix: use {_FINAL}")
    if value < minimum:
        raise UserInputError(
            f"{path}: records {field} = {value}: the model was never trained, and is not reported as a result. "
            "Fix: train it (`tbps train`), or evaluate the pretrained weights with `tbps evaluate --zero-shot`")
    return value


def load_trained_model(checkpoint_path: str | os.PathLike, device: torch.device) -> TrainedModel:
    """Rebuild the checkpoint's model from its saved configuration and load every weight.

    Inference never uses the SimCLR heads (training-only branches of SS-I and SS-T), so they are
    neither built nor loaded; any other missing or unexpected weight is an error. A file that is not
    a tbps final checkpoint (a bare state dict, plain open_clip weights, a dict without the
    configuration), weights with NaN or infinite values and an untrained model (0 epochs or
    steps) are refused with a message saying what the file is and what to use instead.
    """
    state = checkpoint.load_checked(checkpoint_path, checkpoint.FINAL_FIELDS, _FINAL,
                                    f"give the final.pt of a `tbps train` run; {checkpoint.OPEN_CLIP_WEIGHTS_FIX}")
    epochs = _integer(checkpoint_path, state, "epochs", 1)
    if "global_step" in state:
        _integer(checkpoint_path, state, "global_step", 1)
    seed = _integer(checkpoint_path, state, "seed", 0)
    bad = checkpoint.non_finite_weights(state["model"])
    if bad:
        raise UserInputError(
            f"{checkpoint_path}: {len(bad)} weight tensors hold NaN or infinite values (e.g. {bad[0]!r}): the "
            "training run diverged, and this model's scores would be meaningless. "
            "Fix: retrain with a lower optim.lr (or from an earlier checkpoint)")
    try:
        cfg = config_from_dict(state["config"])
    except UserInputError as e:
        raise UserInputError(f"{checkpoint_path}: its saved configuration cannot be used here ({e})") from None
    config_sha = state.get("config_sha256")
    if not isinstance(config_sha, str):
        config_sha = cfg.sha256()
    cfg.model.pretrained = None
    bundle = build_model(cfg.model, with_simclr_head=False)
    load_checkpoint_weights(bundle.model, state["model"], source=str(checkpoint_path),
                            ignore_prefixes=("simclr_head.", "text_simclr_head."))
    return TrainedModel(bundle.model.to(device).eval(), bundle.tokenizer, cfg, config_sha, epochs, seed)
