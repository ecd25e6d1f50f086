"""Step 2 of writing shards (``tbps shards write``): one planned shard -> tar + sidecar.

Deterministic and atomic: the same plan, table and images give a byte-identical tar,
which appears under its name only when complete, followed by its sidecar
``<shard>.json`` (counts, sha256, the rejected images). :func:`write_split` runs the
three steps (:mod:`tbps.shards.plan`, this module, :mod:`tbps.shards.manifest`) in one
process for tests and benchmarks.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
from PIL import Image

from tbps.errors import UserInputError, input_error
from tbps.fileio import atomic_path, read_parquet_checked, sha256_file, write_json_atomic
from tbps.image_decode import ImageDecodeError, decode_image
from tbps.ingest.image_files import RefusedImagePath, raw_image_file
from tbps.progress import progress as progress_bar
from tbps.shards.image_table import image_table, read_annotations
from tbps.shards.layout import sample_key, sidecar_path
from tbps.shards.manifest import build_manifest
from tbps.shards.plan import DEFAULT_MAX_SAMPLES, load_plan, plan_shards

log = logging.getLogger(__name__)

DEFAULT_JPEG_QUALITY = 90
IMAGE_FORMATS = ("keep", "jpg", "png")

# Fixed tar member metadata, so the same inputs give byte-identical shards. The tar is
# written with the standard library rather than webdataset's TarWriter: TarWriter can be
# made reproducible too (it stamps mtime=time.time() unless `mtime` is given, sets
# uname/gname/mode from its arguments, leaves uid/gid 0 and silently ignores its `format`
# argument), but `import webdataset` imports torch, ~2-6 s of start-up in every shard job
# for ~0.1 s of work. The reader (tbps.shards.reader) uses webdataset.
_TAR_MTIME = 0
_TAR_USER = "tbps"
_TAR_MODE = 0o444

_AUG_COLUMNS = ("caption_id", "caption", "caption_aug")
# PIL format name -> member extension kept as is ("MPO" is a JPEG with extra frames).
_KEEP_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png"}


def parse_image_size(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"224x224"`` (HxW) or ``[H, W]`` -> ``(H, W)``; None stays None."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise UserInputError(
                f"--image-size {text!r}: not of the form HxW. Fix: give e.g. 224x224 or 384x128"
            )
        size = (int(parts[0]), int(parts[1]))
    else:
        size = tuple(int(v) for v in text)
        if len(size) != 2:
            raise UserInputError(f"image size {text!r}: needs 2 numbers [H, W]. Fix: give e.g. [224, 224]")
    if min(size) < 8:
        raise UserInputError(f"image size {size}: each side must be >= 8 pixels. Fix: give e.g. 224x224")
    return size  # type: ignore[return-value]


class _SampleTar:
    """Writes samples as ``{key}.{ext}`` members (sorted by ext) with fixed USTAR metadata."""

    def __init__(self, stream: io.BufferedWriter):
        self._tar = tarfile.open(fileobj=stream, mode="w|", format=tarfile.USTAR_FORMAT)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), _TAR_MTIME, _TAR_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = _TAR_USER
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> _SampleTar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageRejected(Exception):
    """An image that cannot be stored; ``reason`` is a short code counted in the sidecar."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _strip_metadata(img: Image.Image) -> Image.Image:
    # PNG saving copies e.g. an ICC profile from `info`; re-encoded images carry none.
    img.info = {}
    return img


