"""The TBPS-CLIP dual encoder (spec §5): an open_clip CLIP with the recipe's changes.

Changes from vanilla CLIP, all applied by :func:`build_model`:

1. Frozen patch embedding: ``visual.conv1`` gets no gradient. In a ViT that is the 16x16
   patch projection; in a ``ModifiedResNet`` tower (the tiny CPU model) it is the first stem
   convolution, the layer that likewise maps raw pixels to features.
2. Text attention dropout: open_clip's text blocks use ``nn.MultiheadAttention``, whose
   ``dropout`` attribute is applied to the post-softmax attention probabilities in training
   mode only. It is set in every text block and nowhere in the image tower.
3. Logit scale: θ stays open_clip's ``logit_scale`` parameter; the value used is
   s = min(exp θ, max) with dL/dθ = s·∂L/∂s even above the clamp (:meth:`TBPSModel.logit_scale_value`).
4. Optional SimCLR head on the (unnormalised) projected image embedding (SS-I), and optionally a
   second one, of the same shape, on the projected text embedding (SS-T, docs/method.md D19).

Weights: ``ModelConfig.pretrained`` is an open_clip tag (``"openai"``: fetched into, or read
from, open_clip's Hugging Face cache), a local weights file (e.g. that cached file copied to an
offline cluster), or null for random initialisation. Tags and files both load strictly with a
full :class:`~tbps.model.checkpoint_load.LoadReport`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import Tensor, nn

from tbps.config import ModelConfig
from tbps.errors import UserInputError
from tbps.losses import clamped_logit_scale
from tbps.model.checkpoint_load import LoadReport, load_pretrained
from tbps.model.tiny import TINY_MODELS, register_tiny_configs


class SimCLRHead(nn.Sequential):
    """Linear embed->hidden, ReLU, Linear hidden->embed (PyTorch default initialisation)."""

    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__(nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, embed_dim))


class TBPSModel(nn.Module):
    """An open_clip ``CLIP`` (``self.clip``) plus the optional SimCLR heads; all outputs L2-normalised."""

    def __init__(self, clip: CLIP, *, name: str, logit_scale_max: float, simclr_hidden: int | None,
                 text_simclr_hidden: int | None = None):
        super().__init__()
        self.clip = clip
        self.name = name
        self.logit_scale_max = float(logit_scale_max)
        self.simclr_head = SimCLRHead(self.embed_dim, simclr_hidden) if simclr_hidden else None
        self.text_simclr_head = SimCLRHead(self.embed_dim, text_simclr_hidden) if text_simclr_hidden else None

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.clip.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    @property
    def logit_scale(self) -> nn.Parameter:
        """θ, the learnable log of the logit scale (never clipped)."""
        return self.clip.logit_scale

    def logit_scale_value(self) -> Tensor:
        """The scale actually used: min(exp θ, logit_scale_max), gradient s·∂L/∂s to θ."""
        return clamped_logit_scale(self.clip.logit_scale, self.logit_scale_max)

    def encode_image(self, images: Tensor) -> Tensor:
        return self.clip.encode_image(images, normalize=True)

    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.clip.encode_text(tokens, normalize=True)

    def simclr(self, images: Tensor) -> Tensor:
        """SimCLR head output for ``images``, L2-normalised (needs ``with_simclr_head=True``)."""
        if self.simclr_head is None:
            raise RuntimeError("this model was built without the SimCLR head (with_simclr_head=False)")
        return F.normalize(self.simclr_head(self.clip.encode_image(images, normalize=False)), dim=-1)

    def text_simclr(self, tokens: Tensor) -> Tensor:
        """Text SimCLR head output for ``tokens`` (SS-T), L2-normalised (needs ``with_text_simclr_head=True``)."""
        if self.text_simclr_head is None:
            raise RuntimeError("this model was built without the text SimCLR head (with_text_simclr_head=False)")
        return F.normalize(self.text_simclr_head(self.clip.encode_text(tokens, normalize=False)), dim=-1)

    def forward(self, images: Tensor | None = None, tokens: Tensor | None = None,
                simclr_images: Tensor | None = None, simclr_tokens: Tensor | None = None) -> dict[str, Tensor]:
        """Whichever encodings are asked for, in one call (so wrappers such as DDP see the forward)."""
        out = {}
        if images is not None:
            out["image"] = self.encode_image(images)
        if tokens is not None:
            out["text"] = self.encode_text(tokens)
        if simclr_images is not None:
            out["simclr"] = self.simclr(simclr_images)
        if simclr_tokens is not None:
            out["text_simclr"] = self.text_simclr(simclr_tokens)
        return out


@dataclass
class BuiltModel:
    model: TBPSModel
    tokenizer: Callable[[str | list[str]], Tensor]
    """open_clip's tokenizer for the model: text(s) -> LongTensor [n, context_length]."""
    load_report: LoadReport | None
    """How the pretrained weights loaded; None for random initialisation."""


def _is_resnet(model_cfg: dict) -> bool:
    return isinstance(model_cfg["vision_cfg"].get("layers"), (list, tuple))


