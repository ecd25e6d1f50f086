"""Evaluation stage: encode a split's captions and images, rank, write metrics and examples.

The protocol is the faithful one (docs/method.md#test-protocol, #retrieval-metrics): every caption is a query,
every image is in the gallery, relevance = same person id; eval mode, fp32 (or bf16 autocast with
``eval.precision``), cleaned (not augmented) captions, the eval image transform. Text->image is the
reported direction; image->text (images as queries over the captions) is stored beside it.

polars is imported only where a table is written, so encoding and scoring (what training's
per-epoch validation and the GPU check run) need only torch and numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from tbps.config import ExperimentConfig
from tbps.data.captions import clean_caption
from tbps.data.eval_images import EvalImages
from tbps.data.synonym_sources import synonym_source_used
from tbps.device import resolve_device
from tbps.errors import UserInputError
from tbps.fileio import sha256_file, write_parquet_atomic
from tbps.metrics import QueryRanks, rank_queries_by_features, similarity_rows, summarise, topk_indices
from tbps.progress import progress
from tbps.provenance import environment
from tbps.shards.reader import load_manifest

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

EVAL_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
"""``eval.precision`` -> the autocast dtype of the embedding passes (None = plain fp32)."""

EXAMPLES_TOP_K = 5


@dataclass
class Encoded:
    image_features: torch.Tensor
    image_ids: np.ndarray
    image_paths: list[str]
    text_features: torch.Tensor
    text_ids: np.ndarray
    captions: list[str]


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]
    """direction ('t2i', 'i2t') -> R1, R5, R10, mAP, mINP."""
    num_queries: dict[str, int]
    num_gallery: dict[str, int]
    encoded: Encoded | None = field(default=None, repr=False)
    ranks: dict[str, QueryRanks] = field(default_factory=dict, repr=False)
    """direction -> per-query ranks (the t2i first-positive ranks pick the examples' worst failures)."""


@torch.no_grad()
def encode_split(model, tokenizer, manifest: Path, *, image_size, normalisation: str, batch_size: int,
                 device: torch.device, max_words: int = 77, num_workers: int = 2,
                 with_captions: bool = True, precision: str = "fp32") -> Encoded:
    """Encode a split's images (and, unless ``with_captions`` is false, its captions); ``precision``
    is ``eval.precision`` (the features come back as fp32 either way)."""
    if precision not in EVAL_PRECISIONS:
        raise UserInputError(f"eval precision {precision!r}: unknown. Fix: use one of {', '.join(EVAL_PRECISIONS)}")
    amp_dtype = EVAL_PRECISIONS[precision]

    def autocast():  # as training's encode does (tbps.train.make_encode)
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    model.eval()
    manifest = Path(manifest)
    total = int(load_manifest(manifest)["num_samples"])
    loader = DataLoader(EvalImages(manifest, image_size, normalisation, num_workers), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=lambda rows: rows)
    image_features, image_ids, image_paths, captions, text_ids = [], [], [], [], []
    with progress(total=total, desc="encode images", unit="img") as bar:
        for rows in loader:
            images = torch.stack([r[0] for r in rows]).to(device)
            with autocast():
                image_features.append(model.encode_image(images).float().cpu())
            for _, pid, path, caps in rows:
                image_ids.append(pid)
                image_paths.append(path)
                captions.extend(caps)
                text_ids.extend([pid] * len(caps))
            bar.update(len(rows))
    text_features = [torch.empty(0, image_features[0].shape[1])]
    cleaned = [clean_caption(c, max_words=max_words) for c in captions] if with_captions else []
    for start in progress(range(0, len(cleaned), batch_size), desc="encode captions", unit="batch"):
        tokens = tokenizer(cleaned[start:start + batch_size]).to(device)
        with autocast():
            text_features.append(model.encode_text(tokens).float().cpu())
    encoded = Encoded(torch.cat(image_features), np.asarray(image_ids, dtype=np.int64), image_paths,
                      torch.cat(text_features), np.asarray(text_ids, dtype=np.int64), captions)
    for name, features in (("image", encoded.image_features), ("text", encoded.text_features)):
        if not bool(torch.isfinite(features).all()):
            raise UserInputError(f"{manifest}: the model gives non-finite (NaN or infinite) {name} features, so "
                                 "its rankings would be meaningless. Fix: retrain it (e.g. with a lower optim.lr)")
    return encoded


def score(encoded: Encoded, query_chunk: int = 1024) -> EvalResult:
    """Both directions ranked from the features, one chunk of the similarity matrix at a time.

    Memory beyond the features is O(query_chunk x gallery) whatever the split's size
    (benchmarks/evaluate.py); the numbers are those of the full caption x image matrix.
    """
    ranks = {
        "t2i": rank_queries_by_features(encoded.text_features, encoded.image_features, encoded.text_ids,
                                        encoded.image_ids, query_chunk=query_chunk),
        "i2t": rank_queries_by_features(encoded.image_features, encoded.text_features, encoded.image_ids,
                                        encoded.text_ids, query_chunk=query_chunk),
    }
    return EvalResult(
        {direction: summarise(r) for direction, r in ranks.items()},
        num_queries={"t2i": len(encoded.text_ids), "i2t": len(encoded.image_ids)},
        num_gallery={"t2i": len(encoded.image_ids), "i2t": len(encoded.text_ids)},
        encoded=encoded,
        ranks=ranks,
    )


def evaluate_model(model, tokenizer, manifest: Path, cfg: ExperimentConfig, device: torch.device,
                   num_workers: int = 2) -> EvalResult:
    """Encode and score one split with the model as it is (used per epoch by training)."""
    encoded = encode_split(model, tokenizer, manifest, image_size=cfg.model.image_size,
                           normalisation=cfg.data.normalisation, batch_size=cfg.eval.batch_size, device=device,
                           max_words=cfg.data.max_words, num_workers=num_workers, precision=cfg.eval.precision)
    return score(encoded, cfg.eval.query_chunk)


def retrieval_examples(encoded: Encoded, *, first_positive_rank: torch.Tensor | np.ndarray | None = None,
                       num_queries: int = 12, num_failures: int = 12, k: int = EXAMPLES_TOP_K, seed: int = 0,
                       query_chunk: int = 1024) -> pl.DataFrame:
    """Top-k images for a seeded sample of queries plus the worst failures (lowest-ranked first positive).

    ``first_positive_rank``: each caption's rank of its first correct image (``score(...).ranks["t2i"]
    .first_positive``); ranked here, chunk by chunk, when not given. Ties follow the metrics' rule
    (lower gallery index first). Only the shown queries' similarity rows are computed, so memory is
    that of one ranking chunk.
    """
    import polars as pl

    if first_positive_rank is None:
        first_positive_rank = rank_queries_by_features(
            encoded.text_features, encoded.image_features, encoded.text_ids, encoded.image_ids,
            query_chunk=query_chunk).first_positive
    first_rank = np.asarray(first_positive_rank)
    rng = np.random.default_rng(seed)
    sampled = rng.choice(len(encoded.captions), size=min(num_queries, len(encoded.captions)), replace=False)
    failures = np.argsort(-first_rank, kind="stable")[:num_failures]
    shown = np.unique(np.concatenate([sampled, failures]))
    sim = similarity_rows(encoded.text_features, encoded.image_features, shown).cpu()
    top = topk_indices(sim, k).numpy()
    row_of = {int(q): i for i, q in enumerate(shown)}
    rows = []
    for kind, queries in (("sample", sampled), ("worst", failures)):
        for q in queries:
            r = row_of[int(q)]
            for rank, g in enumerate(top[r], start=1):
                rows.append({"kind": kind, "query": int(q), "caption": encoded.captions[q],
                             "query_person_id": int(encoded.text_ids[q]), "first_positive_rank": int(first_rank[q]),
                             "rank": rank, "image_path": encoded.image_paths[g],
                             "person_id": int(encoded.image_ids[g]), "correct": bool(encoded.image_ids[g] == encoded.text_ids[q]),
                             "score": float(sim[r, g])})
    return pl.DataFrame(rows)


def evaluate(checkpoint_path: Path | None, manifest: Path, out: Path, *, dataset: str, experiment: str,
             split: str = "test", examples_out: Path | None = None, device: str = "auto",
             experiment_file: Path | None = None, num_workers: int = 2,
             precision: str | None = None) -> pl.DataFrame:
    """Evaluate a trained checkpoint (or, without one, the experiment's pretrained weights: zero-shot).
    ``precision`` overrides the configuration's ``eval.precision``; the rows record the one used."""
    import dataclasses

    import polars as pl

    from tbps.config import load_experiment
    from tbps.model import build_model, load_trained_model

    dev = resolve_device(device)
    if checkpoint_path is not None:
        trained = load_trained_model(checkpoint_path, dev)
        model, tokenizer, cfg = trained.model, trained.tokenizer, trained.config
        epoch, seed, config_sha = trained.epochs, trained.seed, trained.config_sha256
    else:
        cfg = load_experiment(experiment_file)
        bundle = build_model(cfg.model, with_simclr_head=False)
        model, tokenizer = bundle.model.to(dev), bundle.tokenizer
        epoch, seed, config_sha = 0, cfg.train.seed, cfg.sha256()
    if precision is not None:
        # The checkpoint's config (and its hash in the rows) stays as trained; eval_precision says what ran.
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, precision=precision))
    result = evaluate_model(model, tokenizer, manifest, cfg, dev, num_workers=num_workers)
    data_sha = sha256_file(manifest)
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    rows = []
    for direction, metrics in result.metrics.items():
        rows.append({
            "dataset": dataset, "experiment": experiment, "split": split, "direction": direction,
            "epoch": epoch, "selection": "last" if checkpoint_path is not None else "zero-shot", **metrics,
            "num_queries": result.num_queries[direction], "num_gallery": result.num_gallery[direction],
            "seed": seed, "config_sha256": config_sha, "data_sha256": data_sha,
            # A checkpoint's config holds the resolved source; a zero-shot row trained nothing.
            "synonym_source": synonym_source_used(cfg.data) if checkpoint_path is not None else "none",
            "eval_precision": cfg.eval.precision,
            **environment(),
            "checkpoint": str(checkpoint_path) if checkpoint_path is not None else "",
            "created_at": created,
        })
    table = pl.DataFrame(rows)
    write_parquet_atomic(table, out)
    t2i = result.metrics["t2i"]
    log.info("%s / %s on %s %s (t2i, %d queries x %d images): R@1 %.2f R@5 %.2f R@10 %.2f mAP %.2f mINP %.2f",
             experiment, dataset, split, "checkpoint" if checkpoint_path else "zero-shot",
             result.num_queries["t2i"], result.num_gallery["t2i"], t2i["R1"], t2i["R5"], t2i["R10"], t2i["mAP"],
             t2i["mINP"])
    if examples_out is not None:
        examples = retrieval_examples(result.encoded, first_positive_rank=result.ranks["t2i"].first_positive)
        write_parquet_atomic(examples, examples_out)
    return table
