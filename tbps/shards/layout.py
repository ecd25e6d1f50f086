"""The shard contract shared by the writer and the readers.

A split's shards are ``{prefix}-NNNNNN.tar`` files, each with a sidecar
``{prefix}-NNNNNN.json`` (counts, sha256, rejected images), listed by ``manifest.json``;
``plan.json`` and ``plan_samples.parquet`` (what each shard holds) sit beside them.
A sample is ``__key__ = f"{split}-{image_index:08d}"`` with one image member ``jpg`` or
``png`` (by the actual encoding) and ``json`` (metadata and the caption lists: everything
training and evaluation read). Readers never decode any other member. (Shards written before
the plan carried the samples also had a ``txt`` member, the captions again as text; no reader
used it, and at 512-byte tar blocks it cost ~1 KB a sample.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from tbps.fileio import read_json_checked

DEFAULT_MAX_SAMPLES = 64
"""Images per shard. The default synthetic dataset (`tbps synth`: ~2,000 train, ~300 val
and ~300 test images) then gets 32 / 5 / 5 shards, at least the 4 loader workers of the
default config in every split; CUHK-PEDES train (34,054 images) gets 533 shards of
~0.5-1 MB, which webdataset streams without trouble (pass --max-samples for fewer)."""

IMAGE_KEYS = ("jpg", "png")
ALLOWED_MEMBERS = frozenset((*IMAGE_KEYS, "json"))


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def sidecar_path(shard_path: str | os.PathLike) -> Path:
    """``shard-000000.tar`` -> ``shard-000000.json`` (per-shard counts and hash)."""
    return Path(shard_path).with_suffix(".json")


def load_plan(plan_path: str | os.PathLike) -> dict[str, Any]:
    """``plan.json`` of ``tbps shards plan``, checked for the fields every step reads.

    Here, not in :mod:`tbps.shards.plan`, so a shard job starts without importing polars.
    """
    return read_json_checked(plan_path, "shard plan", "rerun `tbps shards plan`",
                             ("split", "shards", "annotations_sha256", "num_samples", "samples"))


def plan_samples_path(plan_path: str | os.PathLike) -> Path:
    """``plan.json`` -> ``plan_samples.parquet`` beside it (each planned sample's JSON member, by shard)."""
    plan_path = Path(plan_path)
    return plan_path.with_name(f"{plan_path.stem}_samples.parquet")


def sample_key(split: str, image_index: int) -> str:
    return f"{split}-{image_index:08d}"


def rewrite_hint(shard: str | os.PathLike, plan: str | os.PathLike | None = None, index: int | None = None) -> str:
    """How to rewrite one shard, for the 'Fix:' of every message about a damaged or replaced shard.

    ``--force``: Snakemake sees the shard as up to date (it exists and is newer than its
    inputs), so a plain ``snakemake <shard>`` would answer "Nothing to be done".
    """
    shard = Path(shard)
    plan = Path(plan) if plan is not None else shard.parent / "plan.json"
    if index is None:
        number = re.search(r"-(\d+)\.tar$", shard.name)
        index = int(number.group(1)) if number else "N"
    return (f"rewrite it; in the workflow's folder: `snakemake --cores 1 --force {shard}` (with the options you "
            "run the workflow with), then rerun your target; "
            f"by hand: `tbps shards write --plan {plan} --shard-index {index} --out {shard}` with the other "
            "options it was written with, then `tbps shards manifest`")
