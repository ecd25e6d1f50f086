"""The model that embeds a gallery and its queries, and how an index records which one it was.

Two kinds of model:

- a ``tbps train`` checkpoint (``final.pt``), loaded by :func:`tbps.model.load_trained_model`
  with its own image size, normalisation and caption length;
- plain open_clip weights for zero-shot search before any fine-tuning: ``--model ViT-B-16
  --pretrained openai`` (a tag, read from open_clip's cache) or ``--pretrained FILE`` (a local
  state dict). The images are resized to the model's own input size and normalised with CLIP's
  pre-training statistics, the preprocessing those weights were trained with.

The index records the model's *identity*: its kind, name, where its weights were read from and
their sha256, and the image preprocessing. Embeddings of one model mean nothing to another, so
searching or updating an index with a model of another identity (other weights, other
architecture, other preprocessing) is an error. The sha256 of a weights file is remembered
with its size and modification time: the same file, unchanged, is not hashed again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tbps.data.captions import clean_caption
from tbps.data.transforms import eval_transform
from tbps.errors import UserInputError
from tbps.fileio import sha256_file
from tbps.gallery.layout import locate

CHECKPOINT, OPEN_CLIP = "checkpoint", "open_clip"
ZERO_SHOT_NORMALISATION = "clip"
ZERO_SHOT_MAX_WORDS = 77
COMPARED = ("name", "weights_sha256", "image_size", "normalisation", "embed_dim")
"""What must be equal for two models to give the same embeddings."""


@dataclass
class SearchModel:
    model: Any
    """A :class:`tbps.model.TBPSModel` in eval mode on ``device``."""
    tokenizer: Any
    device: torch.device
    identity: dict[str, Any]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.identity["image_size"])

    def image_transform(self):
        return eval_transform(self.image_size, self.identity["normalisation"])

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of transformed images -> L2-normalised float32 features on the CPU."""
        features = self.model.encode_image(images.to(self.device)).float().cpu()
        if not bool(torch.isfinite(features).all()):
            raise UserInputError(f"{describe(self.identity)}: the model gives non-finite (NaN or infinite) image "
                                 "features, so it cannot rank anything. Fix: use another checkpoint")
        return features

    @torch.no_grad()
    def encode_queries(self, queries: list[str]) -> torch.Tensor:
        """Descriptions -> L2-normalised float32 features, cleaned as training cleans captions."""
        max_words = int(self.identity["max_words"])
        tokens = self.tokenizer([clean_caption(q, max_words=max_words) for q in queries]).to(self.device)
        features = self.model.encode_text(tokens).float().cpu()
        if not bool(torch.isfinite(features).all()):
            raise UserInputError(f"{describe(self.identity)}: the model gives non-finite (NaN or infinite) text "
                                 "features, so it cannot rank anything. Fix: retrain it (e.g. with a lower optim.lr)")
        return features


def describe(identity: dict[str, Any]) -> str:
    """A one-line description for messages: which weights, which architecture, which hash."""
    sha = str(identity.get("weights_sha256", ""))[:12]
    if identity.get("kind") == CHECKPOINT:
        return f"checkpoint {identity['weights']} ({identity['name']}, sha256 {sha}...)"
    return f"open_clip {identity['name']} weights {identity['weights']!r} (sha256 {sha}...)"


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(_plain(a.get(k)) == _plain(b.get(k)) for k in COMPARED)


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def require_same_model(folder: Path, indexed: dict[str, Any], given: dict[str, Any], fix: str) -> None:
    """Refuse ``given`` for the index in ``folder`` unless it is the model ``indexed`` (what :data:`COMPARED`)."""
    differs = [k for k in COMPARED if _plain(indexed.get(k)) != _plain(given.get(k))]
    if differs:
        raise UserInputError(
            f"{folder}: the index was built with {describe(indexed)}, not with {describe(given)} (they differ in "
            f"{', '.join(differs)}); embeddings of one model mean nothing to another. Fix: {fix}")


