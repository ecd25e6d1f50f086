"""Search a gallery with a text description: the user-facing use of a trained model."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import torch

from tbps.data.captions import clean_caption
from tbps.device import resolve_device
from tbps.errors import UserInputError
from tbps.evaluate import encode_split
from tbps.metrics import topk_indices

log = logging.getLogger(__name__)


def check_queries(queries: list[str]) -> None:
    """Every description must keep a word after caption cleaning: an empty query ranks nothing."""
    if not queries:
        raise UserInputError("no description given. Fix: pass at least one, e.g. \"a man in a black jacket\"")
    for i, query in enumerate(queries, start=1):
        if not clean_caption(query):
            raise UserInputError(
                f"description {i} ({query!r}) is empty once punctuation is removed (captions are cleaned as in "
                "training). Fix: describe the person in words, e.g. \"a man in a black jacket\"")


def search(checkpoint_path: Path, manifest: Path, queries: list[str], *, top_k: int = 5, device: str = "auto",
           num_workers: int = 2) -> pl.DataFrame:
    """Rank the gallery images of ``manifest`` for each query text; one row per (query, rank)."""
    from tbps.model import load_trained_model

    check_queries(queries)
    dev = resolve_device(device)
    trained = load_trained_model(checkpoint_path, dev)
    model, cfg = trained.model, trained.config
    gallery = encode_split(model, trained.tokenizer, manifest, image_size=cfg.model.image_size,
                           normalisation=cfg.data.normalisation, batch_size=cfg.eval.batch_size, device=dev,
                           max_words=cfg.data.max_words, num_workers=num_workers, with_captions=False)
    with torch.no_grad():
        tokens = trained.tokenizer([clean_caption(q, max_words=cfg.data.max_words) for q in queries]).to(dev)
        text = model.encode_text(tokens).float().cpu()
    if not bool(torch.isfinite(text).all()):
        raise UserInputError(f"{checkpoint_path}: the model gives non-finite (NaN or infinite) text features, so "
                             "it cannot rank anything. Fix: retrain it (e.g. with a lower optim.lr)")
    scores = text @ gallery.image_features.t()
    top = topk_indices(scores, top_k)
    rows = []
    for q, query in enumerate(queries):
        for rank, g in enumerate(top[q].tolist(), start=1):
            rows.append({"query": query, "rank": rank, "score": float(scores[q, g]),
                         "person_id": int(gallery.image_ids[g]), "image_path": gallery.image_paths[g]})
    return pl.DataFrame(rows)
