"""The files of a gallery index (a folder, e.g. ``gallery.index/``) and how they are read back.

``index.json``
    Written last, atomically: the format and version, the generation ``G`` whose files make the
    index, the number of images and the embedding width, each file's byte size and sha256, the
    model's identity (:mod:`tbps.gallery.encoder`), the source (folder, glob or manifest, with
    the manifest's sha256), what the last run did (embedded, reused, kept, removed, skipped)
    and the code version.
``embeddings.G.npy``
    N x D float16, L2-normalised image embeddings, row i for entry i. A plain ``.npy`` read with
    ``numpy.load(allow_pickle=False)`` and memory-mapped, so a search reads it in chunks and a
    million 512-d embeddings take 1 GB on disk, not in memory. float16 keeps cosine scores within
    about 1e-3 of float32 (half the disk and page cache); scores are computed in float32.
``entries.G.parquet``
    One row per embedding: ``path`` (absolute file path, or the dataset path of a shard image),
    ``bytes`` and ``mtime_ns`` (of the file when it was embedded), ``sha256`` (of the image
    bytes), ``width`` and ``height`` (as displayed, after EXIF rotation), and for shard images
    ``person_id``, ``captions``, ``shard`` and ``offset`` (null for files).
``skipped.G.parquet``
    Every file that was not indexed: ``path``, ``reason``, ``detail`` (:mod:`tbps.gallery.images`).
``partial/``
    Only while ``tbps index`` runs or after it was interrupted: ``run.json`` (the model identity)
    and one ``chunk-NNNNNN.npy`` + ``chunk-NNNNNN.parquet`` pair per embedded batch. The next
    run with the same model takes those embeddings over, so an interruption loses at most the
    batch being embedded. A finished run removes the folder.

A new generation's files are written under new names before ``index.json`` names them; the
previous generation stays intact until then, so an interrupted update leaves the previous index
usable. ``tbps search`` checks the format, the files' byte sizes and the array shapes (not the
sha256 of a 1 GB array on every query); ``tbps index`` checks the sha256 of the files it reuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tbps.errors import UserInputError
from tbps.fileio import (
    atomic_path,
    read_json_checked,
    read_parquet_checked,
    sha256_file,
    write_json_atomic,
    write_parquet_atomic,
)

FORMAT = "tbps-gallery-index"
VERSION = 1
INDEX_FILE = "index.json"
PARTIAL = "partial"
EMBEDDING_DTYPE = np.float16

ENTRY_SCHEMA = {
    "path": pl.Utf8, "bytes": pl.Int64, "mtime_ns": pl.Int64, "sha256": pl.Utf8, "width": pl.Int32,
    "height": pl.Int32, "person_id": pl.Int64, "captions": pl.List(pl.Utf8), "shard": pl.Utf8, "offset": pl.Int64,
}
SKIPPED_SCHEMA = {"path": pl.Utf8, "reason": pl.Utf8, "detail": pl.Utf8}
_GENERATION_FILE = re.compile(r"^(embeddings|entries|skipped)\.(\d+)\.(npy|parquet)$")
_REQUIRED = ("format", "version", "generation", "count", "dim", "files", "model", "source")
_REINDEX = "index the images again with `tbps index` (into a new --out folder, or after deleting this one)"


def generation_files(generation: int) -> dict[str, str]:
    return {"embeddings": f"embeddings.{generation}.npy", "entries": f"entries.{generation}.parquet",
            "skipped": f"skipped.{generation}.parquet"}


def empty_entries() -> pl.DataFrame:
    return pl.DataFrame(schema=ENTRY_SCHEMA)


def entries_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=ENTRY_SCHEMA) if rows else empty_entries()


@dataclass
class GalleryIndex:
    folder: Path
    meta: dict[str, Any]
    entries: pl.DataFrame
    embeddings: np.ndarray
    """N x D float16, memory-mapped (read-only)."""

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def model(self) -> dict[str, Any]:
        return self.meta["model"]

    @property
    def has_person_ids(self) -> bool:
        return self.entries.height > 0 and self.entries["person_id"].null_count() == 0

    def shard_folder(self) -> Path | None:
        """The folder of the manifest's shards: beside the index as it was, else where it was."""
        source = self.meta["source"]
        if source["kind"] != "manifest":
            return None
        return locate(self.folder, source.get("relative_path"), source["path"]).parent


def locate(folder: Path, relative: str | None, absolute: str) -> Path:
    """A path an index recorded both relative to itself and absolute: the relative one when it exists."""
    if relative is not None and (folder / relative).exists():
        return folder / relative
    return Path(absolute)


def is_index(folder: str | os.PathLike) -> bool:
    return (Path(folder) / INDEX_FILE).is_file()


def check_out_folder(folder: Path) -> None:
    """``--out`` must be a new or empty folder, or a gallery index (never another folder's contents)."""
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"--out {folder}: exists and is not a folder. Fix: name a new folder, e.g. gallery.index")
    if folder.is_dir() and not is_index(folder) and not (folder / PARTIAL).is_dir() and any(folder.iterdir()):
        raise UserInputError(f"--out {folder}: a folder that is not a gallery index (no {INDEX_FILE}) and not empty; "
                             "its files are left alone. Fix: name a new folder, e.g. gallery.index")


