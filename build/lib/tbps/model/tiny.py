"""Small open_clip model configs for CPU work (tests, the embedded demo), trained from scratch.

The JSON files live in ``tbps/resources/model_configs/`` (shipped as package data) and are
registered through open_clip's public ``add_model_config``, so ``open_clip.create_model``,
``open_clip.get_tokenizer`` and ``open_clip.list_models`` all know them:

- ``TBPS-Tiny-RN``: open_clip's ``ModifiedResNet`` tower at tiny widths (layers [1,1,1,1],
  width 16, 64x64 input; its attention pool assumes a square input). The demo's model: on CPU a
  small CNN learns about twice as fast per second as a tiny ViT (platform notes §8).
- ``TBPS-Tiny-ViT``: a 4-layer, width-128 ViT with 8-pixel patches (96x32 default input).

Both share a 1-layer, width-128 text tower with context length 32 and the full 49,408-token
vocabulary, so open_clip's shipped BPE tokenizer works unchanged.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import open_clip

TINY_VIT = "TBPS-Tiny-ViT"
TINY_RN = "TBPS-Tiny-RN"
TINY_MODELS = (TINY_VIT, TINY_RN)


def config_folder() -> Path:
    return Path(str(resources.files("tbps") / "resources" / "model_configs"))


def register_tiny_configs() -> None:
    """Register the tiny configs with open_clip (idempotent: a second call does nothing)."""
    if all(name in open_clip.list_models() for name in TINY_MODELS):
        return
    open_clip.add_model_config(config_folder())
