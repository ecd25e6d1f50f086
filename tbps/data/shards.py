"""Deterministic, atomic WebDataset shards: plan -> write one shard -> manifest.

The three steps are separate so the workflow can rerun exactly one lost shard:

1. :func:`plan_shards` picks a split's images (one sample per image), orders them with
   a seeded shuffle and cuts them into shards; the plan is a small JSON file.
2. :func:`write_shard` writes ONE planned shard (tar, atomically) and a sidecar
   ``<shard>.json`` with its counts, sha256 and the rejected images.
3. :func:`build_manifest` checks every shard against its sidecar and the plan and
   writes ``manifest.json`` last: a folder without a manifest is never complete.

Sample layout (the shard contract): ``__key__ = f"{split}-{image_index:08d}"``, one
image member ``jpg`` or ``png`` (by the actual encoding), ``json`` (metadata and the
caption lists) and ``txt`` (captions joined by newlines).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from tbps.errors import UserInputError, input_error
from tbps.fileio import atomic_path, read_json_checked, read_parquet_checked, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_MAX_SAMPLES = 64
"""Images per shard. The default synthetic dataset (`tbps synth`: ~2,000 train, ~300 val
and ~300 test images) then gets 32 / 5 / 5 shards, at least the 4 loader workers of the
default config in every split; CUHK-PEDES train (34,054 images) gets 533 shards of
~0.5-1 MB, which webdataset streams without trouble (pass --max-samples for fewer)."""

DEFAULT_JPEG_QUALITY = 90
IMAGE_FORMATS = ("keep", "jpg", "png")

# Fixed tar member metadata, so the same inputs give byte-identical shards. The tar is
# written with the standard library rather than webdataset's TarWriter: TarWriter can be
# made reproducible too (it stamps mtime=time.time() unless `mtime` is given, sets
# uname/gname/mode from its arguments, leaves uid/gid 0 and silently ignores its `format`
# argument), but `import webdataset` imports torch, ~2-6 s of start-up in every shard job
# for ~0.1 s of work. The reader (tbps.data.shard_reader) uses webdataset.
_TAR_MTIME = 0
_TAR_USER = "tbps"
_TAR_MODE = 0o444
_TAR_BLOCK = 512
# Per-sample tar overhead beyond the image data, for the byte estimate of the plan:
# three member headers plus (typically) one block each for the json and txt members.
_SAMPLE_OVERHEAD = 5 * _TAR_BLOCK

_REQUIRED_COLUMNS = (
    "caption_id", "dataset", "split", "person_id", "train_id",
    "image_index", "image_path", "caption_index", "caption",
)
_NON_NULL_COLUMNS = ("caption_id", "split", "person_id", "image_index", "image_path", "caption")
_AUG_COLUMNS = ("caption_id", "caption", "caption_aug")
# PIL format name -> member extension kept as is ("MPO" is a JPEG with extra frames).
_KEEP_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png"}


# ----------------------------------------------------------------------------- helpers

def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def sidecar_path(shard_path: str | os.PathLike) -> Path:
    """``shard-000000.tar`` -> ``shard-000000.json`` (per-shard counts and hash)."""
    return Path(shard_path).with_suffix(".json")


def sample_key(split: str, image_index: int) -> str:
    return f"{split}-{image_index:08d}"


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


def estimate_sample_bytes(image_bytes: int) -> int:
    """Tar bytes of one sample whose image file has ``image_bytes`` bytes (original bytes mode)."""
    return _TAR_BLOCK * math.ceil(image_bytes / _TAR_BLOCK) + _SAMPLE_OVERHEAD


def _split_seed(seed: int, split: str) -> np.random.SeedSequence:
    # Seed + split name, so train/val/test orders differ but each is reproducible anywhere
    # (Python's hash() of a str is salted per process, sha256 is not).
    split_word = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")
    return np.random.SeedSequence([seed, split_word])


def _read_annotations(path: Path, split: str | None = None) -> pl.DataFrame:
    df = read_parquet_checked(path, "annotations file", "regenerate it with `tbps prepare` (or fix --captions)",
                              _REQUIRED_COLUMNS)
    for column in _NON_NULL_COLUMNS:
        nulls = df.filter(pl.col(column).is_null())
        if nulls.height:
            raise input_error(path, f"null {column}", "regenerate it with `tbps prepare`",
                              record=nulls["caption_id"][0] if column != "caption_id" else None)
    if split is not None:
        df = df.filter(pl.col("split") == split)
    return df


def _image_table(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    """One row per image: per-image fields + caption lists in caption_id (source) order."""
    df = df.sort("caption_id")
    images = df.group_by("image_index", maintain_order=True).agg(
        pl.col("dataset").first(),
        pl.col("split").first(),
        pl.col("person_id").first(),
        pl.col("train_id").first(),
        pl.col("image_path").first(),
        pl.col("caption_id"),
        pl.col("caption"),
        pl.col("caption_aug") if "caption_aug" in df.columns else pl.lit(None, pl.String).alias("caption_aug"),
        pl.col("image_path").n_unique().alias("_paths"),
        pl.col("person_id").n_unique().alias("_pids"),
    )
    bad = images.filter((pl.col("_paths") > 1) | (pl.col("_pids") > 1))
    if bad.height:
        first = bad.row(0, named=True)
        raise input_error(
            path,
            f"image_index {first['image_index']} has several image paths or person ids",
            "regenerate the table with `tbps prepare` (image_index must identify one image)",
            record=int(first["caption_id"][0]),
        )
    return images.drop("_paths", "_pids")


# ----------------------------------------------------------------------------- 1. plan

def plan_shards(
    annotations: str | os.PathLike,
    split: str,
    raw: str | os.PathLike,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int | None = None,
    seed: int = 0,
    name_prefix: str = "shard",
) -> dict[str, Any]:
    """Assign the split's images to shards; returns the plan (see module docstring).

    Order: a seeded permutation (numpy Generator from ``seed`` and the split name), so
    every shard holds a random mix of identities and the loader's small shuffle buffer
    suffices. A shard closes at ``max_samples`` images or before its estimated tar size
    (source image file sizes + tar overhead) would pass ``max_bytes``; an image larger
    than ``max_bytes`` gets a shard of its own.
    """
    path, raw = Path(annotations), Path(raw)
    if max_samples < 1:
        raise UserInputError(f"--max-samples {max_samples}: must be >= 1. Fix: give e.g. {DEFAULT_MAX_SAMPLES}")
    if max_bytes is not None and max_bytes < 1:
        raise UserInputError(f"--max-bytes {max_bytes}: must be >= 1. Fix: leave it out or give e.g. 500000000")
    if not name_prefix or "/" in name_prefix or os.sep in name_prefix:
        raise UserInputError(f"--name-prefix {name_prefix!r}: must be a plain file name prefix. Fix: e.g. shard")
    df = _read_annotations(path)
    if not (df["split"] == split).any():
        present = sorted(df["split"].unique().drop_nulls().to_list())
        raise input_error(path, f"no caption of split {split!r} (splits present: {present})",
                          "choose one of the splits present")
    images = _image_table(df.filter(pl.col("split") == split), path)

    indices = images["image_index"].to_numpy()
    order = np.random.default_rng(_split_seed(seed, split)).permutation(np.sort(indices))
    rel_paths = dict(zip(images["image_index"].to_list(), images["image_path"].to_list(), strict=True))
    first_caption = dict(zip(images["image_index"].to_list(),
                             [ids[0] for ids in images["caption_id"].to_list()], strict=True))

    shards: list[dict[str, Any]] = []
    current: list[int] = []
    current_bytes = 0

    def close() -> None:
        shards.append({"name": shard_name(name_prefix, len(shards)), "image_indices": list(current),
                       "estimated_bytes": current_bytes})

    for image_index in order.tolist():
        image_file = raw / rel_paths[image_index]
        try:
            size = estimate_sample_bytes(image_file.stat().st_size)
        except OSError as e:
            raise input_error(
                path, f"image {rel_paths[image_index]!r} not found under {raw} ({e.strerror})",
                "check --raw, or rerun `tbps prepare` if the raw folder changed",
                record=first_caption[image_index],
            ) from e
        full = len(current) >= max_samples or (
            max_bytes is not None and current and current_bytes + size > max_bytes
        )
        if full:
            close()
            current, current_bytes = [], 0
        current.append(image_index)
        current_bytes += size
    if current:
        close()

    plan = {
        "split": split,
        "dataset": images["dataset"][0],
        "seed": seed,
        "num_samples": len(order),
        "shards": shards,
        "params": {"max_samples": max_samples, "max_bytes": max_bytes, "name_prefix": name_prefix},
        "annotations_sha256": sha256_file(path),
    }
    log.info("planned %d images of split %r into %d shards", len(order), split, len(shards))
    return plan


def load_plan(plan_path: str | os.PathLike) -> dict[str, Any]:
    return read_json_checked(plan_path, "shard plan", "rerun `tbps shards plan`",
                             ("split", "shards", "annotations_sha256", "num_samples"))


# ----------------------------------------------------------------------------- 2. write

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
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a header-only open accepts truncated files; load() decodes everything
            detected = img.format
            if image_format == "keep" and detected in _KEEP_EXTENSIONS:
                return _KEEP_EXTENSIONS[detected], data, False
            rgb = img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise ImageRejected("undecodable_image", f"{type(e).__name__}: {e}") from e
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


def write_shard(
    plan_path: str | os.PathLike,
    shard_index: int,
    annotations: str | os.PathLike,
    raw: str | os.PathLike,
    out: str | os.PathLike,
    *,
    augmented: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = None,
    image_format: str | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    on_sample: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Write planned shard ``shard_index`` to ``out`` (+ sidecar ``out.with_suffix('.json')``).

    ``image_format`` None means ``keep`` (original bytes) without ``image_size`` and
    ``jpg`` with it. Undecodable/unreadable images are rejected and listed in the
    sidecar (accepted + rejected = planned). Both files are written atomically; the
    tar is renamed into place before the sidecar, and :func:`build_manifest` checks
    that they match. Returns the sidecar dict.
    """
    plan_path = Path(plan_path)
    plan = load_plan(plan_path)
    annotations, raw, out = Path(annotations), Path(raw), Path(out)
    shards = plan["shards"]
    if not 0 <= shard_index < len(shards):
        raise input_error(plan_path, f"shard index {shard_index} out of range (the plan has {len(shards)} shards)",
                          f"give --shard-index between 0 and {len(shards) - 1}")
    entry = shards[shard_index]
    if out.name != entry["name"]:
        raise input_error(plan_path, f"shard {shard_index} is named {entry['name']!r}, not {out.name!r}",
                          f"write it to {out.with_name(entry['name'])}")
    if image_format is None:
        image_format = "keep" if image_size is None else "jpg"
    if image_format not in IMAGE_FORMATS:
        raise UserInputError(f"--image-format {image_format!r}: unknown. Fix: use one of {IMAGE_FORMATS}")
    if image_format == "keep" and image_size is not None:
        raise UserInputError("--image-format keep stores the original bytes and cannot resize. "
                             "Fix: use --image-format jpg (or png) with --image-size")
    if not 1 <= jpeg_quality <= 100:
        raise UserInputError(f"--jpeg-quality {jpeg_quality}: must be 1..100. Fix: e.g. {DEFAULT_JPEG_QUALITY}")

    annotations_sha = sha256_file(annotations) if annotations.is_file() else None
    if annotations_sha != plan["annotations_sha256"]:
        _read_annotations(annotations)  # a clear error if the file is missing/broken
        raise input_error(plan_path, f"the plan was made from a different {annotations.name}",
                          "rerun `tbps shards plan` on the current annotations")
    wanted = entry["image_indices"]
    df = _read_annotations(annotations, plan["split"]).filter(pl.col("image_index").is_in(wanted))
    if augmented is not None:
        df = _join_augmented(df, Path(augmented))
    rows = {r["image_index"]: r for r in _image_table(df, annotations).iter_rows(named=True)}
    lost = [i for i in wanted if i not in rows]
    if lost:
        raise input_error(plan_path, f"image_index {lost[0]} of shard {shard_index} is not in {annotations}",
                          "rerun `tbps shards plan`")

    rejected: list[dict[str, Any]] = []
    converted = 0
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as stream, _SampleTar(stream) as sink:
            for image_index in wanted:
                row = rows[image_index]
                try:
                    try:
                        data = (raw / row["image_path"]).read_bytes()
                    except OSError as e:
                        raise ImageRejected("unreadable_file", f"{type(e).__name__}: {e.strerror}") from e
                    ext, image_bytes, was_converted = encode_image(
                        data, image_format=image_format, image_size=image_size, jpeg_quality=jpeg_quality)
                except ImageRejected as r:
                    rejected.append({"image_index": image_index, "image_path": row["image_path"],
                                     "reason": r.reason, "detail": r.detail})
                    log.warning("shard %s: rejected %s (%s: %s)", entry["name"], row["image_path"],
                                r.reason, r.detail)
                else:
                    converted += was_converted
                    captions = row["caption"]
                    sink.write(sample_key(plan["split"], image_index), {
                        ext: image_bytes,
                        "json": _sample_json(row),
                        "txt": "\n".join(captions).encode("utf-8"),
                    })
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
            "image_format": image_format,
            "image_size": list(image_size) if image_size else None,
            "jpeg_quality": jpeg_quality if image_format == "jpg" else None,
            "augmented_sha256": sha256_file(augmented) if augmented is not None else None,
        },
    }
    write_json_atomic(sidecar_path(out), sidecar)
    log.info("wrote %s: %d samples, %d rejected, %d bytes", out, sidecar["samples"], len(rejected), size)
    return sidecar