def _model_config(cfg: ModelConfig) -> dict:
    register_tiny_configs()
    model_cfg = open_clip.get_model_config(cfg.name)
    if model_cfg is None:
        raise UserInputError(
            f"model.name={cfg.name!r}: not an open_clip model config. Fix: use 'ViT-B-16' (the recipe) or "
            f"one of the tiny CPU models {list(TINY_MODELS)}"
        )
    unsupported = [k for k in ("custom_text", "multimodal_cfg") if model_cfg.get(k)]
    unsupported += [k for k in ("timm_model_name",) if model_cfg["vision_cfg"].get(k)]
    unsupported += [k for k in ("hf_model_name", "hf_tokenizer_name") if model_cfg["text_cfg"].get(k)]
    if unsupported:
        raise UserInputError(
            f"model.name={cfg.name!r}: its config uses {unsupported}, which this CLIP-style pipeline does not "
            f"support. Fix: use an OpenAI-style CLIP config such as 'ViT-B-16'"
        )
    return copy.deepcopy(model_cfg)


def _image_size(cfg: ModelConfig, model_cfg: dict) -> int | tuple[int, int]:
    h, w = (int(v) for v in cfg.image_size)
    vision = model_cfg["vision_cfg"]
    if _is_resnet(model_cfg):
        # ModifiedResNet's attention pool has an (S/32)^2 grid: square input only.
        if h != w or h % 32:
            raise UserInputError(
                f"model.image_size={[h, w]}: {cfg.name} has a ResNet tower, which needs a square size divisible "
                f"by 32. Fix: set model.image_size to e.g. [64, 64]"
            )
        return h
    patch = int(vision["patch_size"])
    if h % patch or w % patch:
        raise UserInputError(
            f"model.image_size={[h, w]}: not a multiple of {cfg.name}'s {patch}-pixel patches. "
            f"Fix: use multiples of {patch}, e.g. [224, 224] or [384, 128]"
        )
    return (h, w)


def _quick_gelu(cfg: ModelConfig, model_cfg: dict) -> bool:
    """QuickGELU where the weights were trained with it (OpenAI CLIP, spec §5)."""
    if model_cfg.get("quick_gelu"):
        return True
    if cfg.pretrained and open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained):
        return bool(open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained).get("quick_gelu", False))
    # A local file or random init of an OpenAI architecture: the recipe's backbone is OpenAI CLIP.
    return bool(open_clip.get_pretrained_cfg(cfg.name, "openai").get("quick_gelu", False))


def set_text_attention_dropout(clip: CLIP, p: float) -> int:
    """Dropout ``p`` on the attention probabilities of every text block; returns the block count."""
    blocks = list(clip.transformer.resblocks)
    for block in blocks:
        if not isinstance(block.attn, nn.MultiheadAttention):
            raise UserInputError(f"text block {type(block).__name__} has no nn.MultiheadAttention to set dropout on")
        block.attn.dropout = float(p)
    return len(blocks)


def build_model(cfg: ModelConfig, *, with_simclr_head: bool, with_text_simclr_head: bool = False) -> BuiltModel:
    """Build the TBPS-CLIP model for ``cfg`` (weights loaded, recipe changes applied); the SimCLR heads
    (image: SS-I, text: SS-T) only when asked for."""
    log = logging.getLogger(__name__)
    if not 0.0 <= cfg.text_attn_dropout < 1.0:
        raise UserInputError(f"model.text_attn_dropout={cfg.text_attn_dropout}: must be in [0, 1). Fix: use 0.05")
    if cfg.logit_scale_init is not None and not cfg.logit_scale_init > 0:
        raise UserInputError(f"model.logit_scale_init={cfg.logit_scale_init}: must be > 0 (it is s, not ln s). "
                             f"Fix: e.g. 14.3 (CLIP's 1/0.07) or null")
    model_cfg = _model_config(cfg)
    model_cfg["vision_cfg"]["image_size"] = _image_size(cfg, model_cfg)
    model_cfg["quick_gelu"] = _quick_gelu(cfg, model_cfg)
    clip = CLIP(**model_cfg)
    if _is_resnet(model_cfg):
        # Tiny-channel convolutions run ~1.5x faster channels-last on CPU (oneDNN); values are unchanged.
        clip.visual.to(memory_format=torch.channels_last)

    report = load_pretrained(clip, cfg.name, cfg.pretrained) if cfg.pretrained else None
    if cfg.logit_scale_init is not None:
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(cfg.logit_scale_init))
    if cfg.freeze_patch_embed:
        clip.visual.conv1.requires_grad_(False)
    n_text = set_text_attention_dropout(clip, cfg.text_attn_dropout)

    model = TBPSModel(clip, name=cfg.name, logit_scale_max=cfg.logit_scale_max,
                      simclr_hidden=cfg.simclr_head_dim if with_simclr_head else None,
                      text_simclr_hidden=cfg.simclr_head_dim if with_text_simclr_head else None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("built %s (%s, image %s, QuickGELU %s, text attention dropout %.3g in %d blocks, %s trainable "
             "parameters, SimCLR heads: image %s, text %s)", cfg.name, report.summary() if report else "random init",
             model.image_size, model_cfg["quick_gelu"], cfg.text_attn_dropout, n_text, f"{trainable:,}",
             "yes" if with_simclr_head else "no", "yes" if with_text_simclr_head else "no")
    return BuiltModel(model=model, tokenizer=open_clip.get_tokenizer(cfg.name), load_report=report)