@contextlib.contextmanager
def updating(folder: Path) -> Iterator[None]:
    """Hold ``folder`` (created if missing) for one ``tbps index`` at a time.

    Two runs on one ``--out`` would write the same ``partial/`` chunk names and each remove the
    other's generation. The lock is the kernel's (flock on the folder), so a killed run never leaves
    it held; a folder this call created and that is still empty on the way out is removed again.
    """
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserInputError(
                f"--out {folder}: another `tbps index` is updating this index right now. Fix: wait for it to "
                "finish and rerun (a rerun reuses everything already embedded), or write to another --out folder"
            ) from None
        yield
    finally:
        os.close(handle)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when nothing was written


def _file_problem(path: Path, expected: dict[str, Any], check_hashes: bool) -> str | None:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != expected.get("bytes"):
        return f"{size} bytes, {INDEX_FILE} says {expected.get('bytes')}"
    if check_hashes and sha256_file(path) != expected.get("sha256"):
        return f"sha256 differs from {INDEX_FILE}"
    return None


def open_index(folder: str | os.PathLike, *, check_hashes: bool = False) -> GalleryIndex:
    """Read a finished index; any inconsistency is a :class:`UserInputError` naming the file."""
    folder = Path(folder)
    index_file = folder / INDEX_FILE
    if folder.is_dir() and not index_file.exists():
        unfinished = " (an interrupted `tbps index` left partial results: rerun it to finish)" \
            if (folder / PARTIAL).is_dir() else ""
        raise UserInputError(f"{folder}: not a finished gallery index, it has no {INDEX_FILE}{unfinished}. "
                             "Fix: build it with `tbps index --images ... --out " + str(folder) + "`")
    meta = read_json_checked(index_file, "gallery index", "build it with `tbps index`", _REQUIRED)
    if meta["format"] != FORMAT:
        raise UserInputError(f"{index_file}: format {meta['format']!r}, not a {FORMAT}. Fix: {_REINDEX}")
    if meta["version"] != VERSION:
        raise UserInputError(f"{index_file}: format version {meta['version']}, this tbps reads version {VERSION}. "
                             f"Fix: use the tbps that wrote it, or {_REINDEX}")
    files = meta["files"]
    for role in ("embeddings", "entries", "skipped"):
        expected = files.get(role)
        if not isinstance(expected, dict) or not isinstance(expected.get("name"), str) \
                or Path(expected["name"]).name != expected["name"]:
            raise UserInputError(f"{index_file}: no valid {role!r} file entry. Fix: {_REINDEX}")
        problem = _file_problem(folder / expected["name"], expected, check_hashes)
        if problem is not None:
            raise UserInputError(f"{folder / expected['name']}: {problem} (changed or removed after the index was "
                                 f"written). Fix: {_REINDEX}")
    count, dim = int(meta["count"]), int(meta["dim"])
    embeddings_path = folder / files["embeddings"]["name"]
    try:
        embeddings = np.load(embeddings_path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise UserInputError(f"{embeddings_path}: not a plain numeric .npy array ({e}). Fix: {_REINDEX}") from None
    if embeddings.dtype != EMBEDDING_DTYPE or embeddings.shape != (count, dim):
        raise UserInputError(f"{embeddings_path}: {embeddings.dtype} {embeddings.shape}, {INDEX_FILE} says "
                             f"float16 ({count}, {dim}). Fix: {_REINDEX}")
    entries = read_parquet_checked(folder / files["entries"]["name"], "index entries", _REINDEX, ENTRY_SCHEMA)
    if entries.height != count:
        raise UserInputError(f"{folder / files['entries']['name']}: {entries.height} rows, {INDEX_FILE} says "
                             f"{count}. Fix: {_REINDEX}")
    return GalleryIndex(folder, meta, entries, embeddings)


def read_skipped(index: GalleryIndex) -> pl.DataFrame:
    return pl.read_parquet(index.folder / index.meta["files"]["skipped"]["name"])


def write_generation(folder: Path, generation: int, meta: dict[str, Any], entries: pl.DataFrame,
                     skipped: pl.DataFrame, dim: int, fill: Callable[[np.ndarray], None]) -> dict[str, Any]:
    """Write generation ``generation`` and then ``index.json`` naming it; returns the index.json contents.

    ``fill(out)`` writes the N x dim embeddings into a float16 memory-mapped array.
    """
    names = generation_files(generation)
    count = entries.height
    with atomic_path(folder / names["embeddings"], suffix=".npy", expected_bytes=count * dim * 2 + 128) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=EMBEDDING_DTYPE, shape=(count, dim))
        fill(out)
        out.flush()
        del out
    write_parquet_atomic(entries.select(list(ENTRY_SCHEMA)), folder / names["entries"])
    write_parquet_atomic(skipped.select(list(SKIPPED_SCHEMA)), folder / names["skipped"])
    files = {}
    for role, name in names.items():
        path = folder / name
        files[role] = {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    meta = {**meta, "format": FORMAT, "version": VERSION, "generation": generation, "count": count, "dim": dim,
            "dtype": "float16", "files": files}
    write_json_atomic(folder / INDEX_FILE, meta)
    return meta


def remove_other_generations(folder: Path, generation: int) -> None:
    """Remove earlier (or abandoned) generations' files once ``index.json`` names ``generation``."""
    for entry in os.scandir(folder):
        match = _GENERATION_FILE.match(entry.name)
        if match and int(match.group(2)) != generation:
            os.unlink(entry.path)


def remove_partial(folder: Path) -> None:
    shutil.rmtree(folder / PARTIAL, ignore_errors=True)
