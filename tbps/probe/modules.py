"""Modules of a trained CLIP as the compression probe sees them, and the two ways it perturbs one.

A module is (tower, layer, kind): tower ``image`` or ``text``, a 1-based layer (1 = the block next
to the patch or token embedding), and kind ``SA`` (the self-attention branch: ln_1, attn, ls_1),
``FF`` (the feed-forward branch: ln_2, mlp, ls_2) or ``Whole`` (the whole block). These are open_clip
3.3's ``ResidualAttentionBlock`` branches, x = x + ls_1(attn(ln_1(x))) then x = x + ls_2(mlp(ln_2(x))).

- :func:`removed` skips the module's residual branch(es): a forward hook makes ``ls_1``/``ls_2``
  (LayerScale, or an ``nn.Identity`` when the model has none) return zeros, so x + f(x) becomes
  exactly x (docs/method.md D23). The block's own code is left alone.
- :func:`interpolated` sets the module's parameters to (1 - alpha)·θ₀ + alpha·θ, exactly θ₀ at
  alpha = 0 and exactly θ at alpha = 1 (docs/method.md D22).
Both are context managers that restore the model on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tbps.errors import UserInputError

TOWERS = ("image", "text")
KINDS = ("SA", "FF", "Whole")
"""Self-attention, feed-forward and the whole layer, as in the paper's Fig. 5."""
_BRANCHES = {"SA": ("ls_1",), "FF": ("ls_2",), "Whole": ("ls_1", "ls_2")}
_PARAMETERS = {"SA": ("ln_1.", "attn.", "ls_1."), "FF": ("ln_2.", "mlp.", "ls_2."), "Whole": ("",)}
_TOWER_BLOCKS = {"image": "clip.visual.transformer.resblocks", "text": "clip.transformer.resblocks"}


@dataclass(frozen=True, order=True)
class Module:
    tower: str
    layer: int
    """1-based."""
    kind: str

    def __post_init__(self):
        if self.tower not in TOWERS or self.kind not in KINDS or self.layer < 1:
            raise ValueError(f"not a probe module: {self}")

    @property
    def block_name(self) -> str:
        """Name of the module's block inside a TBPSModel."""
        return f"{_TOWER_BLOCKS[self.tower]}.{self.layer - 1}"

    def parameter_names(self, model: nn.Module) -> list[str]:
        """Full names (in ``model``) of the parameters this module's interpolation moves."""
        prefix = self.block_name + "."
        inner = _PARAMETERS[self.kind]
        return [name for name, _ in model.named_parameters()
                if name.startswith(prefix) and name[len(prefix):].startswith(inner)]


def tower_blocks(model: nn.Module, tower: str) -> nn.ModuleList:
    """The residual attention blocks of one tower of a TBPSModel (ViT image towers only)."""
    owner = model.clip.visual if tower == "image" else model.clip
    transformer = getattr(owner, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None:
        raise UserInputError(
            f"the {tower} tower of {getattr(model, 'name', type(model).__name__)} has no transformer blocks "
            f"(a ResNet image tower?), so its modules cannot be probed. Fix: probe a ViT model such as "
            f"TBPS-Probe-ViT or ViT-B-16")
    for block in blocks:
        missing = [a for a in ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2") if not hasattr(block, a)]
        if missing:
            raise UserInputError(f"{tower} block {type(block).__name__} lacks {missing}: not open_clip's "
                                 f"ResidualAttentionBlock, which the probe needs")
    return blocks


def modules_of(model: nn.Module) -> list[Module]:
    """Every probed module of ``model``: per tower, per layer, SA, FF and Whole."""
    return [Module(tower, layer, kind) for tower in TOWERS
            for layer in range(1, len(tower_blocks(model, tower)) + 1) for kind in KINDS]


def _zeros(module: nn.Module, inputs, output: Tensor) -> Tensor:
    return torch.zeros_like(output)


@contextlib.contextmanager
def removed(model: nn.Module, module: Module) -> Iterator[None]:
    """Run ``model`` with ``module``'s residual branch(es) skipped."""
    block = tower_blocks(model, module.tower)[module.layer - 1]
    handles = [getattr(block, branch).register_forward_hook(_zeros) for branch in _BRANCHES[module.kind]]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def interpolated(model: nn.Module, module: Module, theta0: Mapping[str, Tensor], alpha: float) -> Iterator[None]:
    """Run ``model`` with ``module``'s parameters at (1 - alpha)·θ₀ + alpha·θ (θ = the model's own)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is outside [0, 1]")
    params = dict(model.named_parameters())
    names = module.parameter_names(model)
    saved = {name: params[name].detach().clone() for name in names}
    try:
        with torch.no_grad():
            for name in names:
                start = theta0[name].to(device=params[name].device, dtype=params[name].dtype)
                params[name].copy_((1.0 - alpha) * start + alpha * saved[name])
        yield
    finally:
        with torch.no_grad():
            for name in names:
                params[name].copy_(saved[name])
