"""The shard contract shared by the writer and the readers.

A split's shards are ``{prefix}-NNNNNN.tar`` files, each with a sidecar
``{prefix}-NNNNNN.json`` (counts, sha256, rejected images), listed by ``manifest.json``.
A sample is ``__key__ = f"{split}-{image_index:08d}"`` with one image member ``jpg`` or
``png`` (by the actual encoding), ``json`` (metadata and the caption lists) and ``txt``
(captions joined by newlines). Readers never decode any other member.
"""

from __future__ import annotations

import os
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