def encode_image(
    data: bytes,
    *,
    image_format: str = "keep",
    image_size: tuple[int, int] | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> tuple[str, bytes, bool]:
    """Verify (full decode) and encode one image -> (extension, bytes, converted).

    ``keep`` returns the original bytes with the extension of the detected format;
    other formats (BMP, WebP, ...) are stored as RGB PNG (``converted``=True).
    ``jpg``/``png`` re-encode (RGB, bilinear resize to ``image_size`` = (H, W) if
    given, fixed quality, no metadata). Raises :class:`ImageRejected` for undecodable bytes.
    Decoding is :func:`tbps.image_decode.decode_image`, the one readers use: what is kept
    is what training and evaluation can read, and a re-encoded image is stored upright.
    """
    try:
        rgb = decode_image(data)
    except ImageDecodeError as e:
        raise ImageRejected("undecodable_image", str(e)) from e
    if image_format == "keep":
        with Image.open(io.BytesIO(data)) as header:
            detected = header.format
        if detected in _KEEP_EXTENSIONS:
            return _KEEP_EXTENSIONS[detected], data, False
    if image_size is not None:
        height, width = image_size
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    rgb = _strip_metadata(rgb)
    out = io.BytesIO()
    if image_format == "jpg":
        rgb.save(out, format="JPEG", quality=jpeg_quality, optimize=False, progressive=False)
        return "jpg", out.getvalue(), False
    rgb.save(out, format="PNG", optimize=False, compress_level=6)
    return "png", out.getvalue(), image_format == "keep"


def _sample_json(row: dict[str, Any]) -> bytes:
    n = len(row["caption"])
    aug = row["caption_aug"] if isinstance(row["caption_aug"], list) else [None] * n
    meta = {
        "dataset": row["dataset"],
        "split": row["split"],
        "person_id": int(row["person_id"]),
        "train_id": None if row["train_id"] is None else int(row["train_id"]),
        "image_index": int(row["image_index"]),
        "image_path": row["image_path"],
        "captions": list(row["caption"]),
        "captions_aug": list(aug),
        "caption_ids": [int(c) for c in row["caption_id"]],
    }
    return json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _join_augmented(df: pl.DataFrame, augmented: Path) -> pl.DataFrame:
    """Left-join the augmented captions on caption_id (null where a caption has none)."""
    aug = read_parquet_checked(augmented, "augmented captions", "regenerate them with `tbps augment` (or drop "
                               "--augmented)", _AUG_COLUMNS)
    aug = aug.with_columns(pl.col("caption_id").cast(pl.Int64))
    dup = aug.filter(pl.col("caption_id").is_duplicated())
    if dup.height:
        raise input_error(augmented, f"caption_id {dup['caption_id'][0]} appears more than once",
                          "regenerate it with `tbps augment`", record=int(dup["caption_id"][0]))
    joined = df.join(
        aug.select("caption_id", pl.col("caption").alias("_aug_source"), "caption_aug"),
        on="caption_id", how="left",
    )
    # A caption changed since augmentation means the augment output is stale for this table.
    stale = joined.filter(pl.col("_aug_source").is_not_null() & (pl.col("_aug_source") != pl.col("caption")))
    if stale.height:
        cid = int(stale["caption_id"][0])
        raise input_error(augmented, f"caption_id {cid}: source caption differs from annotations",
                          "rerun `tbps augment` on the current annotations", record=cid)
    return joined.drop("_aug_source")


@dataclass(frozen=True)
class ShardSources:
    """What a split's shards are written from."""

    annotations: Path
    """``annotations.parquet`` from ``tbps prepare`` (the table the plan was made from)."""
    raw: Path
    """The raw dataset folder; image paths are relative to it."""
    augmented: Path | None = None
    """``captions_aug.parquet`` from ``tbps augment``, joined on caption_id (train only)."""


@dataclass(frozen=True)
class ImageEncoding:
    """How images are stored in the shards: the original bytes, or re-encoded (and resized)."""

    image_format: str | None = None
    """``keep`` (original bytes), ``jpg`` or ``png``; None means ``keep`` without ``image_size``
    and ``jpg`` with it."""
    image_size: tuple[int, int] | None = None
    """(H, W) to resize to when re-encoding."""
    jpeg_quality: int = DEFAULT_JPEG_QUALITY

    def checked(self) -> ImageEncoding:
        """The same settings with the format resolved; an error for settings that cannot work together."""
        image_format = self.image_format
        if image_format is None:
            image_format = "keep" if self.image_size is None else "jpg"
        if image_format not in IMAGE_FORMATS:
            raise UserInputError(f"--image-format {image_format!r}: unknown. Fix: use one of {IMAGE_FORMATS}")
        if image_format == "keep" and self.image_size is not None:
            raise UserInputError("--image-format keep stores the original bytes and cannot resize. "
                                 "Fix: use --image-format jpg (or png) with --image-size")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserInputError(f"--jpeg-quality {self.jpeg_quality}: must be 1..100. "
                                 f"Fix: e.g. {DEFAULT_JPEG_QUALITY}")
        return replace(self, image_format=image_format)


def _planned_entry(plan: dict[str, Any], plan_path: Path, shard_index: int, out: Path) -> dict[str, Any]:
    """The plan's entry for shard ``shard_index``, which must be written under its planned name."""
    shards = plan["shards"]
    if not 0 <= shard_index < len(shards):
        raise input_error(plan_path, f"shard index {shard_index} out of range (the plan has {len(shards)} shards)",
                          f"give --shard-index between 0 and {len(shards) - 1}")
    entry = shards[shard_index]
    if out.name != entry["name"]:
        raise input_error(plan_path, f"shard {shard_index} is named {entry['name']!r}, not {out.name!r}",
                          f"write it to {out.with_name(entry['name'])}")
    return entry


def _planned_rows(plan: dict[str, Any], plan_path: Path, shard_index: int,
                  sources: ShardSources) -> dict[int, dict[str, Any]]:
    """The image rows of the shard's planned images (captions, augmented captions, metadata) by image_index."""
    annotations = sources.annotations
    annotations_sha = sha256_file(annotations) if annotations.is_file() else None
    if annotations_sha != plan["annotations_sha256"]:
        read_annotations(annotations)  # a clear error if the file is missing/broken
        raise input_error(plan_path, f"the plan was made from a different {annotations.name}",
                          "rerun `tbps shards plan` on the current annotations")
    wanted = plan["shards"][shard_index]["image_indices"]
    df = read_annotations(annotations, plan["split"]).filter(pl.col("image_index").is_in(wanted))
    if sources.augmented is not None:
        df = _join_augmented(df, sources.augmented)
    rows = {r["image_index"]: r for r in image_table(df, annotations).iter_rows(named=True)}
    lost = [i for i in wanted if i not in rows]
    if lost:
        raise input_error(plan_path, f"image_index {lost[0]} of shard {shard_index} is not in {annotations}",
                          "rerun `tbps shards plan`")
    return rows


def _sample_members(row: dict[str, Any], raw: Path, encoding: ImageEncoding) -> tuple[dict[str, bytes], bool]:
    """The tar members of one image's sample and whether its image was converted to PNG.

    Raises :class:`ImageRejected` for an image that cannot be read or decoded.
    """
    try:
        # Checked again here, not only by `tbps prepare`: a link may have changed since.
        data = raw_image_file(raw, row["image_path"]).read_bytes()
    except RefusedImagePath as refused:
        raise ImageRejected(refused.reason, refused.detail) from None
    except OSError as e:
        raise ImageRejected("unreadable_file", f"{type(e).__name__}: {e.strerror}") from e
    ext, image_bytes, converted = encode_image(data, image_format=encoding.image_format,
                                               image_size=encoding.image_size, jpeg_quality=encoding.jpeg_quality)
    members = {ext: image_bytes, "json": _sample_json(row), "txt": "\n".join(row["caption"]).encode("utf-8")}
    return members, converted


def write_shard(
    plan_path: str | os.PathLike,
    shard_index: int,
    out: str | os.PathLike,
    sources: ShardSources,
    *,
    encoding: ImageEncoding = ImageEncoding(),
    on_sample: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Write planned shard ``shard_index`` to ``out`` (+ sidecar ``out.with_suffix('.json')``).

    Undecodable/unreadable images are rejected and listed in the sidecar (accepted +
    rejected = planned). Both files are written atomically; the tar is renamed into
    place before the sidecar, and :func:`tbps.shards.manifest.build_manifest` checks
    that they match. ``on_sample`` is called after every planned image (progress).
    Returns the sidecar dict.
    """
    plan_path, out = Path(plan_path), Path(out)
    plan = load_plan(plan_path)
    entry = _planned_entry(plan, plan_path, shard_index, out)
    encoding = encoding.checked()
    rows = _planned_rows(plan, plan_path, shard_index, sources)
    wanted = entry["image_indices"]

    rejected: list[dict[str, Any]] = []
    converted = 0
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as stream, _SampleTar(stream) as sink:
            for image_index in wanted:
                row = rows[image_index]
                try:
                    members, was_converted = _sample_members(row, sources.raw, encoding)
                except ImageRejected as r:
                    rejected.append({"image_index": image_index, "image_path": row["image_path"],
                                     "reason": r.reason, "detail": r.detail})
                    log.warning("shard %s: rejected %s (%s: %s)", entry["name"], row["image_path"],
                                r.reason, r.detail)
                else:
                    converted += was_converted
                    sink.write(sample_key(plan["split"], image_index), members)
                if on_sample is not None:
                    on_sample()
        digest, size = sha256_file(tmp), tmp.stat().st_size

    sidecar = {
        "name": entry["name"],
        "planned": len(wanted),
        "samples": len(wanted) - len(rejected),
        "rejected": rejected,
        "converted_to_png": converted,
        "bytes": size,
        "sha256": digest,
        "plan_sha256": sha256_file(plan_path),
        "params": {
            "image_format": encoding.image_format,
            "image_size": list(encoding.image_size) if encoding.image_size else None,
            "jpeg_quality": encoding.jpeg_quality if encoding.image_format == "jpg" else None,
            "augmented_sha256": sha256_file(sources.augmented) if sources.augmented is not None else None,
        },
    }
    write_json_atomic(sidecar_path(out), sidecar)
    log.info("wrote %s: %d samples, %d rejected, %d bytes", out, sidecar["samples"], len(rejected), size)
    return sidecar


def write_split(
    annotations: str | os.PathLike,
    split: str,
    raw: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    augmented: str | os.PathLike | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int | None = None,
    seed: int = 0,
    name_prefix: str = "shard",
    image_size: tuple[int, int] | None = None,
    image_format: str | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    progress: bool = True,
) -> dict[str, Any]:
    """Plan, write every shard and the manifest of one split in this process.

    Same files as the three CLI steps (``out_dir``/plan.json, shards + sidecars,
    manifest.json). Returns the manifest.
    """
    out_dir = Path(out_dir)
    plan = plan_shards(annotations, split, raw, max_samples=max_samples, max_bytes=max_bytes,
                       seed=seed, name_prefix=name_prefix)
    plan_path = out_dir / "plan.json"
    write_json_atomic(plan_path, plan)
    with progress_bar(total=plan["num_samples"], desc=f"shards {split}", unit="img", disable=not progress) as bar:
        sources = ShardSources(Path(annotations), Path(raw), Path(augmented) if augmented is not None else None)
        encoding = ImageEncoding(image_format, image_size, jpeg_quality)
        for index, entry in enumerate(plan["shards"]):
            write_shard(plan_path, index, out_dir / entry["name"], sources, encoding=encoding,
                        on_sample=lambda: bar.update(1))
    return build_manifest(plan_path, out_dir / "manifest.json")
