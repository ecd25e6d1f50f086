"""Which torch device a stage runs on: one rule for every ``--device`` option."""

from __future__ import annotations

import torch

from tbps.errors import UserInputError

DEVICES = ("auto", "cpu", "cuda")
"""What ``--device`` accepts (``cuda:N`` is also understood)."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when a GPU is visible, else the CPU; ``cpu``; ``cuda`` / ``cuda:N`` need a visible GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserInputError(f"--device {device}: no CUDA GPU is visible. Fix: use --device auto or cpu")
        return torch.device(device)
    raise UserInputError(f"--device {device!r}: unknown device. Fix: use one of {', '.join(DEVICES)}")
