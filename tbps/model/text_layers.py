"""Freezing and dropping text-encoder layers (the paper's compression probe, §3.5 and Table 17).

Layer ids are **1-based**, as the paper prints them: layer 1 is the block next to the token
embedding, layer L the one before the final LayerNorm, so the paper's "7" is open_clip's
``transformer.resblocks[6]`` (docs/method.md D24). A frozen layer stays in the model and keeps its
initial weights; a dropped layer is deleted from ``resblocks``, so it is gone from the forward
pass and from every state dict and checkpoint (the blocks after it move up one index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from open_clip.model import CLIP
from torch import nn

from tbps.errors import UserInputError

TEXT_BLOCKS = "clip.transformer.resblocks"
"""Name prefix of the text blocks inside a TBPSModel."""


@dataclass(frozen=True)
class TextLayerPlan:
    """Which 1-based text layers are frozen and which dropped, checked against the model's depth."""

    depth: int
    """Text layers of the architecture before any is dropped."""
    frozen: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()

    @classmethod
    def checked(cls, depth: int, frozen: Sequence[int], dropped: Sequence[int]) -> TextLayerPlan:
        for key, ids in (("model.freeze_text_layers", frozen), ("model.drop_text_layers", dropped)):
            outside = sorted(i for i in ids if not 1 <= i <= depth)
            if outside:
                raise UserInputError(
                    f"{key}={list(ids)}: layer(s) {outside} do not exist; the text encoder has {depth} layers, "
                    f"numbered 1..{depth} from the token embedding. Fix: use ids in 1..{depth}")
            if len(set(ids)) != len(ids):
                raise UserInputError(f"{key}={list(ids)}: a layer is listed twice. Fix: list each layer once")
        both = sorted(set(frozen) & set(dropped))
        if both:
            raise UserInputError(
                f"text layer(s) {both} are both frozen and dropped. Fix: remove them from "
                f"model.freeze_text_layers or model.drop_text_layers")
        if len(dropped) >= depth:
            raise UserInputError(
                f"model.drop_text_layers={list(dropped)} drops every one of the {depth} text layers. "
                f"Fix: keep at least one")
        return cls(depth, tuple(sorted(frozen)), tuple(sorted(dropped)))

    @property
    def kept(self) -> tuple[int, ...]:
        """The 1-based ids of the layers left in the model, in order."""
        return tuple(i for i in range(1, self.depth + 1) if i not in self.dropped)

    def block_index(self, layer: int) -> int:
        """Index in ``resblocks`` (after dropping) of the kept 1-based ``layer``."""
        return self.kept.index(layer)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes (in a TBPSModel) of the frozen layers, once the dropped ones are gone."""
        return tuple(f"{TEXT_BLOCKS}.{self.block_index(i)}." for i in self.frozen)


def text_depth(clip: CLIP) -> int:
    return len(clip.transformer.resblocks)


def drop_text_layers(clip: CLIP, plan: TextLayerPlan) -> None:
    """Delete the plan's dropped layers from ``clip`` (in place)."""
    if not plan.dropped:
        return
    if text_depth(clip) != plan.depth:
        raise ValueError(f"the plan is for {plan.depth} text layers, the model has {text_depth(clip)}")
    blocks = clip.transformer.resblocks
    clip.transformer.resblocks = nn.ModuleList(blocks[i - 1] for i in plan.kept)
    clip.transformer.layers = len(plan.kept)
