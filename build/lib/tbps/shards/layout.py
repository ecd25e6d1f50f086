"""The shard contract shared by the writer and the readers.

A split's shards are ``{prefix}-NNNNNN.tar`` files, each with a sidecar
``{prefix}-NNNNNN.json`` (counts, sha256, rejected images), listed by ``manifest.json``.
A sample is ``__key__ = f"{split}-{image_index:08d}"`` with one image member ``jpg`` or
``png`` (by the actual encoding), ``json`` (metadata and the caption lists) and ``txt``
(captions joined by newlines). Readers never decode any other member.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

IMAGE_KEYS = ("jpg", "png")
ALLOWED_MEMBERS = frozenset((*IMAGE_KEYS, "json", "txt"))


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def sidecar_path(shard_path: str | os.PathLike) -> Path:
    """``shard-000000.tar`` -> ``shard-000000.json`` (per-shard counts and hash)."""
    return Path(shard_path).with_suffix(".json")


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
