"""Search a gallery with a text description: the user-facing use of a trained model."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import torch

from tbps import checkpoint as ckpt
from tbps.config import config_from_dict
from tbps.data.captions import clean_caption
from tbps.evaluate import encode_split
from tbps.metrics import topk_indices

log = logging.getLogger(__name__)


def search(checkpoint_path: Path, manifest: Path, queries: list[str], *, top_k: int = 5, device: str = "auto",
           num_workers: int = 2) -> pl.DataFrame:
    """Rank the gallery images of ``manifest`` for each query text; one row per (query, rank)."""
    from tbps.model import build_model, load_checkpoint_weights

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    state = ckpt.load(checkpoint_path, map_location="cpu")
    cfg = config_from_dict(state["config"])
    cfg.model.pretrained = None  # every weight comes from the checkpoint
    bundle = build_model(cfg.model, with_simclr_head=False)
    load_checkpoint_weights(bundle.model, state["model"], source=str(checkpoint_path),
                            ignore_prefixes=("simclr_head.",))
    model = bundle.model.to(dev).eval()
    gallery = encode_split(model, bundle.tokenizer, manifest, image_size=cfg.model.image_size,
                           normalisation=cfg.data.normalisation, batch_size=cfg.eval.batch_size, device=dev,
                           max_words=cfg.data.max_words, num_workers=num_workers, with_captions=False)
    with torch.no_grad():
        tokens = bundle.tokenizer([clean_caption(q, max_words=cfg.data.max_words) for q in queries]).to(dev)
        text = model.encode_text(tokens).float().cpu()
    scores = text @ gallery.image_features.t()
    top = topk_indices(scores, top_k)
    rows = []
    for q, query in enumerate(queries):
        for rank, g in enumerate(top[q].tolist(), start=1):
            rows.append({"query": query, "rank": rank, "score": float(scores[q, g]),
                         "person_id": int(gallery.image_ids[g]), "image_path": gallery.image_paths[g]})
    return pl.DataFrame(rows)