# ----------------------------------------------------------------------------- 3. manifest

def _rerun_hint(plan_path: Path, index: int, shard: Path) -> str:
    return (f"rerun the shard rule for it (e.g. `snakemake {shard}` or "
            f"`tbps shards write --plan {plan_path} --shard-index {index} --out {shard} ...`)")


def build_manifest(
    plan_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shards_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Check every planned shard (+ sidecar) and write ``out`` (manifest.json) last, atomically.

    Shards are looked up in ``shards_dir`` (default: the manifest's folder). A missing
    shard or sidecar, a sha256 mismatch, a sidecar from another plan or mixed image
    settings raise :class:`UserInputError` naming the file and the rule to rerun.
    """
    plan_path, out = Path(plan_path), Path(out)
    folder = Path(shards_dir) if shards_dir is not None else out.parent
    plan = load_plan(plan_path)
    plan_sha = sha256_file(plan_path)
    entries, reasons, params = [], Counter(), None
    for index, planned in enumerate(plan["shards"]):
        shard = folder / planned["name"]
        side = sidecar_path(shard)
        hint = _rerun_hint(plan_path, index, shard)
        if not shard.is_file():
            raise input_error(shard, "planned shard is missing", hint)
        if not side.is_file():
            raise input_error(side, "the shard's sidecar (counts and sha256) is missing", hint)
        try:
            info = json.loads(side.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise input_error(side, f"not valid JSON ({e})", hint) from e
        if info.get("plan_sha256") != plan_sha:
            raise input_error(side, f"written from another plan than {plan_path}", hint)
        if sha256_file(shard) != info.get("sha256"):
            raise input_error(shard, "sha256 differs from its sidecar (corrupted or overwritten)", hint)
        if info["samples"] + len(info["rejected"]) != len(planned["image_indices"]):
            raise input_error(side, "accepted + rejected differs from the planned images", hint)
        if params is None:
            params = info["params"]
        elif info["params"] != params:
            raise input_error(side, f"written with other image settings ({info['params']} vs {params})", hint)
        reasons.update(r["reason"] for r in info["rejected"])
        entries.append({"name": planned["name"], "samples": info["samples"],
                        "bytes": info["bytes"], "sha256": info["sha256"]})
    num_samples = sum(e["samples"] for e in entries)
    if num_samples == 0:
        raise input_error(folder, f"no image of split {plan['split']!r} could be read (all rejected: "
                          f"{dict(reasons)})", "check the raw images, see the shard sidecars")
    manifest = {
        "split": plan["split"],
        "dataset": plan.get("dataset"),
        "seed": plan.get("seed"),
        "num_shards": len(entries),
        "num_samples": num_samples,
        "num_planned": plan["num_samples"],
        "num_rejected": sum(reasons.values()),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "shards": entries,
        "total_bytes": sum(e["bytes"] for e in entries),
        "params": params,
        "plan_sha256": plan_sha,
    }
    write_json_atomic(out, manifest)
    if manifest["num_rejected"]:
        log.warning("%s: %d of %d images rejected %s (details in the shard sidecars)", out,
                    manifest["num_rejected"], manifest["num_planned"], manifest["rejected_by_reason"])
    return manifest


# ----------------------------------------------------------------------------- all in one

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
    from tbps.progress import progress

    out_dir = Path(out_dir)
    plan = plan_shards(annotations, split, raw, max_samples=max_samples, max_bytes=max_bytes,
                       seed=seed, name_prefix=name_prefix)
    plan_path = out_dir / "plan.json"
    write_json_atomic(plan_path, plan)
    with progress(total=plan["num_samples"], desc=f"shards {split}", unit="img",
              disable=not progress) as bar:
        for index, entry in enumerate(plan["shards"]):
            write_shard(plan_path, index, annotations, raw, out_dir / entry["name"], augmented=augmented,
                        image_size=image_size, image_format=image_format, jpeg_quality=jpeg_quality,
                        on_sample=lambda: bar.update(1))
    return build_manifest(plan_path, out_dir / "manifest.json")
