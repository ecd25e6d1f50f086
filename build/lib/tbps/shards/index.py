"""Where every sample of a split lies in its shards, for reading by random access (training).

Built once per run, after every shard is checked against the manifest (size and sha256,
:func:`tbps.shards.reader.verified_shard_paths`), by walking the tar headers and the small
JSON members with :func:`tbps.shards.samples.read_samples`, the reader evaluation uses too
(same checks, same messages). The training loader then reads an image by (shard, offset,
size) without parsing the tar again; it decodes it with :func:`tbps.shards.reader.shard_image`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tbps.shards.reader import verified_shard_paths
from tbps.shards.samples import read_samples


@dataclass(frozen=True)
class IndexedSample:
    shard: int
    image_offset: int
    image_size: int
    meta: dict
    key: str = ""


@dataclass
class ShardIndex:
    """Where every sample's image lies in which shard, with its decoded JSON metadata."""

    shard_paths: list[Path]
    samples: list[IndexedSample]

    @classmethod
    def from_manifest(cls, manifest_path: str | os.PathLike) -> ShardIndex:
        shard_paths = [Path(p) for p in verified_shard_paths(manifest_path)]
        samples = [
            IndexedSample(shard_id, sample.image_offset, sample.image_size, sample.meta, sample.key)
            for shard_id, path in enumerate(shard_paths)
            for sample in read_samples(path, with_images=False)
        ]
        return cls(shard_paths, samples)
