"""Safe, seeded reading of the WebDataset shards (training and evaluation share it).

Safety: webdataset's default decoders end in ``basichandlers``, which run
``pickle.loads`` on ``.pyd``/``.pkl`` members and ``torch.load`` on ``.pth`` ones, so
a crafted shard could run code. Here tar members other than ``jpg``/``png``/``json``/
``txt`` are never even extracted (``select_files``), and the decoder has exactly two
handlers (PIL RGB for images, UTF-8/JSON for text) with webdataset's default pre/post
handlers removed. Shard locations come from the manifest as plain file names resolved
in its folder, so a manifest cannot smuggle in ``pipe:`` (shell) URLs.

Order: with ``shuffle=False`` samples come in manifest order (shard by shard, sample by
sample; with several DataLoader workers the loader interleaves the workers' shards).
With ``shuffle=True`` the shard order is a permutation seeded by (seed, epoch), the same
in every process, and samples pass a shuffle buffer seeded by (seed, epoch, rank, worker).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from tbps.errors import input_error
from tbps.fileio import read_json_checked, sha256_file
from tbps.shards.layout import ALLOWED_MEMBERS, IMAGE_KEYS

log = logging.getLogger(__name__)

DEFAULT_SHUFFLE_BUFFER = 2000


# ----------------------------------------------------------------------------- manifest

def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    manifest = read_json_checked(path, "shard manifest", "build the shards with `tbps shards manifest`",
                                 ("split", "shards", "num_samples"))
    for i, entry in enumerate(manifest["shards"]):
        name = entry.get("name", "")
        if not name or Path(name).name != name or ":" in name:
            raise input_error(path, f"shard name {name!r} is not a plain file name", "rerun `tbps shards manifest`",
                              record=i)
    return manifest


def shard_paths(manifest_path: str | os.PathLike) -> list[str]:
    """The manifest's shards as local paths (its folder + name), in manifest order."""
    manifest_path = Path(manifest_path)
    folder = manifest_path.parent
    return [str(folder / e["name"]) for e in load_manifest(manifest_path)["shards"]]


def verify_manifest(manifest_path: str | os.PathLike, *, check_hashes: bool = True) -> list[str]:
    """Problems with the shards listed in a manifest (empty list: all present and intact).

    ``check_hashes=False`` only checks existence and byte size (fast; a full sha256
    pass reads every shard once).
    """
    manifest_path = Path(manifest_path)
    problems = []
    for entry in load_manifest(manifest_path)["shards"]:
        shard = manifest_path.parent / entry["name"]
        if not shard.is_file():
            problems.append(f"{shard}: missing")
        elif shard.stat().st_size != entry["bytes"]:
            problems.append(f"{shard}: {shard.stat().st_size} bytes, manifest says {entry['bytes']}")
        elif check_hashes and sha256_file(shard) != entry["sha256"]:
            problems.append(f"{shard}: sha256 differs from the manifest")
    return problems


# ----------------------------------------------------------------------------- decoding

def _text_handler(key: str, data: bytes) -> Any:
    """Only text: JSON and UTF-8; everything else is left to other handlers (None)."""
    ext = key.rsplit(".", 1)[-1].lower()
    if ext == "json":
        return json.loads(data.decode("utf-8"))
    if ext == "txt":
        return data.decode("utf-8")
    return None


def _image_handler(key: str, data: bytes) -> Any:
    ext = key.rsplit(".", 1)[-1].lower()
    if ext not in IMAGE_KEYS:
        return None
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


# pre=[] and post=[] drop webdataset's default handlers (gunzip, pickle, torch.load, ...).
SAFE_DECODER = wds.Decoder([_image_handler, _text_handler], pre=[], post=[], only=sorted(ALLOWED_MEMBERS))


def is_allowed_member(fname: str) -> bool:
    """Tar member filter: extension (everything after the first dot, as webdataset groups) allowed."""
    base = fname.rsplit("/", 1)[-1]
    return "." in base and base.split(".", 1)[1].lower() in ALLOWED_MEMBERS


def _to_sample(sample: dict[str, Any]) -> dict[str, Any]:
    images = [k for k in IMAGE_KEYS if k in sample]
    if len(images) != 1 or "json" not in sample:
        raise ValueError(f"{sample.get('__url__')}: sample {sample.get('__key__')!r} needs one image and a json "
                         f"member, has {sorted(k for k in sample if not k.startswith('__'))}")
    return {"__key__": sample["__key__"], "__url__": sample.get("__url__"), "image": sample[images[0]],
            "json": sample["json"], "txt": sample.get("txt", "")}


# ----------------------------------------------------------------------------- ordering

@dataclass
class _EpochState:
    """Shared by the pipeline's stages, so ``set_epoch`` reaches them (and forked workers)."""

    seed: int
    epoch: int


