"""Raw dataset folder -> normalised caption table (``tbps prepare``), and the download check (``tbps check-raw``).

Structural problems in the annotation file are fatal (:mod:`tbps.ingest.formats`).
Problems with the data it points to are counted skips: a missing or unreadable
image, or one whose symbolic link leads outside the raw folder
(:mod:`tbps.ingest.image_files`), rejects its record; an empty caption, or one
that caption cleaning empties (only punctuation), is dropped; and an image left
with no caption is rejected. Every skip is a row of the rejects table, and the
summary proves accepted + rejected = input for images and for captions.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from tbps.data.captions import clean_caption
from tbps.datasets import DatasetInfo
from tbps.errors import UserInputError, input_error
from tbps.fileio import sha256_file, write_json_atomic, write_parquet_atomic
from tbps.image_decode import upright_size
from tbps.ingest.formats import (
    IMAGES_DIR,
    ImageRecord,
    find_annotation_file,
    parse_records,
    read_json,
    where_to_get,
)
from tbps.ingest.image_files import (
    MISSING,
    OUTSIDE_RAW_ROOT,
    UNREADABLE,
    RefusedImagePath,
    allowed_roots,
    raw_image_file,
)
from tbps.progress import progress

log = logging.getLogger(__name__)

DEFAULT_MAX_REJECT_FRACTION = 0.01
"""Complete releases have no rejects; more than 1 % of images rejected means a broken download."""

MISSING_IMAGE = MISSING
UNREADABLE_IMAGE = UNREADABLE
EMPTY_CAPTION = "empty_caption"
EMPTY_AFTER_CLEANING = "empty_after_cleaning"
"""Only characters that caption cleaning removes (e.g. "..."): it would be an empty query."""
NO_CAPTIONS = "no_captions"
REJECT_REASONS = (MISSING_IMAGE, OUTSIDE_RAW_ROOT, UNREADABLE_IMAGE, EMPTY_CAPTION, EMPTY_AFTER_CLEANING, NO_CAPTIONS)

ANNOTATION_SCHEMA = pa.schema(
    [
        ("caption_id", pa.int64()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("person_id", pa.int64()),
        ("train_id", pa.int64()),
        ("image_index", pa.int64()),
        ("image_path", pa.string()),
        ("caption_index", pa.int32()),
        ("caption", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
)
REJECT_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("record_index", pa.int64()),
        ("caption_index", pa.int32()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


class LoadedRecords(NamedTuple):
    info: DatasetInfo
    """Rules that apply (for synthetic data: the detected format's, with key 'synthetic')."""
    format: str
    """Which of the published formats the file is in."""
    annotation_file: Path
    records: list[ImageRecord]


def load_records(dataset_key: str, raw_dir: str | os.PathLike) -> LoadedRecords:
    """Find, parse and validate the annotation file of a raw folder (fatal problems raise)."""
    info, fmt, path = find_annotation_file(dataset_key, Path(raw_dir))
    return LoadedRecords(info, fmt, path, parse_records(info, path, read_json(path)))


# --- images -----------------------------------------------------------------------------------


class ImageProblem(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_image_size(raw_dir: Path, image_path: str, roots: tuple[Path, ...] | None = None) -> tuple[int, int]:
    """(width, height) as displayed, from the image header; :class:`ImageProblem` if it cannot be used.

    The path must resolve inside the raw folder (:mod:`tbps.ingest.image_files`).
    """
    try:
        path = raw_image_file(raw_dir, image_path, roots)
    except RefusedImagePath as refused:
        raise ImageProblem(refused.reason, refused.detail) from None
    try:
        # Image.open reads only the header; pixel data is decoded later, when shards are written.
        with Image.open(path) as image:
            width, height = upright_size(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise ImageProblem(UNREADABLE_IMAGE, f"not a readable image ({type(e).__name__}: {e})") from None
    if width <= 0 or height <= 0:
        raise ImageProblem(UNREADABLE_IMAGE, f"image header gives size {width}x{height}")
    return width, height


# --- screening: counted skips -----------------------------------------------------------------


@dataclass(frozen=True)
class Reject:
    record_index: int
    caption_index: int | None
    """None when the whole image record is rejected."""
    reason: str
    detail: str


@dataclass(frozen=True)
class AcceptedImage:
    record: ImageRecord
    caption_indices: tuple[int, ...]
    """Indices (in the record's captions list) of the captions kept."""
    width: int
    height: int


@dataclass
class Screening:
    accepted: list[AcceptedImage] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    input_images: int = 0
    input_captions: int = 0
    images_rejected: Counter = field(default_factory=Counter)
    captions_rejected: Counter = field(default_factory=Counter)
    """Captions of a rejected image count under the image's reason."""

    @property
    def accepted_captions(self) -> int:
        return sum(len(a.caption_indices) for a in self.accepted)

    def check_balance(self) -> None:
        """accepted + rejected must equal input; a mismatch is a bug in this module, not bad input."""
        images = len(self.accepted) + sum(self.images_rejected.values())
        captions = self.accepted_captions + sum(self.captions_rejected.values())
        if images != self.input_images or captions != self.input_captions:
            raise RuntimeError(
                f"internal error: accounting mismatch (images {images} != {self.input_images} "
                f"or captions {captions} != {self.input_captions})"
            )


def caption_problem(caption: str) -> str | None:
    """Why a caption cannot be used (a reject reason), or None.

    A caption that cleaning (:func:`tbps.data.captions.clean_caption`, what training and
    evaluation apply) turns into nothing, e.g. "..." or "!!", would be an empty query.
    """
    if not caption.strip():
        return EMPTY_CAPTION
    if not clean_caption(caption):
        return EMPTY_AFTER_CLEANING
    return None


def screen_records(records: Iterable[ImageRecord], raw_dir: Path, total: int | None = None) -> Screening:
    """Read every image header and drop what cannot be used, recording why."""
    result = Screening()
    roots = allowed_roots(raw_dir)
    for record in progress(records, total=total, desc="reading image headers", unit="img"):
        result.input_images += 1
        result.input_captions += len(record.captions)
        try:
            width, height = read_image_size(raw_dir, record.image_path, roots)
        except ImageProblem as problem:
            result.rejects.append(
                Reject(record.index, None, problem.reason, f"{record.image_path}: {problem.detail}")
            )
            result.images_rejected[problem.reason] += 1
            result.captions_rejected[problem.reason] += len(record.captions)
            continue
        kept = []
        for j, caption in enumerate(record.captions):
            reason = caption_problem(caption)
            if reason is None:
                kept.append(j)
            else:
                result.rejects.append(
                    Reject(record.index, j, reason, f"{record.image_path}: caption {j} is {caption!r}")
                )
                result.captions_rejected[reason] += 1
        if not kept:
            result.rejects.append(
                Reject(
                    record.index,
                    None,
                    NO_CAPTIONS,
                    f"{record.image_path}: no usable caption among {len(record.captions)}",
                )
            )
            result.images_rejected[NO_CAPTIONS] += 1
            continue
        result.accepted.append(AcceptedImage(record, tuple(kept), width, height))
    result.check_balance()
    return result


def check_reject_fraction(
    screening: Screening, annotation_file: Path, dataset_key: str, raw_dir: Path, max_reject_fraction: float
) -> None:
    """Fail when too many images were rejected: a half-downloaded folder must not train silently."""
    rejected = sum(screening.images_rejected.values())
    fraction = rejected / screening.input_images
    if fraction <= max_reject_fraction and screening.accepted:
        return
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(screening.images_rejected.items()))
    image_rejects = [r for r in screening.rejects if r.caption_index is None]
    examples = "; ".join(f"record {r.record_index}: {r.detail}" for r in image_rejects[:3])
    if len(image_rejects) > 3:
        examples += "; ..."
    limit = (
        "no image is usable"
        if not screening.accepted
        else f"more than the allowed fraction {max_reject_fraction:g}"
    )
    raise input_error(
        annotation_file,
        f"{rejected} of {screening.input_images} images ({fraction:.2%}) were rejected ({reasons}): {limit}; "
        f"e.g. {examples}",
        f"complete the download (check it with `tbps check-raw --dataset {dataset_key} --raw {raw_dir}`), "
        "or pass --max-reject-fraction with a larger value to use only what is there",
    )


# --- counts -----------------------------------------------------------------------------------


def split_counts(
    rows: Iterable[tuple[str, int, int]], order: Sequence[str] = ()
) -> dict[str, dict[str, int]]:
    """Per-split {ids, images, captions} from (split, person_id, n_captions) per image.

    Splits come in ``order`` (e.g. train, val, test), then any others by name.
    """
    ids: dict[str, set[int]] = {}
    counts: dict[str, dict[str, int]] = {}
    for split, person_id, n_captions in rows:
        c = counts.setdefault(split, {"ids": 0, "images": 0, "captions": 0})
        ids.setdefault(split, set()).add(person_id)
        c["images"] += 1
        c["captions"] += n_captions
    for split, c in counts.items():
        c["ids"] = len(ids[split])
    ranked = sorted(counts, key=lambda s: (order.index(s) if s in order else len(order), s))
    return {split: counts[split] for split in ranked}


def differences_from_published(info: DatasetInfo, counts: dict[str, dict[str, int]]) -> list[str]:
    """One line per split whose counts differ from the published statistics (spec §2.2)."""
    diffs = []
    for split, stats in info.published.items():
        have = counts.get(split, {"ids": 0, "images": 0, "captions": 0})
        published = (stats.ids, stats.images, stats.captions)
        if (have["ids"], have["images"], have["captions"]) != published:
            diffs.append(
                f"{split}: {have['ids']} ids / {have['images']} images / {have['captions']} captions, "
                f"published {' / '.join(map(str, published))}"
            )
    return diffs


def ids_in_several_splits(records: Iterable[ImageRecord]) -> int:
    splits: dict[int, set[str]] = {}
    for r in records:
        splits.setdefault(r.person_id, set()).add(r.split)
    return sum(len(s) > 1 for s in splits.values())


# --- tables -----------------------------------------------------------------------------------


def build_annotation_table(dataset_key: str, accepted: Iterable[AcceptedImage]) -> pa.Table:
    """One row per kept (image, caption), in source order; train ids remapped by first appearance."""
    columns: dict[str, list] = {name: [] for name in ANNOTATION_SCHEMA.names}
    train_ids: dict[int, int] = {}
    for image in accepted:
        r = image.record
        train_id = train_ids.setdefault(r.person_id, len(train_ids)) if r.split == "train" else None
        for j in image.caption_indices:
            columns["caption_id"].append(len(columns["caption_id"]))
            columns["dataset"].append(dataset_key)
            columns["split"].append(r.split)
            columns["person_id"].append(r.person_id)
            columns["train_id"].append(train_id)
            columns["image_index"].append(r.index)
            columns["image_path"].append(r.image_path)
            columns["caption_index"].append(j)
            columns["caption"].append(r.captions[j])
            columns["width"].append(image.width)
            columns["height"].append(image.height)
    return pa.Table.from_pydict(columns, schema=ANNOTATION_SCHEMA)


def build_rejects_table(source_file: str, rejects: Iterable[Reject]) -> pa.Table:
    rejects = list(rejects)
    return pa.Table.from_pydict(
        {
            "source_file": [source_file] * len(rejects),
            "record_index": [r.record_index for r in rejects],
            "caption_index": [r.caption_index for r in rejects],
            "reason": [r.reason for r in rejects],
            "detail": [r.detail for r in rejects],
        },
        schema=REJECT_SCHEMA,
    )


# --- prepare ----------------------------------------------------------------------------------


def prepare(
    dataset: str,
    raw: str | os.PathLike,
    out: str | os.PathLike,
    rejects: str | os.PathLike | None = None,
    summary: str | os.PathLike | None = None,
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
) -> dict:
    """Write the annotations table (and optionally the rejects table and summary JSON); return the summary.

    Nothing is written when the input has a fatal problem or too many images are rejected.
    """
    if not 0.0 <= max_reject_fraction <= 1.0:
        raise UserInputError(
            f"--max-reject-fraction is {max_reject_fraction}. Fix: give a value between 0 and 1"
        )
    raw = Path(raw)
    loaded = load_records(dataset, raw)
    info, _, annotation_file, records = loaded
    images_dir = raw / IMAGES_DIR
    if not images_dir.is_dir():
        raise input_error(images_dir, "the images folder does not exist", where_to_get(dataset, raw))

    screening = screen_records(records, raw, total=len(records))
    check_reject_fraction(screening, annotation_file, dataset, raw, max_reject_fraction)

    table = build_annotation_table(info.key, screening.accepted)
    result = _summary(loaded, screening, max_reject_fraction)
    _log_summary(info, result)

    if rejects is not None:
        write_parquet_atomic(build_rejects_table(annotation_file.name, screening.rejects), rejects)
    if summary is not None:
        write_json_atomic(summary, result)
    # Written last: its presence means the stage finished.
    write_parquet_atomic(table, out)
    return result


def _summary(loaded: LoadedRecords, screening: Screening, max_reject_fraction: float) -> dict:
    info, fmt, annotation_file, records = loaded
    accepted_counts = split_counts(
        ((a.record.split, a.record.person_id, len(a.caption_indices)) for a in screening.accepted),
        info.splits,
    )
    captions_per_image = Counter(len(r.captions) for r in records)
    return {
        "dataset": info.key,
        "format": fmt,
        "annotation_file": annotation_file.name,
        "annotation_sha256": sha256_file(annotation_file),
        "input": {
            "images": screening.input_images,
            "captions": screening.input_captions,
            "splits": split_counts(((r.split, r.person_id, len(r.captions)) for r in records), info.splits),
            "captions_per_image": {str(n): captions_per_image[n] for n in sorted(captions_per_image)},
            "ids_in_several_splits": ids_in_several_splits(records),
        },
        "accepted": {
            "images": len(screening.accepted),
            "captions": screening.accepted_captions,
            "splits": accepted_counts,
        },
        "rejected": {
            "images": {"total": sum(screening.images_rejected.values()), **dict(screening.images_rejected)},
            "captions": {
                "total": sum(screening.captions_rejected.values()),
                **dict(screening.captions_rejected),
            },
        },
        "max_reject_fraction": max_reject_fraction,
        "published": {s: vars(p) for s, p in info.published.items()} or None,
        "differences_from_published": differences_from_published(info, accepted_counts),
    }


def _log_summary(info: DatasetInfo, result: dict) -> None:
    log.info("%s: %s", info.title, result["annotation_file"])
    for split, c in result["accepted"]["splits"].items():
        published = info.published.get(split)
        ref = (
            f" (published: {published.ids} / {published.images} / {published.captions})" if published else ""
        )
        log.info("  %-5s %6d ids %7d images %7d captions%s", split, c["ids"], c["images"], c["captions"], ref)
    rejected = result["rejected"]
    log.info(
        "  input %d images / %d captions; accepted %d / %d; rejected images %s, captions %s",
        result["input"]["images"],
        result["input"]["captions"],
        result["accepted"]["images"],
        result["accepted"]["captions"],
        _reasons(rejected["images"]),
        _reasons(rejected["captions"]),
    )
    if result["differences_from_published"]:
        log.warning(
            "%s counts differ from the published statistics (expected for a partial download, "
            "otherwise check the download): %s",
            info.title,
            "; ".join(result["differences_from_published"]),
        )
    if result["input"]["ids_in_several_splits"]:
        log.warning("%d person ids appear in more than one split", result["input"]["ids_in_several_splits"])


def _reasons(counts: dict) -> str:
    parts = [f"{n} {reason}" for reason, n in sorted(counts.items()) if reason != "total"]
    return f"{counts['total']} ({', '.join(parts)})" if parts else "0"


# --- check-raw --------------------------------------------------------------------------------


def check_raw(dataset: str, raw: str | os.PathLike) -> int:
    """Report whether a downloaded folder is complete; return 0 if so, 1 if there are problems.

    A missing folder/file or a broken annotation file raises :class:`UserInputError` with the fix.
    """
    raw = Path(raw)
    print(f"Checking {dataset} in {raw}")
    info, _, annotation_file, records = load_records(dataset, raw)
    problems: list[str] = []
    n_captions = sum(len(r.captions) for r in records)
    print(
        f"  ok       {annotation_file.name}: valid JSON, {len(records)} image records, {n_captions} captions"
    )

    images_dir = raw / IMAGES_DIR
    present: list[ImageRecord] = []
    missing: list[ImageRecord] = []
    outside: list[ImageRecord] = []
    if not images_dir.is_dir():
        problems.append(f"the images folder {images_dir} does not exist")
        print(f"  PROBLEM  {IMAGES_DIR}/ folder not found at {images_dir}")
    else:
        roots = allowed_roots(raw)
        for r in progress(records, desc="looking for images", unit="img"):
            try:
                raw_image_file(raw, r.image_path, roots)
            except RefusedImagePath as refused:
                (outside if refused.reason == OUTSIDE_RAW_ROOT else missing).append(r)
            else:
                present.append(r)
        if outside:
            examples = ", ".join(r.image_path for r in outside[:3]) + (", ..." if len(outside) > 3 else "")
            problems.append(f"{len(outside)} referenced images are symbolic links that lead outside the raw folder")
            print(f"  PROBLEM  {len(outside)} images link outside {raw} and its {IMAGES_DIR}/ folder "
                  f"(tbps prepare rejects them as {OUTSIDE_RAW_ROOT}): {examples}")
        if missing:
            examples = ", ".join(r.image_path for r in missing[:3]) + (", ..." if len(missing) > 3 else "")
            problems.append(f"{len(missing)} of {len(records)} referenced images are missing")
            print(f"  PROBLEM  {len(present)} of {len(records)} referenced images exist; missing: {examples}")
        elif not outside:
            print(f"  ok       all {len(records)} referenced images exist under {IMAGES_DIR}/")

    empty = Counter(caption_problem(c) for r in records for c in r.captions)
    if empty[EMPTY_CAPTION] or empty[EMPTY_AFTER_CLEANING]:
        print(
            f"  note     {empty[EMPTY_CAPTION]} empty captions and {empty[EMPTY_AFTER_CLEANING]} with nothing left "
            "after cleaning (only punctuation); tbps prepare drops them and lists them in the rejects table"
        )

    counts = split_counts(((r.split, r.person_id, len(r.captions)) for r in records), info.splits)
    images_present = Counter(r.split for r in present)
    print(
        f"  {'split':<6}{'ids':>8}{'images':>9}{'present':>9}{'captions':>10}   published ids/images/captions"
    )
    for split in [*counts, *(s for s in info.published if s not in counts)]:
        c = counts.get(split, {"ids": 0, "images": 0, "captions": 0})
        p = info.published.get(split)
        ref = f"{p.ids}/{p.images}/{p.captions}" if p else "-"
        print(
            f"  {split:<6}{c['ids']:>8}{c['images']:>9}{images_present[split]:>9}{c['captions']:>10}   {ref}"
        )
    diffs = differences_from_published(info, counts)
    if diffs:
        problems.append("the annotation file's counts differ from the published release")
        print(f"  PROBLEM  counts differ from the published {info.title} release: {'; '.join(diffs)}")

    if problems:
        print(f"RESULT: {len(problems)} problem(s): " + "; ".join(problems) + ".")
        print(f"To fix: {where_to_get(dataset, raw)}.")
        if missing:
            print(
                "To use the images that are there anyway, pass --max-reject-fraction to tbps prepare "
                "(it rejects records whose image is missing and lists them in the rejects table)."
            )
        elif diffs:
            print("tbps prepare accepts this folder as it is (it warns that the counts differ).")
        return 1
    print(
        f"RESULT: OK. Next: tbps prepare --dataset {dataset} --raw {raw} --out results/{dataset}/prepared/annotations.parquet"
    )
    return 0
