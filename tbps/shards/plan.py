"""Step 1 of writing shards (``tbps shards plan``): which images go into which shard, with their rows.

The plan picks a split's images (one sample per image), orders them with a seeded
shuffle and cuts them into shards. It is the one step that reads the prepared caption table
and the augmented captions (train): it checks and joins them once per split and writes every
sample's JSON member, shard by shard, into ``plan_samples.parquet`` beside ``plan.json``
(:mod:`tbps.shards.plan_samples`). A shard job then reads its own row group and nothing else,
so the cost of a shard job does not grow with the dataset. ``plan.json`` stays small, so the
workflow can write (and rerun) every shard as a job of its own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tbps.errors import UserInputError, input_error
from tbps.fileio import sha256_file, write_json_atomic
from tbps.shards.image_table import image_table, join_augmented, read_annotations
from tbps.shards.layout import DEFAULT_MAX_SAMPLES, plan_samples_path, shard_name
from tbps.shards.plan_samples import sample_json, write_plan_samples

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_SAMPLES", "estimate_sample_bytes", "plan_shards"]

_TAR_BLOCK = 512


def estimate_sample_bytes(image_bytes: int, json_bytes: int) -> int:
    """Tar bytes of one sample: a header and the padded data of each of its two members, the image
    (exact when the original bytes are kept) and the JSON."""
    return sum(_TAR_BLOCK * (1 + math.ceil(size / _TAR_BLOCK)) for size in (image_bytes, json_bytes))


def _split_seed(seed: int, split: str) -> np.random.SeedSequence:
    # Seed + split name, so train/val/test orders differ but each is reproducible anywhere
    # (Python's hash() of a str is salted per process, sha256 is not).
    split_word = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")
    return np.random.SeedSequence([seed, split_word])


def plan_shards(
    annotations: str | os.PathLike,
    split: str,
    raw: str | os.PathLike,
    out: str | os.PathLike,
    *,
    augmented: str | os.PathLike | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int | None = None,
    seed: int = 0,
    name_prefix: str = "shard",
) -> dict[str, Any]:
    """Assign the split's images to shards; write ``out`` (plan.json) and its sample table; return the plan.

    ``augmented``: ``captions_aug.parquet`` from ``tbps augment``, joined on caption_id (train).
    Order: a seeded permutation (numpy Generator from ``seed`` and the split name), so
    every shard holds a random mix of identities and the loader's small shuffle buffer
    suffices. A shard closes at ``max_samples`` images or before its estimated tar size
    (source image file sizes, the JSON members and tar overhead) would pass ``max_bytes``; an
    image larger than ``max_bytes`` gets a shard of its own. The sample table is written
    first and ``plan.json`` (with each shard's digest of its rows) last, both atomically.
    """
    path, raw, out = Path(annotations), Path(raw), Path(out)
    if max_samples < 1:
        raise UserInputError(f"--max-samples {max_samples}: must be >= 1. Fix: give e.g. {DEFAULT_MAX_SAMPLES}")
    if max_bytes is not None and max_bytes < 1:
        raise UserInputError(f"--max-bytes {max_bytes}: must be >= 1. Fix: leave it out or give e.g. 500000000")
    if not name_prefix or "/" in name_prefix or os.sep in name_prefix:
        raise UserInputError(f"--name-prefix {name_prefix!r}: must be a plain file name prefix. Fix: e.g. shard")
    df = read_annotations(path)
    if not (df["split"] == split).any():
        present = sorted(df["split"].unique().drop_nulls().to_list())
        raise input_error(path, f"no caption of split {split!r} (splits present: {present})",
                          "choose one of the splits present")
    df = df.filter(pl.col("split") == split)
    if augmented is not None:
        df = join_augmented(df, Path(augmented))
    images = image_table(df, path)

    indices = images["image_index"].to_numpy()
    order = np.random.default_rng(_split_seed(seed, split)).permutation(np.sort(indices))
    rows = {row["image_index"]: row for row in images.iter_rows(named=True)}

    shards: list[dict[str, Any]] = []
    members: list[list[tuple[int, bytes]]] = []
    current: list[tuple[int, bytes]] = []
    current_bytes = 0

    def close() -> None:
        shards.append({"name": shard_name(name_prefix, len(shards)), "image_indices": [i for i, _ in current],
                       "estimated_bytes": current_bytes})
        members.append(list(current))

    for image_index in order.tolist():
        row = rows[image_index]
        image_file = raw / row["image_path"]
        meta = sample_json(row)
        try:
            size = estimate_sample_bytes(image_file.stat().st_size, len(meta))
        except OSError as e:
            raise input_error(
                path, f"image {row['image_path']!r} not found under {raw} ({e.strerror})",
                "check --raw, or rerun `tbps prepare` if the raw folder changed",
                record=row["caption_id"][0],
            ) from e
        full = len(current) >= max_samples or (
            max_bytes is not None and current and current_bytes + size > max_bytes
        )
        if full:
            close()
            current, current_bytes = [], 0
        current.append((image_index, meta))
        current_bytes += size
    if current:
        close()

    samples_path = plan_samples_path(out)
    digests = write_plan_samples(samples_path, members)
    for shard, digest in zip(shards, digests, strict=True):
        shard["samples_sha256"] = digest
    plan = {
        "split": split,
        "dataset": images["dataset"][0],
        "seed": seed,
        "num_samples": len(order),
        "shards": shards,
        "params": {"max_samples": max_samples, "max_bytes": max_bytes, "name_prefix": name_prefix},
        "annotations_sha256": sha256_file(path),
        "augmented_sha256": sha256_file(augmented) if augmented is not None else None,
        "samples": samples_path.name,
    }
    write_json_atomic(out, plan)
    log.info("planned %d images of split %r into %d shards", len(order), split, len(shards))
    return plan
