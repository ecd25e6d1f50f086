"""Small open_clip model configs for CPU work (tests, the embedded demo), trained from scratch.

The JSON files live in ``tbps/resources/model_configs/`` (shipped as package data) and are
registered through open_clip's public ``add_model_config``, so ``open_clip.create_model``,
``open_clip.get_tokenizer`` and ``open_clip.list_models`` all know them:

- ``TBPS-Tiny-RN``: open_clip's ``ModifiedResNet`` tower at tiny widths (layers [1,1,1,1],
  width 16, 64x64 input; its attention pool assumes a square input). The demo's model: on CPU a
  small CNN learns about twice as fast per second as a tiny ViT (measured: BENCHMARKS.md).
- ``TBPS-Tiny-ViT``: a 4-layer, width-128 ViT with 8-pixel patches (96x32 default input).

Both share a 1-layer, width-128 text tower with context length 32 and the full 49,408-token
vocabulary, so open_clip's shipped BPE tokenizer works unchanged.

- ``TBPS-Probe-ViT``: the compression probe's model (docs/method.md D24): 6 image and 6 text
  layers (half of ViT-B/16's 12 in each tower), width 64 (2 heads of 32), MLP ratio 2, 64-d
  embeddings, 8-pixel patches on a 64x32 input (32 patches). Both towers are made of open_clip's
  residual attention blocks, so every self-attention and feed-forward branch can be removed or
  interpolated like ViT-B/16's. Width 64 rather than 128 trains about 2.5x faster on 2 CPU
  cores (0.12 instead of 0.44 GFLOP per sample, simplified preset), which the 15 training runs
  of the synthetic compression target need.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import open_clip

TINY_VIT = "TBPS-Tiny-ViT"
TINY_RN = "TBPS-Tiny-RN"
PROBE_VIT = "TBPS-Probe-ViT"
TINY_MODELS = (TINY_VIT, TINY_RN, PROBE_VIT)


def config_folder() -> Path:
    return Path(str(resources.files("tbps") / "resources" / "model_configs"))


def register_tiny_configs() -> None:
    """Register the tiny configs with open_clip (idempotent: a second call does nothing)."""
    if all(name in open_clip.list_models() for name in TINY_MODELS):
        return
    open_clip.add_model_config(config_folder())
