"""Where every sample of a split lies in its shards, for reading by random access (training).

Built once per run from the tar headers and the small JSON members only; the
training loader then reads an image by (shard, offset, size) without parsing the
tar again. Only image (jpg/png) and JSON members are ever decoded; any other
member type is counted and ignored (never unpickled).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tbps.errors import UserInputError
from tbps.shards.layout import ALLOWED_MEMBERS, IMAGE_KEYS
from tbps.shards.reader import shard_paths as manifest_shard_paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexedSample:
    shard: int
    image_offset: int
    image_size: int
    meta: dict


@dataclass
class ShardIndex:
    """Where every sample's image lies in which shard, with its decoded JSON metadata."""

    shard_paths: list[Path]
    samples: list[IndexedSample]
    ignored_members: int

    @classmethod
    def from_manifest(cls, manifest_path: str | os.PathLike) -> ShardIndex:
        shard_paths = [Path(p) for p in manifest_shard_paths(manifest_path)]
        samples: list[IndexedSample] = []
        ignored = 0
        for shard_id, path in enumerate(shard_paths):
            by_key: dict[str, dict] = {}
            try:
                with tarfile.open(path, "r:") as tar:
                    for member in tar:
                        if not member.isfile():
                            continue
                        key, _, ext = member.name.partition(".")
                        ext = ext.lower()
                        if ext in IMAGE_KEYS:
                            by_key.setdefault(key, {})["image"] = (member.offset_data, member.size)
                        elif ext == "json":
                            by_key.setdefault(key, {})["json"] = json.loads(tar.extractfile(member).read())
                        elif ext not in ALLOWED_MEMBERS:
                            ignored += 1
            except (OSError, tarfile.TarError, json.JSONDecodeError) as e:
                raise UserInputError(
                    f"{path}: unreadable shard ({e}). Fix: delete it and rerun the workflow, "
                    "which rewrites exactly that shard"
                ) from e
            for key, entry in by_key.items():
                if "image" not in entry or "json" not in entry:
                    raise UserInputError(
                        f"{path}, sample {key}: missing its image or json member. "
                        "Fix: delete the shard and rerun the workflow"
                    )
                offset, size = entry["image"]
                samples.append(IndexedSample(shard_id, offset, size, entry["json"]))
        if ignored:
            log.warning("ignored %d shard members of unknown type (never decoded)", ignored)
        return cls(shard_paths, samples, ignored)
