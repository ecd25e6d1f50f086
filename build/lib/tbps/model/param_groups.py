"""Optimiser parameter groups (spec §7): which parameters get weight decay."""

from __future__ import annotations

from torch import nn


def is_decayed(name: str, param: nn.Parameter, norm_params: set[int]) -> bool:
    """Weight matrices, projections and positional/token embeddings decay; everything < 2-D does not.

    The < 2-D rule already covers biases, LayerNorm/BatchNorm parameters, the logit scale and the
    class embedding; biases and norm parameters are also excluded by name/type in case some
    layer ever stores them with more dimensions.
    """
    if param.ndim < 2 or name.endswith(".bias") or id(param) in norm_params:
        return False
    return True


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``decay`` (``weight_decay``) and ``no_decay`` (0). Frozen parameters are left out.

    Each group carries ``group_name`` and ``names`` (for logging and tests); the learning rate
    is not set here because every parameter uses the same one (spec §7).
    """
    norm_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))
        for p in m.parameters(recurse=False)
    }
    groups = {
        "decay": {"group_name": "decay", "weight_decay": float(weight_decay), "params": [], "names": []},
        "no_decay": {"group_name": "no_decay", "weight_decay": 0.0, "params": [], "names": []},
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = groups["decay" if is_decayed(name, param, norm_params) else "no_decay"]
        group["params"].append(param)
        group["names"].append(name)
    return [g for g in groups.values() if g["params"]]
