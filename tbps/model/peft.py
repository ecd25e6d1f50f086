"""The parameter-efficient baselines of the paper's few-shot table (App. A.3, Eqs. 8 and 9), on a frozen CLIP.

- CoOp (:class:`PromptContext`, docs/method.md D25): M learnable context vectors, initialised from the
  token embeddings of "a pedestrian photo of" (M = 4, one per BPE token), sit after the start token
  and before the caption's tokens. The caption moves right by M and is cut so the sequence still fits
  the context length; a caption whose end token would fall off keeps it in the last position, so the
  text feature is always read at an end token (OpenAI CLIP pools at the end token).
- CLIP-Adapter (:class:`ImageAdapter`, D26): a bottleneck MLP G on the projected image embedding,
  blended as f̂ = α·G(f) + (1 − α)·f with α = 0.4.

Only the method's own module trains (:data:`PEFT_MODULES`, a
:class:`~tbps.model.trainable.TrainableSelection` ``only=`` prefix); the backbone keeps its loaded
weights bit for bit, and stays in eval mode while the model trains, so no normalisation statistic of
the frozen model moves either.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from open_clip.model import CLIP
from torch import Tensor, nn

from tbps.errors import UserInputError

PEFT_MODULES = {"coop": "prompt_context.", "clip_adapter": "image_adapter."}
"""Name prefix (in a TBPSModel) of each method's module: the only parameters the method trains."""


def context_token_ids(tokenizer: Callable, words: str) -> list[int]:
    """The BPE token ids of ``words`` (without the start and end tokens)."""
    tokens = tokenizer([words])[0].tolist()
    end = tokens.index(max(tokens))  # the end token has the highest id of the vocabulary
    ids = tokens[1:end]
    if not ids:
        raise UserInputError(f"model.coop_context_init={words!r} has no word. Fix: use e.g. 'a pedestrian photo of'")
    return ids


class PromptContext(nn.Module):
    """CoOp's learnable context vectors ``ctx`` [M, width] and the text encoder that uses them."""

    def __init__(self, init: Tensor):
        super().__init__()
        self.ctx = nn.Parameter(init.detach().clone())

    @classmethod
    def from_words(cls, clip: CLIP, tokenizer: Callable, words: str) -> PromptContext:
        """Context vectors initialised from the token embeddings of ``words`` (one vector per token)."""
        if getattr(clip, "text_pool_type", "argmax") != "argmax":
            raise UserInputError(f"model.peft=coop needs a text tower pooled at the end token (OpenAI CLIP), not "
                                 f"{clip.text_pool_type!r}. Fix: use an OpenAI-style model such as 'ViT-B-16'")
        ids = context_token_ids(tokenizer, words)
        if len(ids) >= clip.context_length - 2:
            raise UserInputError(f"model.coop_context_init={words!r}: {len(ids)} tokens leave no room for a caption "
                                 f"in {clip.context_length}. Fix: use fewer words")
        with torch.no_grad():
            return cls(clip.token_embedding.weight[torch.tensor(ids)])

    @property
    def length(self) -> int:
        return int(self.ctx.shape[0])

    def shift(self, tokens: Tensor) -> Tensor:
        """``tokens`` [n, L] with M placeholder (0) slots after the start token, the caption cut to fit L."""
        n, length = tokens.shape
        m = self.length
        end = tokens.argmax(dim=-1)
        shifted = torch.cat([tokens[:, :1], tokens.new_zeros(n, m), tokens[:, 1:length - m]], dim=1)
        cut = (end + m >= length).nonzero().squeeze(1)
        shifted[cut, length - 1] = tokens[cut, end[cut]]
        return shifted

    def encode_text(self, clip: CLIP, tokens: Tensor) -> Tensor:
        """The projected (unnormalised) text feature of ``tokens`` with the context inserted (Eq. 8)."""
        cast_dtype = clip.transformer.get_cast_dtype()
        shifted = self.shift(tokens)
        x = clip.token_embedding(shifted).to(cast_dtype)
        ctx = self.ctx.to(cast_dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], ctx, x[:, 1 + self.length:]], dim=1)
        x = x + clip.positional_embedding.to(cast_dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), shifted.argmax(dim=-1)]
        if isinstance(clip.text_projection, nn.Linear):
            return clip.text_projection(x)
        return x @ clip.text_projection


class ImageAdapter(nn.Module):
    """CLIP-Adapter on the image side (Eq. 9): f̂ = α·G(f) + (1 − α)·f, G a two-layer bottleneck MLP
    (Linear d→d/r, ReLU, Linear d/r→d, ReLU, no biases; PyTorch's default initialisation)."""

    def __init__(self, embed_dim: int, reduction: int, alpha: float):
        super().__init__()
        if embed_dim // reduction < 1:
            raise UserInputError(f"model.adapter_reduction={reduction}: the {embed_dim}-d embedding has no "
                                 f"bottleneck left. Fix: use a reduction <= {embed_dim}")
        self.alpha = float(alpha)
        self.fc = nn.Sequential(nn.Linear(embed_dim, embed_dim // reduction, bias=False), nn.ReLU(),
                                nn.Linear(embed_dim // reduction, embed_dim, bias=False), nn.ReLU())

    def forward(self, features: Tensor) -> Tensor:
        return self.alpha * self.fc(features) + (1.0 - self.alpha) * features
