"""``tbps index``: embed a folder, glob or shard manifest into a gallery index, incrementally.

What is embedded again when an index is updated (same ``--out``, same model):

- a file whose path, byte size and modification time are those recorded is **kept** without
  being read (git's rule for unchanged files);
- any other image is read and hashed (sha256 of its bytes): content the index (or an
  interrupted run) already embedded is **reused**, whatever its path (a moved, renamed, touched
  or duplicated photo costs a hash, not a forward pass);
- only new content is **embedded**; entries whose files are gone are **removed**.

Interruption: every embedded batch is written to ``partial/`` (embeddings first, then the rows
naming them, each atomically) before the next batch starts; a rerun takes them over (counted as
**resumed**), so a kill loses at most one batch. ``index.json`` is replaced only once the new
generation's files are complete (:mod:`tbps.gallery.layout`). One run per ``--out`` at a time: a
second is refused while the first holds the folder (:func:`tbps.gallery.layout.updating`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tbps.errors import UserInputError
from tbps.fileio import atomic_path, write_json_atomic, write_parquet_atomic
from tbps.gallery import layout
from tbps.gallery.encoder import SearchModel, as_float16, require_same_model, same_model
from tbps.gallery.images import (
    MISSING,
    UNDECODABLE,
    UNREADABLE,
    ImageItem,
    Skipped,
    content_sha256,
    read_item_bytes,
    scan_images,
    skip_summary,
)
from tbps.image_decode import ImageDecodeError, decode_image
from tbps.progress import progress
from tbps.provenance import code_version
from tbps.shards.reader import shard_image

log = logging.getLogger(__name__)

_COPY_ROWS = 65536
"""Embedding rows copied per step into a new generation (bounds memory for any gallery size)."""
_SKIPS_SHOWN = 10


@dataclass
class BuildReport:
    folder: Path
    count: int
    embedded: int = 0
    reused: int = 0
    kept: int = 0
    resumed: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    """Wall time of reading, decoding and embedding the images that had to be read."""
    unchanged: bool = False

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        head = (f"{self.folder}: {self.count} images ({self.embedded} embedded, {self.reused} reused, "
                f"{self.kept} unchanged, {self.resumed} resumed from an interrupted run; {self.removed} removed)")
        if self.embedded:
            head += f"; {self.images_per_second:.1f} images/s"
        if not self.skipped:
            return head + "; nothing skipped"
        lines = [head + f"; {len(self.skipped)} skipped ({skip_summary(self.skipped)}):"]
        lines += [f"  {s.reason}: {s.path} ({s.detail})" for s in self.skipped[:_SKIPS_SHOWN]]
        if len(self.skipped) > _SKIPS_SHOWN:
            lines.append(f"  ... and {len(self.skipped) - _SKIPS_SHOWN} more, all listed in "
                         f"{self.folder}/skipped.*.parquet")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Placed:
    """Where an output row comes from: row ``row`` of prior source ``source`` (its embedding, and its
    entry unless ``entry`` replaces it: the same content found under another path or in another shard)."""

    source: int
    row: int
    entry: dict[str, Any] | None = None


class _Prior:
    """Embeddings available without a forward pass: the previous index (source 0) and partial chunks.

    Columnar (numpy and polars, no per-row Python objects), so updating a million-image index
    costs two dictionaries of keys, not a million row dictionaries.
    """

    def __init__(self) -> None:
        self.frames: list[pl.DataFrame] = []
        self.arrays: list[np.ndarray] = []
        self.kinds: list[str] = []
        self.sizes: list[np.ndarray] = []
        self.mtimes: list[np.ndarray] = []
        self.by_path: dict[str, tuple[int, int]] = {}
        self.by_sha: dict[str, tuple[int, int]] = {}

    def add(self, entries: pl.DataFrame, embeddings: np.ndarray, kind: str) -> int:
        source = len(self.frames)
        self.frames.append(entries)
        self.arrays.append(embeddings)
        self.kinds.append(kind)
        self.sizes.append(entries["bytes"].to_numpy())
        self.mtimes.append(entries["mtime_ns"].to_numpy())
        columns = (entries["path"].to_list(), entries["shard"].to_list(), entries["sha256"].to_list())
        for row, (path, shard, sha) in enumerate(zip(*columns, strict=True)):
            if shard is None:
                self.by_path[path] = (source, row)
            self.by_sha.setdefault(sha, (source, row))
        return source

    def unchanged_file(self, item: ImageItem) -> tuple[int, int] | None:
        """The prior row of a file with the same path, size and modification time."""
        hit = self.by_path.get(item.path) if item.shard is None else None
        if hit is None:
            return None
        source, row = hit
        same = self.sizes[source][row] == item.bytes and self.mtimes[source][row] == item.mtime_ns
        return hit if same else None

    def entries(self, placed: list[_Placed]) -> pl.DataFrame:
        """The output rows in order: gathered from the sources, replaced where ``entry`` says."""
        pieces = []
        for source, frame in enumerate(self.frames):
            at = [(pos, p.row) for pos, p in enumerate(placed) if p.source == source and p.entry is None]
            if at:
                positions, rows = zip(*at, strict=True)
                pieces.append(frame[list(rows)].with_columns(pl.Series("_pos", positions, dtype=pl.Int64)))
        replaced = [(pos, p.entry) for pos, p in enumerate(placed) if p.entry is not None]
        if replaced:
            positions, rows = zip(*replaced, strict=True)
            pieces.append(layout.entries_frame(list(rows)).with_columns(pl.Series("_pos", positions, dtype=pl.Int64)))
        return pl.concat(pieces).sort("_pos").drop("_pos")


class _Partial:
    """``partial/``: the embedded batches of this run (or of an interrupted one with the same model)."""

    def __init__(self, folder: Path, identity: dict[str, Any]):
        self.folder = folder
        self.identity = identity
        self.next = 0
        self.chunks: list[tuple[pl.DataFrame, np.ndarray]] = []
        if not folder.is_dir():
            return
        try:
            recorded = json.loads((folder / "run.json").read_text(encoding="utf-8"))["model"]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None
        if not isinstance(recorded, dict) or not same_model(recorded, identity):
            log.warning("%s: partial results of an interrupted run with another model (or unreadable); removed",
                        folder)
            shutil.rmtree(folder)
            return
        for rows_file in sorted(folder.glob("chunk-*.parquet")):
            array_file = rows_file.with_suffix(".npy")
            try:
                rows = pl.read_parquet(rows_file)
                array = np.load(array_file, allow_pickle=False)
                usable = (array.dtype == layout.EMBEDDING_DTYPE and array.ndim == 2
                          and array.shape[0] == rows.height and set(layout.ENTRY_SCHEMA) <= set(rows.columns))
            except (OSError, ValueError, pl.exceptions.PolarsError):
                usable = False
            self.next = max(self.next, int(rows_file.stem.split("-")[1]) + 1)
            if usable:
                self.chunks.append((rows.select(list(layout.ENTRY_SCHEMA)).cast(layout.ENTRY_SCHEMA), array))
            else:
                log.warning("%s: an unreadable partial chunk, ignored", rows_file)

    def write(self, rows: list[dict[str, Any]], embeddings: np.ndarray) -> pl.DataFrame:
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True)
            write_json_atomic(self.folder / "run.json", {"model": self.identity})
        name = f"chunk-{self.next:06d}"
        self.next += 1
        with atomic_path(self.folder / f"{name}.npy", suffix=".npy", expected_bytes=embeddings.nbytes + 128) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, embeddings, allow_pickle=False)
        frame = layout.entries_frame(rows)
        write_parquet_atomic(frame, self.folder / f"{name}.parquet")  # last: it makes the chunk count
        return frame


class _Candidates(Dataset):
    """Images that must be read: hashed, and decoded only when their content is new."""

    def __init__(self, items: list[ImageItem], known: frozenset[str], transform):
        self.items, self.known, self.transform = items, known, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        try:
            data = read_item_bytes(item)
        except FileNotFoundError:
            return {"i": i, "kind": "skip", "reason": MISSING, "detail": "the file disappeared while indexing"}
        except OSError as e:
            return {"i": i, "kind": "skip", "reason": UNREADABLE, "detail": f"cannot read it ({e.strerror or e})"}
        sha = content_sha256(data)
        if sha in self.known:
            return {"i": i, "kind": "reuse", "sha256": sha, "bytes": len(data)}
        if item.shard is not None:
            # Shards are verified data: an undecodable member is a damaged shard (the reader's error).
            image = shard_image(item.read_from, item.key, data)
        else:
            try:
                image = decode_image(data)
            except ImageDecodeError as e:
                return {"i": i, "kind": "skip", "reason": UNDECODABLE, "detail": str(e)}
        return {"i": i, "kind": "embed", "sha256": sha, "bytes": len(data), "width": image.width,
                "height": image.height, "pixels": self.transform(image)}


def _entry(item: ImageItem, sha256: str, size: int, width: int, height: int) -> dict[str, Any]:
    return {"path": item.path, "bytes": size, "mtime_ns": item.mtime_ns, "sha256": sha256, "width": width,
            "height": height, "person_id": item.person_id, "captions": list(item.captions), "shard": item.shard,
            "offset": item.offset}


def build_index(images: str, out: str | Path, model: SearchModel, *, batch_size: int = 64,
                num_workers: int = 2) -> BuildReport:
    """Create or update the index ``out`` for the images of ``images`` (see the module docstring)."""
    out = Path(out)
    layout.check_out_folder(out)
    with layout.updating(out):
        return _build_index(images, out, model, batch_size=batch_size, num_workers=num_workers)


def _build_index(images: str, out: Path, model: SearchModel, *, batch_size: int, num_workers: int) -> BuildReport:
    old = layout.open_index(out, check_hashes=True) if layout.is_index(out) else None
    if old is not None:
        require_same_model(out, old.model, model.identity,
                           "update it with that same model, or write this model's index to another --out folder")
    scan = scan_images(images, exclude=out)
    prior = _Prior()
    if old is not None:
        prior.add(old.entries, old.embeddings, "kept")
    partial = _Partial(out / layout.PARTIAL, model.identity)
    for rows, array in partial.chunks:
        prior.add(rows, array, "resumed")

    report = BuildReport(out, 0)
    placed: list[_Placed | None] = [None] * len(scan.items)
    candidates = []
    for i, item in enumerate(scan.items):
        hit = prior.unchanged_file(item)
        if hit is None:
            candidates.append(i)
            continue
        placed[i] = _Placed(*hit)
        setattr(report, prior.kinds[hit[0]], getattr(report, prior.kinds[hit[0]]) + 1)

    skipped = list(scan.skipped)
    if candidates:
        dataset = _Candidates([scan.items[i] for i in candidates], frozenset(prior.by_sha), model.image_transform())
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
        started = time.perf_counter()
        with progress(total=len(candidates), desc="index images", unit="img") as bar:
            for batch in loader:
                _place_batch(batch, candidates, scan.items, prior, partial, model, placed, skipped, report)
                bar.update(len(batch))
        report.seconds = time.perf_counter() - started

    final = [p for p in placed if p is not None]
    report.count = len(final)
    report.skipped = skipped
    if not final:
        raise UserInputError(f"--images {images}: none of the {len(scan.items)} image files could be read "
                             f"({skip_summary(skipped)}). Fix: check the files (listed in the log)")
    entries = prior.entries(final)
    if old is not None:
        report.removed = len(set(old.entries["path"].to_list()) - set(entries["path"].to_list()))
        report.unchanged = (len(final) == old.count
                            and all(p.source == 0 and p.row == r and p.entry is None for r, p in enumerate(final))
                            and _skipped_frame(skipped).equals(layout.read_skipped(old)))
    if report.unchanged:
        layout.remove_partial(out)
        return report

    sources = np.array([p.source for p in final])
    rows = np.array([p.row for p in final])

    def fill(target: np.ndarray) -> None:
        for source, array in enumerate(prior.arrays):
            where = np.flatnonzero(sources == source)
            for start in range(0, len(where), _COPY_ROWS):
                block = where[start:start + _COPY_ROWS]
                target[block] = array[rows[block]]

    dim = int(model.identity["embed_dim"])
    meta = {
        "model": {**model.identity, **_relative_weights(model.identity, out)},
        "source": {"kind": scan.kind, "path": scan.source, "relative_path": _relative(scan.source, out),
                   "manifest_sha256": scan.manifest_sha256},
        "last_run": {"embedded": report.embedded, "reused": report.reused, "kept": report.kept,
                     "resumed": report.resumed, "removed": report.removed, "skipped": len(skipped),
                     "images_per_second": round(report.images_per_second, 2)},
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "code_version": code_version(),
    }
    generation = int(old.meta["generation"]) + 1 if old is not None else 1
    layout.write_generation(out, generation, meta, entries, _skipped_frame(skipped), dim, fill)
    layout.remove_other_generations(out, generation)
    layout.remove_partial(out)
    return report


def _relative(path: str, folder: Path) -> str:
    """``path`` relative to the index folder: found again when both move together (a copied workflow run)."""
    return os.path.relpath(path, os.path.abspath(folder))


def _relative_weights(identity: dict[str, Any], folder: Path) -> dict[str, str]:
    weights = identity["weights"]
    return {"relative_weights": _relative(weights, folder)} if os.path.isabs(weights) else {}


def _skipped_frame(skipped: list[Skipped]) -> pl.DataFrame:
    return pl.DataFrame([{"path": s.path, "reason": s.reason, "detail": s.detail} for s in skipped],
                        schema=layout.SKIPPED_SCHEMA)


def _place_batch(batch: list[dict[str, Any]], candidates: list[int], items: list[ImageItem], prior: _Prior,
                 partial: _Partial, model: SearchModel, placed: list[_Placed | None], skipped: list[Skipped],
                 report: BuildReport) -> None:
    new_rows, new_pixels, new_slots = [], [], []
    for result in batch:
        slot = candidates[result["i"]]
        item = items[slot]
        if result["kind"] == "skip":
            skipped.append(Skipped(item.path, result["reason"], result["detail"]))
            continue
        known = prior.by_sha.get(result["sha256"])
        if known is not None:  # known before the run, or embedded by an earlier batch of it
            source, row = known
            width, height = prior.frames[source].select("width", "height").row(row)
            entry = _entry(item, result["sha256"], result["bytes"], width, height)
            placed[slot] = _Placed(source, row, entry)
            report.reused += 1
            continue
        new_rows.append(_entry(item, result["sha256"], result["bytes"], result["width"], result["height"]))
        new_pixels.append(result["pixels"])
        new_slots.append(slot)
    if not new_rows:
        return
    features = as_float16(model.encode_images(torch.stack(new_pixels)))
    frame = partial.write(new_rows, features)
    source = prior.add(frame, features, "resumed")
    for row, slot in enumerate(new_slots):
        placed[slot] = _Placed(source, row)
    report.embedded += len(new_rows)
