"""Safe reading of the WebDataset shards in manifest order (evaluation, search, benchmarks).

Safety: webdataset's default decoders end in ``basichandlers``, which run
``pickle.loads`` on ``.pyd``/``.pkl`` members and ``torch.load`` on ``.pth`` ones, so
a crafted shard could run code. Here tar members other than ``jpg``/``png``/``json``/
``txt`` are never even extracted (``select_files``), and the decoder has exactly two
handlers (PIL RGB for images, UTF-8/JSON for text) with webdataset's default pre/post
handlers removed. Shard locations come from the manifest as plain file names resolved
in its folder, so a manifest cannot smuggle in ``pipe:`` (shell) URLs.

Order: samples come in manifest order, shard by shard and sample by sample; with several
DataLoader workers each worker reads every N-th shard and the loader interleaves them.
Training does not stream the shards: it reads them by random access through
:class:`tbps.shards.index.ShardIndex`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from tbps.errors import input_error
from tbps.fileio import read_json_checked, sha256_file
from tbps.shards.layout import ALLOWED_MEMBERS, IMAGE_KEYS

log = logging.getLogger(__name__)



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


# ----------------------------------------------------------------------------- streaming

class _ShardList(IterableDataset):
    """Yields ``dict(url=...)`` for this DataLoader worker's shards: every ``num_workers``-th one.

    Evaluation needs every sample once in each process, so shards are split between the
    DataLoader workers of a process only, never between processes.
    """

    def __init__(self, urls: Sequence[str]):
        super().__init__()
        self.urls = list(urls)

    def __iter__(self) -> Iterator[dict[str, str]]:
        _, _, worker, num_workers = wds.utils.pytorch_worker_info()
        urls = self.urls[worker::num_workers] if num_workers > 1 else self.urls
        if not urls:
            warnings.warn(
                f"worker {worker}: no shard to read ({len(self.urls)} shards for {num_workers} workers); "
                "write smaller shards or use fewer workers",
                stacklevel=2,
            )
        for url in urls:
            yield {"url": url}


def open_shards(source: str | os.PathLike | Sequence[str], *, num_workers: int | None = None) -> wds.DataPipeline:
    """A pipeline of decoded samples ``{"__key__", "__url__", "image": PIL RGB, "json": dict, "txt": str}``.

    ``source``: a ``manifest.json`` path or a list of local shard paths. ``num_workers``
    (optional) only serves an early warning when there are fewer shards than DataLoader
    workers (some would get none). Add per-sample work with
    ``pipeline.compose(wds.map(fn), wds.batched(n))``.
    """
    if isinstance(source, (str, os.PathLike)):
        urls = shard_paths(source)
    else:
        urls = [str(u) for u in source]
        for url in urls:
            if url.startswith("pipe:") or "://" in url:
                raise ValueError(f"{url}: only local shard files are read (no URL schemes such as pipe:)")
    if not urls:
        raise ValueError("no shards to read")
    readers = num_workers or 1
    if readers > len(urls):
        msg = (f"{len(urls)} shards for {readers} DataLoader workers: some workers get no shard; "
               "write smaller shards or use fewer workers")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    return wds.DataPipeline(
        _ShardList(urls),
        wds.tarfile_to_samples(select_files=is_allowed_member),
        wds.map(SAFE_DECODER),
        wds.map(_to_sample),
    )
