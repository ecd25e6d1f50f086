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


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint not found. Fix: check the path, or train first")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise UserInputError(
            f"{path}: cannot load the checkpoint safely ({type(e).__name__}: {e}). "
            "Fix: delete it and rerun training (a checkpoint from another program is refused "
            "rather than unpickled)"
        ) from e