def weights_fingerprint(path: Path, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """``weights_file``, ``weights_bytes``, ``weights_mtime_ns`` and ``weights_sha256`` of a file.

    The hash of ``recorded`` (an identity read from an index) is reused when it names the same
    file with the same size and modification time.
    """
    resolved = Path(path).resolve()
    st = resolved.stat()
    fingerprint = {"weights_file": str(resolved), "weights_bytes": st.st_size, "weights_mtime_ns": st.st_mtime_ns}
    if recorded and all(recorded.get(k) == v for k, v in fingerprint.items()) and recorded.get("weights_sha256"):
        return {**fingerprint, "weights_sha256": recorded["weights_sha256"]}
    return {**fingerprint, "weights_sha256": sha256_file(resolved)}


def load_checkpoint_model(checkpoint: str | os.PathLike, device: torch.device,
                          recorded: dict[str, Any] | None = None) -> SearchModel:
    from tbps.model import load_trained_model

    trained = load_trained_model(checkpoint, device)
    cfg = trained.config
    identity = {
        "kind": CHECKPOINT, "name": cfg.model.name, "weights": str(Path(checkpoint).resolve()),
        **weights_fingerprint(Path(checkpoint), recorded),
        "image_size": [int(v) for v in cfg.model.image_size], "normalisation": cfg.data.normalisation,
        "max_words": int(cfg.data.max_words), "embed_dim": int(trained.model.embed_dim),
        "config_sha256": trained.config_sha256, "epochs": trained.epochs,
    }
    return SearchModel(trained.model, trained.tokenizer, device, identity)


def native_image_size(model_name: str) -> list[int]:
    import open_clip

    from tbps.model import register_tiny_configs

    register_tiny_configs()
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise UserInputError(f"--model {model_name}: not an open_clip model config. Fix: use e.g. 'ViT-B-16' (see "
                             "`python -c \"import open_clip; print(open_clip.list_models())\"`)")
    size = model_cfg["vision_cfg"]["image_size"]
    return [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]


def load_open_clip_model(model_name: str, pretrained: str, device: torch.device,
                         recorded: dict[str, Any] | None = None) -> SearchModel:
    import open_clip

    from tbps.config import ModelConfig
    from tbps.model import build_model
    from tbps.model.checkpoint_load import resolve_pretrained

    image_size = native_image_size(model_name)
    weights = resolve_pretrained(model_name, pretrained)
    is_tag = bool(open_clip.get_pretrained_cfg(model_name, pretrained))
    bundle = build_model(ModelConfig(name=model_name, pretrained=str(weights), image_size=tuple(image_size)),
                         with_simclr_head=False)
    identity = {
        "kind": OPEN_CLIP, "name": model_name,
        "weights": pretrained if is_tag else str(Path(weights).resolve()),
        **weights_fingerprint(Path(weights), recorded),
        "image_size": image_size, "normalisation": ZERO_SHOT_NORMALISATION, "max_words": ZERO_SHOT_MAX_WORDS,
        "embed_dim": int(bundle.model.embed_dim),
    }
    return SearchModel(bundle.model.to(device).eval(), bundle.tokenizer, device, identity)


def load_search_model(device: torch.device, *, checkpoint: str | os.PathLike | None = None,
                      model_name: str | None = None, pretrained: str | None = None,
                      recorded: dict[str, Any] | None = None, index_folder: Path | None = None) -> SearchModel:
    """The model named by the options; with none of them, the one ``recorded`` by the index in ``index_folder``
    (its weights file looked up relative to the index first, then where it was)."""
    if checkpoint is not None:
        return load_checkpoint_model(checkpoint, device, recorded)
    if model_name is not None:
        return load_open_clip_model(model_name, pretrained or "openai", device, recorded)
    if recorded is None:
        raise UserInputError("no model given. Fix: pass --checkpoint final.pt (of `tbps train`) or --model NAME "
                             "[--pretrained TAG_OR_FILE] for plain open_clip weights")
    weights = recorded["weights"]
    if index_folder is not None:
        weights = str(locate(index_folder, recorded.get("relative_weights"), weights))
    if recorded["kind"] == CHECKPOINT:
        if not Path(weights).is_file():
            raise UserInputError(f"the index was built with the checkpoint {weights}, which is not there any more. "
                                 "Fix: pass --checkpoint PATH of that same checkpoint (moved or copied)")
        return load_checkpoint_model(weights, device, recorded)
    return load_open_clip_model(recorded["name"], weights, device, recorded)


def as_float16(features: torch.Tensor) -> np.ndarray:
    return features.numpy().astype(np.float16)
