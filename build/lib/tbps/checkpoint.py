"""Atomic, resumable training checkpoints, loaded without unpickling (``weights_only=True``)."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tbps.errors import UserInputError
from tbps.fileio import atomic_path

log = logging.getLogger(__name__)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2]}
    np_state = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) payload: about the size torch.save will write."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` with torch.save to a temp file and rename it into place.

    A full disk is reported as such (torch itself says "basic_ios::clear: iostream error").
    """
    with atomic_path(path, suffix=".pt", expected_bytes=tensor_bytes(payload)) as tmp:
        torch.save(payload, tmp)


FINAL_FIELDS = ("model", "config", "epochs", "seed")
"""What ``final.pt`` must hold for evaluation and search."""
RESUME_FIELDS = ("model", "optimizer", "scaler", "epoch", "next_batch", "global_step", "rng", "config",
                 "resume_sha256", "train_data_sha256", "log_rows", "val_rows")
"""What ``checkpoints/last.pt`` must hold to continue a run."""

OPEN_CLIP_WEIGHTS_FIX = (
    "plain open_clip/CLIP weights are not a tbps checkpoint: to fine-tune them, set `model.pretrained: PATH` "
    "in an experiment file and run `tbps train`; to evaluate them as they are, use that experiment with "
    "`tbps evaluate --zero-shot EXPERIMENT_YAML`"
)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80


def _not_torch(path: Path) -> str | None:
    """What the file is, when its first bytes show it is not a torch.save file."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "an empty file"
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTOCOL:
        return None
    return f"not a PyTorch file (it starts with {head!r})"


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Whatever a torch file holds, read without unpickling code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint not found. Fix: check the path, or train first")
    foreign = _not_torch(path)
    if foreign is not None:
        raise UserInputError(f"{path}: {foreign}, not a checkpoint written by `tbps train`. "
                             "Fix: give the final.pt (or checkpoints/last.pt) of a `tbps train` run")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise UserInputError(
            f"{path}: cannot load the checkpoint safely ({type(e).__name__}: {str(e)[:300]}). "
            "Fix: delete it and rerun training (a checkpoint from another program is refused "
            "rather than unpickled)"
        ) from e


def describe(state: Any) -> str:
    """A short description of what a loaded file holds, for messages about foreign files."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}"
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        first = next(iter(state))
        return f"a bare state dict of {len(state)} tensors (e.g. {first!r}), without the run's configuration"
    keys = sorted(map(str, state))
    shown = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
    return f"a dict with the keys {shown}"


def load_checked(path: str | os.PathLike, fields: tuple[str, ...], what: str, fix: str,
                 map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a tbps checkpoint that must hold ``fields``; anything else is a clear error.

    ``what`` names the expected kind ("a final.pt written by `tbps train`"), ``fix`` what to do.
    """
    state = load(path, map_location)
    missing = [f for f in fields if not isinstance(state, dict) or f not in state]
    if missing:
        raise UserInputError(f"{path}: this file holds {describe(state)}; {what} also holds "
                             f"{', '.join(repr(f) for f in missing)}. Fix: {fix}")
    model = state["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise UserInputError(f"{path}: its 'model' entry is {describe(model)}, not a state dict of tensors. "
                             f"Fix: {fix}")
    if not isinstance(state["config"], dict):
        raise UserInputError(f"{path}: its 'config' entry is {describe(state['config'])}, not a configuration. "
                             f"Fix: {fix}")
    return state


def non_finite_weights(model_state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold NaN or infinite values."""
    return [k for k, v in model_state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
