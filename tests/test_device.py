"""One rule for ``--device``: auto, cpu, cuda (cuda:N), with a clear error where no GPU is visible."""

from __future__ import annotations

import pytest
import torch

from tbps.device import resolve_device
from tbps.errors import UserInputError


def test_auto_is_cuda_when_visible_else_cpu() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_request_without_gpu_is_a_user_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(UserInputError, match="no CUDA GPU"):
            resolve_device(device)


def test_unknown_device_names_the_choices() -> None:
    with pytest.raises(UserInputError, match="auto, cpu, cuda"):
        resolve_device("tpu")
