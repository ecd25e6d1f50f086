"""Safe reading of the WebDataset shards in manifest order (evaluation, search, benchmarks).

Trust: a manifest records every shard's byte size and sha256, and its hash is the
``data_sha256`` of every metrics row. Every reader of a manifest (this streaming reader and
the training index) first checks each shard against it (:func:`verified_shard_paths`) and
refuses a missing, resized or different shard, whatever its name or position: another
valid shard put in its place would otherwise give other metrics under the same hash.
Hashes are remembered per (file, size, mtime), so validating every epoch costs nothing.

Safety: shard contents are read by :func:`tbps.shards.samples.read_samples` only: image
(jpg/png), JSON and text members; any other member is never read, so never unpickled
(webdataset's default decoders run ``pickle.loads`` on ``.pyd`` members). Images decode
with :func:`tbps.image_decode.decode_image`. Shard locations come from the manifest as
plain file names resolved in its folder, so a manifest cannot smuggle in ``pipe:``
(shell) URLs.

Order: samples come in manifest order, shard by shard and sample by sample; with several
DataLoader workers each worker reads every N-th shard and the loader interleaves them.
Training does not stream the shards: it reads them by random access through
:class:`tbps.shards.index.ShardIndex`.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset

from tbps.errors import UserInputError, input_error
from tbps.fileio import read_json_checked, sha256_file
from tbps.image_decode import ImageDecodeError, decode_image
from tbps.shards.layout import rewrite_hint
from tbps.shards.samples import damaged, read_samples

log = logging.getLogger(__name__)

_ENTRY_TYPES = {"name": str, "bytes": int, "sha256": str}


# ----------------------------------------------------------------------------- manifest

def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    fix = "build the shards with `tbps shards manifest`"
    manifest = read_json_checked(path, "shard manifest", fix, ("split", "shards", "num_samples"))
    if not isinstance(manifest["shards"], list):
        raise input_error(path, "'shards' is not a list", fix)
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool)
                                              for k, t in _ENTRY_TYPES.items()):
            raise input_error(path, f"shard entry {entry!r} lacks a name, bytes or sha256", fix, record=i)
        name = entry["name"]
        if not name or Path(name).name != name or ":" in name:
            raise input_error(path, f"shard name {name!r} is not a plain file name", "rerun `tbps shards manifest`",
                              record=i)
    return manifest


def shard_paths(manifest_path: str | os.PathLike) -> list[str]:
    """The manifest's shards as local paths (its folder + name), in manifest order (not checked)."""
    manifest_path = Path(manifest_path)
    folder = manifest_path.parent
    return [str(folder / e["name"]) for e in load_manifest(manifest_path)["shards"]]


_HASHES: dict[tuple[str, int, int, int], str] = {}
"""sha256 per (resolved path, inode, size, mtime_ns): a shard is hashed once per process while unchanged."""
_RACY_SECONDS = 2.0
"""A file modified this recently is hashed again next time: file systems stamp mtimes with a coarse
clock, so a second same-size change within one tick would otherwise keep the old key (git's
"racily clean" entries)."""


def _sha256_cached(path: Path, st: os.stat_result) -> str:
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    digest = _HASHES.get(key)
    if digest is None:
        digest = sha256_file(path)
        if time.time() - st.st_mtime > _RACY_SECONDS:
            _HASHES[key] = digest
    return digest


def _shard_problem(shard: Path, entry: dict[str, Any], check_hashes: bool = True) -> str | None:
    try:
        st = shard.stat()
    except FileNotFoundError:
        return "missing"
    if not os.path.isfile(shard):
        return "not a regular file"
    if st.st_size != entry["bytes"]:
        return f"{st.st_size} bytes, manifest says {entry['bytes']}"
    if check_hashes and _sha256_cached(shard, st) != entry["sha256"]:
        return "sha256 differs from the manifest"
    return None


def verify_manifest(manifest_path: str | os.PathLike, *, check_hashes: bool = True) -> list[str]:
    """Problems with the shards listed in a manifest (empty list: all present and intact).

    ``check_hashes=False`` only checks existence and byte size (fast; a full sha256
    pass reads every shard once).
    """
    manifest_path = Path(manifest_path)
    problems = []
    for entry in load_manifest(manifest_path)["shards"]:
        shard = manifest_path.parent / entry["name"]
        problem = _shard_problem(shard, entry, check_hashes)
        if problem is not None:
            problems.append(f"{shard}: {problem}")
    return problems


def verified_shard_paths(manifest_path: str | os.PathLike) -> list[str]:
    """The manifest's shard paths once each shard is checked against it (size and sha256).

    Raises :class:`UserInputError` naming the first shard that is missing or differs, and how
    to rewrite it; the data read afterwards is the data the manifest's hash stands for.
    """
    manifest_path = Path(manifest_path)
    paths = []
    for index, entry in enumerate(load_manifest(manifest_path)["shards"]):
        shard = manifest_path.parent / entry["name"]
        problem = _shard_problem(shard, entry)
        if problem is not None:
            detail = ("it was replaced or changed after the manifest was written, so it is not the data the "
                      "manifest's hash (data_sha256) stands for" if problem != "missing" else "listed by the manifest")
            raise UserInputError(f"{shard}: {problem} ({detail}: {manifest_path}). "
                                 f"Fix: {rewrite_hint(shard, index=index)}")
        paths.append(str(shard))
    return paths


# ----------------------------------------------------------------------------- decoding

def shard_image(shard: str | os.PathLike, key: str, data: bytes) -> Any:
    """Decode one image member; an undecodable one is a damaged shard (same message in every stage)."""
    try:
        return decode_image(data)
    except ImageDecodeError as e:
        raise damaged(shard, f"the image member cannot be decoded ({e})", key) from None


def _decoded_samples(sources: Iterable[dict[str, str]]) -> Iterator[dict[str, Any]]:
    for source in sources:
        url = source["url"]
        for sample in read_samples(url, with_images=True):
            yield {"__key__": sample.key, "__url__": url, "image": shard_image(url, sample.key, sample.image),
                   "json": sample.meta, "txt": sample.txt}


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

    ``source``: a ``manifest.json`` path (its shards are checked against it first, see
    :func:`verified_shard_paths`) or a list of local shard paths (read as they are).
    ``num_workers`` (optional) only serves an early warning when there are fewer shards than
    DataLoader workers (some would get none). Add per-sample work with
    ``pipeline.compose(wds.map(fn), wds.batched(n))``.
    """
    if isinstance(source, (str, os.PathLike)):
        urls = verified_shard_paths(source)
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
    return wds.DataPipeline(_ShardList(urls), _decoded_samples)
