"""Step 1 of writing shards (``tbps shards plan``): which images go into which shard.

The plan picks a split's images (one sample per image), orders them with a seeded
shuffle and cuts them into shards; it is a small JSON file, so the workflow can
write (and rerun) every shard as a job of its own.
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
from tbps.fileio import read_json_checked, sha256_file
from tbps.shards.image_table import image_table, read_annotations
from tbps.shards.layout import shard_name

log = logging.getLogger(__name__)

DEFAULT_MAX_SAMPLES = 64
"""Images per shard. The default synthetic dataset (`tbps synth`: ~2,000 train, ~300 val
and ~300 test images) then gets 32 / 5 / 5 shards, at least the 4 loader workers of the
default config in every split; CUHK-PEDES train (34,054 images) gets 533 shards of
~0.5-1 MB, which webdataset streams without trouble (pass --max-samples for fewer)."""


_TAR_BLOCK = 512
# Per-sample tar overhead beyond the image data, for the byte estimate of the plan:
# three member headers plus (typically) one block each for the json and txt members.
_SAMPLE_OVERHEAD = 5 * _TAR_BLOCK


def estimate_sample_bytes(image_bytes: int) -> int:
    """Tar bytes of one sample whose image file has ``image_bytes`` bytes (original bytes mode)."""
    return _TAR_BLOCK * math.ceil(image_bytes / _TAR_BLOCK) + _SAMPLE_OVERHEAD


def _split_seed(seed: int, split: str) -> np.random.SeedSequence:
    # Seed + split name, so train/val/test orders differ but each is reproducible anywhere
    # (Python's hash() of a str is salted per process, sha256 is not).
    split_word = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")
    return np.random.SeedSequence([seed, split_word])


def plan_shards(
    annotations: str | os.PathLike,
    split: str,
    raw: str | os.PathLike,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int | None = None,
    seed: int = 0,
    name_prefix: str = "shard",
) -> dict[str, Any]:
    """Assign the split's images to shards; returns the plan (see module docstring).

    Order: a seeded permutation (numpy Generator from ``seed`` and the split name), so
    every shard holds a random mix of identities and the loader's small shuffle buffer
    suffices. A shard closes at ``max_samples`` images or before its estimated tar size
    (source image file sizes + tar overhead) would pass ``max_bytes``; an image larger
    than ``max_bytes`` gets a shard of its own.
    """
    path, raw = Path(annotations), Path(raw)
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
    images = image_table(df.filter(pl.col("split") == split), path)

    indices = images["image_index"].to_numpy()
    order = np.random.default_rng(_split_seed(seed, split)).permutation(np.sort(indices))
    rel_paths = dict(zip(images["image_index"].to_list(), images["image_path"].to_list(), strict=True))
    first_caption = dict(zip(images["image_index"].to_list(),
                             [ids[0] for ids in images["caption_id"].to_list()], strict=True))

    shards: list[dict[str, Any]] = []
    current: list[int] = []
    current_bytes = 0

    def close() -> None:
        shards.append({"name": shard_name(name_prefix, len(shards)), "image_indices": list(current),
                       "estimated_bytes": current_bytes})

    for image_index in order.tolist():
        image_file = raw / rel_paths[image_index]
        try:
            size = estimate_sample_bytes(image_file.stat().st_size)
        except OSError as e:
            raise input_error(
                path, f"image {rel_paths[image_index]!r} not found under {raw} ({e.strerror})",
                "check --raw, or rerun `tbps prepare` if the raw folder changed",
                record=first_caption[image_index],
            ) from e
        full = len(current) >= max_samples or (
            max_bytes is not None and current and current_bytes + size > max_bytes
        )
        if full:
            close()
            current, current_bytes = [], 0
        current.append(image_index)
        current_bytes += size
    if current:
        close()

    plan = {
        "split": split,
        "dataset": images["dataset"][0],
        "seed": seed,
        "num_samples": len(order),
        "shards": shards,
        "params": {"max_samples": max_samples, "max_bytes": max_bytes, "name_prefix": name_prefix},
        "annotations_sha256": sha256_file(path),
    }
    log.info("planned %d images of split %r into %d shards", len(order), split, len(shards))
    return plan


def load_plan(plan_path: str | os.PathLike) -> dict[str, Any]:
    return read_json_checked(plan_path, "shard plan", "rerun `tbps shards plan`",
                             ("split", "shards", "annotations_sha256", "num_samples"))
