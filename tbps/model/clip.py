"""The TBPS-CLIP dual encoder (docs/method.md#recipe-changes): an open_clip CLIP with the recipe's changes.

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

The few-shot table's parameter-efficient baselines (``model.peft``: CoOp's prompt context, CLIP-Adapter;
:mod:`tbps.model.peft`) are modules of the TBPSModel next to ``clip``, and the only parameters such a
run trains.

The compression probe's text-layer changes (paper §3.5) come last: dropped text layers are deleted
after the weights are loaded, frozen ones join the frozen patch embedding in the model's
:class:`~tbps.model.trainable.TrainableSelection`.

Weights: ``ModelConfig.pretrained`` is an open_clip tag (``"openai"``: fetched into, or read
from, open_clip's Hugging Face cache), a local weights file (e.g. that cached file copied to an
offline cluster), a ``final.pt`` written by ``tbps train`` for the same architecture (a model of
ours playing pre-trained CLIP), or null for random initialisation. All of them load strictly
with a full :class:`~tbps.model.checkpoint_load.LoadReport`.
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
from tbps.model.peft import PEFT_MODULES, ImageAdapter, PromptContext
from tbps.model.text_layers import TextLayerPlan, drop_text_layers, text_depth
from tbps.model.tiny import TINY_MODELS, register_tiny_configs
from tbps.model.trainable import ParameterCount, TrainableSelection, apply_selection


class SimCLRHead(nn.Sequential):
    """Linear embed->hidden, ReLU, Linear hidden->embed (PyTorch default initialisation)."""

    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__(nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, embed_dim))


def embed_dim(clip: CLIP) -> int:
    """The width of the joint embedding space (what both towers project to)."""
    return int(clip.text_projection.shape[1])


class TBPSModel(nn.Module):
    """An open_clip ``CLIP`` (``self.clip``) plus the optional SimCLR heads; all outputs L2-normalised."""

    def __init__(self, clip: CLIP, *, name: str, logit_scale_max: float, simclr_hidden: int | None,
                 text_simclr_hidden: int | None = None, prompt_context: PromptContext | None = None,
                 image_adapter: ImageAdapter | None = None):
        super().__init__()
        self.clip = clip
        self.name = name
        self.logit_scale_max = float(logit_scale_max)
        self.simclr_head = SimCLRHead(self.embed_dim, simclr_hidden) if simclr_hidden else None
        self.text_simclr_head = SimCLRHead(self.embed_dim, text_simclr_hidden) if text_simclr_hidden else None
        self.prompt_context = prompt_context
        self.image_adapter = image_adapter

    @property
    def frozen_backbone(self) -> bool:
        """A parameter-efficient method is on: ``clip`` is frozen and stays in eval mode."""
        return self.prompt_context is not None or self.image_adapter is not None

    def train(self, mode: bool = True) -> TBPSModel:
        super().train(mode)
        if self.frozen_backbone:
            self.clip.eval()
        return self

    @property
    def embed_dim(self) -> int:
        return embed_dim(self.clip)

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
        if self.image_adapter is None:
            return self.clip.encode_image(images, normalize=True)
        return F.normalize(self.image_adapter(self.clip.encode_image(images, normalize=False)), dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        if self.prompt_context is None:
            return self.clip.encode_text(tokens, normalize=True)
        return F.normalize(self.prompt_context.encode_text(self.clip, tokens), dim=-1)

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
    text_layers: TextLayerPlan
    """Frozen and dropped text layers (1-based ids of the full architecture)."""
    parameters: ParameterCount
    """Trainable and total parameters of the built model."""


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
    """QuickGELU where the weights were trained with it (OpenAI CLIP, docs/method.md#architecture)."""
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


def text_layer_plan(cfg: ModelConfig, clip: CLIP) -> TextLayerPlan:
    """The checked frozen/dropped text layers of ``cfg`` for ``clip`` (before any layer is dropped)."""
    if cfg.compress_from_importance.table is not None:
        raise UserInputError(
            f"model.compress_from_importance.table={cfg.compress_from_importance.table!r} is still unresolved: "
            f"`tbps train` turns it into model.freeze_text_layers or model.drop_text_layers before building the "
            f"model. Fix: train the experiment, or list the layer ids yourself")
    return TextLayerPlan.checked(text_depth(clip), cfg.freeze_text_layers, cfg.drop_text_layers)


def trainable_selection(cfg: ModelConfig, plan: TextLayerPlan) -> TrainableSelection:
    """What a run of ``cfg`` trains: everything but the frozen patch embedding and frozen text layers; with a
    parameter-efficient method (``cfg.peft``) only that method's own module."""
    frozen = ("clip.visual.conv1.",) if cfg.freeze_patch_embed else ()
    only = (PEFT_MODULES[cfg.peft],) if cfg.peft != "none" else ()
    return TrainableSelection(frozen=frozen + plan.frozen_prefixes(), only=only)


def peft_modules(cfg: ModelConfig, clip: CLIP) -> dict[str, nn.Module]:
    """The parameter-efficient method's module for ``cfg.peft`` (built from the loaded ``clip``: CoOp's
    context starts from its token embeddings), as TBPSModel keyword arguments; {} for 'none'."""
    if cfg.peft == "coop":
        tokenizer = open_clip.get_tokenizer(cfg.name)
        return {"prompt_context": PromptContext.from_words(clip, tokenizer, cfg.coop_context_init)}
    if cfg.peft == "clip_adapter":
        return {"image_adapter": ImageAdapter(embed_dim(clip), cfg.adapter_reduction,
                                              cfg.adapter_alpha)}
    return {}


def assemble_model(clip: CLIP, cfg: ModelConfig, plan: TextLayerPlan, *, with_simclr_head: bool,
                   with_text_simclr_head: bool = False) -> tuple[TBPSModel, ParameterCount]:
    """The TBPSModel around a loaded ``clip``: text layers dropped, text attention dropout set, the
    SimCLR heads added (image: SS-I, text: SS-T), the parameter-efficient method's module added
    (``cfg.peft``) and the trainable parameters selected (:func:`trainable_selection`)."""
    if cfg.peft != "none" and (with_simclr_head or with_text_simclr_head):
        raise UserInputError(
            f"model.peft={cfg.peft!r} keeps the backbone frozen and trains only its own module, so a SimCLR head "
            f"(SS-I or SS-T) would never train. Fix: set loss.ss_i_weight and loss.ss_t_weight to 0 (the "
            f"few-shot baselines use the plain CLIP loss, docs/method.md D25)")
    drop_text_layers(clip, plan)
    set_text_attention_dropout(clip, cfg.text_attn_dropout)
    model = TBPSModel(clip, name=cfg.name, logit_scale_max=cfg.logit_scale_max,
                      simclr_hidden=cfg.simclr_head_dim if with_simclr_head else None,
                      text_simclr_hidden=cfg.simclr_head_dim if with_text_simclr_head else None,
                      **peft_modules(cfg, clip))
    return model, apply_selection(model, trainable_selection(cfg, plan))


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
    plan = text_layer_plan(cfg, clip)
    if _is_resnet(model_cfg):
        # Tiny-channel convolutions run ~1.5x faster channels-last on CPU (oneDNN); values are unchanged.
        clip.visual.to(memory_format=torch.channels_last)

    report = load_pretrained(clip, cfg.name, cfg.pretrained) if cfg.pretrained else None
    if cfg.logit_scale_init is not None:
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(cfg.logit_scale_init))
    model, counts = assemble_model(clip, cfg, plan, with_simclr_head=with_simclr_head,
                                   with_text_simclr_head=with_text_simclr_head)
    log.info("built %s (%s, image %s, QuickGELU %s, text attention dropout %.3g in %d blocks, text layers frozen "
             "%s dropped %s, %s of %s parameters trainable, SimCLR heads: image %s, text %s, peft %s)", cfg.name,
             report.summary() if report else "random init", model.image_size, model_cfg["quick_gelu"],
             cfg.text_attn_dropout, len(clip.transformer.resblocks), list(plan.frozen) or "none",
             list(plan.dropped) or "none", f"{counts.trainable:,}", f"{counts.total:,}",
             "yes" if with_simclr_head else "no", "yes" if with_text_simclr_head else "no", cfg.peft)
    return BuiltModel(model=model, tokenizer=open_clip.get_tokenizer(cfg.name), load_report=report,
                      text_layers=plan, parameters=counts)