def _ordered(urls: Sequence[str], state: _EpochState, shuffle: bool) -> list[str]:
    if not shuffle:
        return list(urls)
    # Identical in every process and worker: the seed does not involve rank or worker.
    perm = np.random.default_rng([state.seed, state.epoch]).permutation(len(urls))
    return [urls[i] for i in perm]


class _ShardList(IterableDataset):
    """Yields ``dict(url=...)`` for this rank's and this worker's shards of the epoch.

    Same slicing as ``wds.split_by_node``/``wds.split_by_worker``, but AFTER a global
    per-epoch permutation: ``wds.WebDataset`` splits first and shuffles each reader's
    share, so a worker would see the same shards in every epoch.
    """

    def __init__(self, urls: Sequence[str], state: _EpochState, shuffle: bool, by_node: bool, by_worker: bool):
        super().__init__()
        self.urls, self.state, self.shuffle = list(urls), state, shuffle
        self.by_node, self.by_worker = by_node, by_worker

    def __iter__(self) -> Iterator[dict[str, str]]:
        rank, world_size, worker, num_workers = wds.utils.pytorch_worker_info()
        urls = _ordered(self.urls, self.state, self.shuffle)
        if self.by_node and world_size > 1:
            urls = urls[rank::world_size]
        if self.by_worker and num_workers > 1:
            urls = urls[worker::num_workers]
        if not urls:
            warnings.warn(
                f"rank {rank} worker {worker}: no shard to read ({len(self.urls)} shards for {world_size} "
                f"process(es) x {num_workers} worker(s)); write smaller shards or use fewer workers",
                stacklevel=2,
            )
        for url in urls:
            yield {"url": url}


class _SeededShuffle:
    """Sample shuffle buffer whose RNG is made per (seed, epoch, rank, worker) at iteration time."""

    def __init__(self, bufsize: int, state: _EpochState):
        self.bufsize, self.state = bufsize, state

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        word = np.random.SeedSequence([self.state.seed, self.state.epoch, rank, worker]).generate_state(1)[0]
        rng = random.Random(int(word))
        # initial=bufsize: fill the buffer before the first sample, for an even mix from the start.
        return wds.shuffle(self.bufsize, initial=self.bufsize, rng=rng)(src)


class ShardPipeline(wds.DataPipeline):
    """A webdataset pipeline with ``set_epoch`` (re-seeds the shard and sample order)."""

    def __init__(self, *stages: Any, state: _EpochState, num_samples: int | None):
        super().__init__(*stages)
        self.state = state
        self.num_samples = num_samples

    def set_epoch(self, epoch: int) -> None:
        """Takes effect at the next ``iter()``; with persistent DataLoader workers build a new pipeline."""
        self.state.epoch = epoch


def open_shards(
    source: str | os.PathLike | Sequence[str],
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    split_by_node: bool = True,
    split_by_worker: bool = True,
    num_workers: int | None = None,
    world_size: int = 1,
) -> ShardPipeline:
    """A pipeline of decoded samples ``{"__key__", "__url__", "image": PIL RGB, "json": dict, "txt": str}``.

    ``source``: a ``manifest.json`` path or a list of local shard paths. ``num_workers``
    / ``world_size`` (optional) only serve an early warning when there are fewer shards
    than readers (some readers would get none). Add per-sample work with
    ``pipeline.compose(wds.map(fn), wds.batched(n))``.
    """
    if isinstance(source, (str, os.PathLike)):
        manifest = load_manifest(source)
        urls, num_samples = shard_paths(source), int(manifest["num_samples"])
    else:
        urls, num_samples = [str(u) for u in source], None
        for url in urls:
            if url.startswith("pipe:") or "://" in url:
                raise ValueError(f"{url}: only local shard files are read (no URL schemes such as pipe:)")
    if not urls:
        raise ValueError("no shards to read")
    readers = (num_workers or 1) * world_size
    if readers > len(urls):
        msg = (f"{len(urls)} shards for {readers} readers ({world_size} process(es) x {num_workers or 1} "
               "worker(s)): some readers get no shard; write smaller shards or use fewer workers")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    state = _EpochState(seed=seed, epoch=epoch)
    stages: list[Any] = [
        _ShardList(urls, state, shuffle, split_by_node, split_by_worker),
        wds.tarfile_to_samples(select_files=is_allowed_member),
    ]
    if shuffle and shuffle_buffer > 1:
        # Shuffle the raw bytes (before decoding): the buffer then holds compressed images.
        stages.append(_SeededShuffle(shuffle_buffer, state))
    stages += [wds.map(SAFE_DECODER), wds.map(_to_sample)]
    return ShardPipeline(*stages, state=state, num_samples=num_samples)
