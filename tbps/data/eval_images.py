"""A split's images as evaluation sees them: decoded, eval-transformed, in manifest order."""

from __future__ import annotations

from pathlib import Path

import torch

from tbps.data.transforms import eval_transform
from tbps.shards.reader import open_shards


class EvalImages(torch.utils.data.IterableDataset):
    """Yields ``(image, person_id, image_path, captions)`` per shard sample, in manifest order.

    Shared by evaluation and the importance probe so both see the same pixels for the same split.
    """

    def __init__(self, manifest: Path, image_size, normalisation: str, num_workers: int):
        self.pipeline = open_shards(manifest, num_workers=max(num_workers, 1))
        self.transform = eval_transform(image_size, normalisation)

    def __iter__(self):
        for sample in self.pipeline:
            meta = sample["json"]
            yield self.transform(sample["image"]), meta["person_id"], meta["image_path"], list(meta["captions"])
