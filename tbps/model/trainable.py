"""Which parameters a run trains: the one place that sets ``requires_grad``.

A :class:`TrainableSelection` names parameters by name prefix (names as in
``TBPSModel.named_parameters()``, e.g. ``clip.visual.conv1.`` or ``clip.transformer.resblocks.6.``):

- ``frozen``: never trained (the frozen patch embedding, frozen text layers);
- ``only``: when not empty, nothing outside these prefixes trains. A parameter-efficient method
  (prompt context vectors, an adapter) adds its own module to the model and lists that module's
  prefix here, so the whole backbone stays at its loaded weights.

Every prefix must match at least one parameter, so a misspelt prefix is an error instead of a run
that silently trains everything. The optimiser takes exactly the parameters left trainable
(:func:`tbps.model.param_groups.param_groups` skips the rest), so a frozen parameter is never
touched by the optimiser, weight decay included, and stays bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tbps.errors import UserInputError


@dataclass(frozen=True)
class TrainableSelection:
    frozen: tuple[str, ...] = ()
    """Name prefixes of parameters that are never trained."""
    only: tuple[str, ...] = ()
    """When not empty: the name prefixes of the only parameters that train."""

    def trains(self, name: str) -> bool:
        if any(name.startswith(p) for p in self.frozen):
            return False
        return not self.only or any(name.startswith(p) for p in self.only)


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def count_parameters(model: nn.Module) -> ParameterCount:
    params = list(model.parameters())
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def apply_selection(model: nn.Module, selection: TrainableSelection) -> ParameterCount:
    """Set ``requires_grad`` of every parameter of ``model`` from ``selection``; returns the counts."""
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in (*selection.frozen, *selection.only) if not any(n.startswith(p) for n in names)]
    if unmatched:
        raise UserInputError(
            f"trainable-parameter selection: the prefix(es) {unmatched} match no parameter of the "
            f"{type(model).__name__} model (its parameters start with e.g. {names[:3]}). Fix: name a module "
            f"the model has")
    for name, param in model.named_parameters():
        param.requires_grad_(selection.trains(name))
    counts = count_parameters(model)
    if counts.trainable == 0:
        raise UserInputError("trainable-parameter selection leaves no parameter to train. Fix: freeze less")
    return counts
