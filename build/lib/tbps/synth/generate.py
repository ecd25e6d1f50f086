"""Generate a synthetic pedestrian dataset in the exact layout of a published one (spec §2).

The project's embedded default dataset: every test, demo and benchmark runs
on it, and every later stage reads it through the same code path as the real
CUHK-PEDES / ICFG-PEDES / RSTPReid releases, so the folder written here must be
indistinguishable from a release in structure:

- the release's annotation file name, a JSON list with one object per image and
  the release's field names, in its order (CUHK/ICFG: split, captions,
  file_path, processed_tokens, id; RSTPReid: id, img_path, captions, split);
- its id conventions: train ids contiguous from 1 (CUHK) or 0 (ICFG, RSTP), then
  val ids, then test ids continuing the numbering; ICFG has no val split;
- its image folders and file names under ``imgs/`` (CUHK: CUHK01 PNGs and
  CUHK03/Market/train_query/test_query JPEGs; ICFG: ``{split}/{id}/{id}_{n}.jpg``;
  RSTP: flat ``{id}_c{cam}_{frame}.jpg``);
- its quirks: 2 captions per image (1 for ICFG), a few CUHK images with 3-4
  captions and a few CUHK train ids with a single image, RSTPReid sentences
  that often follow a "." with no space.

Sizes: ``ids`` train identities; val and test get ``default_held_out_ids(ids)``
identities each (15 %, at least 2) unless given. Images per identity: 4-6
(CUHK, ICFG) or exactly 5 (RSTP, as in the release).

Determinism: identity ``i``'s attributes come from ``(seed, i)``, image ``k`` of
it from ``(seed, i, k)``; PNG/JPEG settings are fixed and no metadata or
timestamps are written, so a seed reproduces every file byte for byte.

Crash safety: everything is written into a hidden sibling folder, the
annotation file last, and the folder is renamed to ``out`` only when complete.

Ownership: a finished folder holds ``.tbps-synth.json`` with the parameters it was made
from. Only such a folder is regenerated in place; any other non-empty folder (a real
download, a user's files) is refused unless the caller forces it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tbps.datasets import FORMATS, info
from tbps.errors import UserInputError
from tbps.fileio import remove_stale_temps, temp_prefix, write_text_atomic
from tbps.progress import progress
from tbps.synth.captions import CAPTION_STYLES, processed_tokens, write_caption
from tbps.synth.people import person_attributes
from tbps.synth.render import render_photo

log = logging.getLogger(__name__)

DEFAULT_IDS = 400
DEFAULT_SEED = 0
DEFAULT_SIZE = (64, 128)
"""(width, height) in pixels: a pedestrian crop's 1:2 aspect."""
DEFAULT_IMAGES_PER_ID = {"cuhk-pedes": (4, 6), "icfg-pedes": (4, 6), "rstpreid": (5, 5)}
HELD_OUT_FRACTION = 0.15
MAX_IMAGES_PER_ID = 999
"""File names number an identity's images with 3 digits."""
MIN_SIZE = (16, 32)
MARKER_NAME = ".tbps-synth.json"
GENERATOR_VERSION = 1
"""Recorded in the marker; bump it when the same parameters start giving different files."""

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1
"""Fast: the noisy images barely compress anyway."""

_CUHK_FOLDERS = {"CUHK01": 0.3, "CUHK03": 0.25, "Market": 0.25, "train_query": 0.1, "test_query": 0.1}
_CUHK_SINGLE_IMAGE_FRACTION = 0.01
_CUHK_EXTRA_CAPTION_FRACTION = 0.004

# Streams of the seed sequence, one per independent decision, so that changing one (say the
# caption writer) never changes another (the images).
_STREAM_IMAGE, _STREAM_CAPTION, _STREAM_LAYOUT, _STREAM_SINGLES, _STREAM_EXTRA = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class PlannedImage:
    """One image record of the dataset to generate."""

    split: str
    person_id: int
    """The id written to the annotation file."""
    identity: int
    """0-based synthetic identity: seeds its attributes (see ``person_attributes``)."""
    shot: int
    """0-based number of this image among the identity's images."""
    path: str
    """Relative to ``imgs/``."""
    n_captions: int


def default_held_out_ids(ids: int) -> int:
    """Val and test identities when not given: 15 % of the train identities, at least 2."""
    return max(2, round(ids * HELD_OUT_FRACTION))


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


def _split_sizes(fmt: str, ids: int, val_ids: int | None, test_ids: int | None) -> list[tuple[str, int]]:
    splits = info(fmt).splits
    if "val" not in splits and val_ids:
        raise UserInputError(
            f"tbps synth: {info(fmt).title} has no val split, but {val_ids} val identities were requested. "
            "Fix: leave out --val-ids (or pass --val-ids 0) for --format icfg-pedes"
        )
    sizes = {
        "train": ids,
        "val": default_held_out_ids(ids) if val_ids is None else val_ids,
        "test": default_held_out_ids(ids) if test_ids is None else test_ids,
    }
    return [(split, sizes[split]) for split in splits]


def _cuhk_path(rng: np.random.Generator, folder: str, person_id: int, shot: int, sample: int) -> str:
    if folder == "CUHK01":
        return f"CUHK01/{person_id:04d}{shot + 1:03d}.png"
    if folder == "CUHK03":
        return f"CUHK03/{person_id}_{shot + 1}.jpg"
    if folder == "Market":
        cam, seq, frame = int(rng.integers(1, 7)), int(rng.integers(1, 7)), int(rng.integers(0, 1_000_000))
        return f"Market/{person_id:04d}_c{cam}s{seq}_{frame:06d}_{shot + 1:02d}.jpg"
    return f"{folder}/p{person_id}_s{sample}.jpg"


def plan_dataset(
    fmt: str,
    *,
    ids: int,
    seed: int = DEFAULT_SEED,
    images_per_id: int | tuple[int, int] | None = None,
    val_ids: int | None = None,
    test_ids: int | None = None,
) -> list[PlannedImage]:
    """The image records of the dataset, in file order, without rendering anything (cheap)."""
    if fmt not in FORMATS:
        raise UserInputError(f"tbps synth: unknown format {fmt!r}. Fix: use one of {', '.join(FORMATS)}")
    lo, hi = _images_range(fmt, images_per_id)
    for name, value in (("ids", ids), ("val-ids", val_ids), ("test-ids", test_ids)):
        if value is not None and value < (1 if name != "val-ids" else 0):
            least = 1 if name != "val-ids" else 0
            raise UserInputError(f"tbps synth: --{name} is {value}. Fix: pass --{name} {least} or more")
    if seed < 0:
        raise UserInputError(f"tbps synth: --seed is {seed}. Fix: pass a seed >= 0")
    dataset = info(fmt)
    split_sizes = _split_sizes(fmt, ids, val_ids, test_ids)

    singles: set[int] = set()
    if fmt == "cuhk-pedes" and ids >= 2:
        n_single = max(1, round(ids * _CUHK_SINGLE_IMAGE_FRACTION))
        singles = {int(i) for i in _rng(seed, _STREAM_SINGLES).choice(ids, size=n_single, replace=False)}

    plan: list[PlannedImage] = []
    identity = 0
    for split_index, (split, n_ids) in enumerate(split_sizes):
        split_start = len(plan)
        for _ in range(n_ids):
            person_id = dataset.first_train_id + identity
            rng = _rng(seed, _STREAM_LAYOUT, identity)
            n_images = 1 if identity in singles else int(rng.integers(lo, hi + 1))
            folder = list(_CUHK_FOLDERS)[int(rng.choice(len(_CUHK_FOLDERS), p=list(_CUHK_FOLDERS.values())))]
            cams = rng.integers(1, 16, size=n_images)
            frames = np.sort(rng.choice(10_000, size=n_images, replace=False))
            for shot in range(n_images):
                if fmt == "cuhk-pedes":
                    path = _cuhk_path(rng, folder, person_id, shot, sample=len(plan))
                elif fmt == "icfg-pedes":
                    path = f"{split}/{person_id:04d}/{person_id:04d}_{shot + 1:03d}.jpg"
                else:
                    path = f"{person_id:04d}_c{cams[shot]}_{frames[shot]:04d}.jpg"
                plan.append(PlannedImage(split, person_id, identity, shot, path, dataset.captions_per_image))
            identity += 1
        if fmt == "cuhk-pedes" and len(plan) > split_start:
            _add_extra_captions(plan, split_start, _rng(seed, _STREAM_EXTRA, split_index))
    return plan


def _add_extra_captions(plan: list[PlannedImage], start: int, rng: np.random.Generator) -> None:
    """CUHK-PEDES quirk: a few images have 3 or 4 captions (at least one per split)."""
    n_split = len(plan) - start
    n_extra = max(1, round(n_split * _CUHK_EXTRA_CAPTION_FRACTION))
    for offset in rng.choice(n_split, size=n_extra, replace=False):
        item = plan[start + int(offset)]
        plan[start + int(offset)] = PlannedImage(**{**item.__dict__, "n_captions": int(rng.integers(3, 5))})


def _images_range(fmt: str, images_per_id: int | tuple[int, int] | None) -> tuple[int, int]:
    if images_per_id is None:
        return DEFAULT_IMAGES_PER_ID[fmt]
    lo, hi = (images_per_id, images_per_id) if isinstance(images_per_id, int) else images_per_id
    if not 1 <= lo <= hi <= MAX_IMAGES_PER_ID:
        raise UserInputError(
            f"tbps synth: --images-per-id {lo}-{hi} is not a valid range. "
            f"Fix: give K or A-B with 1 <= A <= B <= {MAX_IMAGES_PER_ID}"
        )
    return lo, hi


def _record(fmt: str, item: PlannedImage, captions: list[str]) -> dict:
    """One annotation record with the release's fields in the release's order."""
    if fmt == "rstpreid":
        return {"id": item.person_id, "img_path": item.path, "captions": captions, "split": item.split}
    return {
        "split": item.split,
        "captions": captions,
        "file_path": item.path,
        "processed_tokens": [processed_tokens(c) for c in captions],
        "id": item.person_id,
    }


def read_marker(folder: Path) -> dict | None:
    """The parameters ``folder`` was generated with, or None when ``tbps synth`` did not make it."""
    try:
        marker = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == "tbps synth" else None


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder that ``tbps synth`` did not make (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: exists and is not a folder. Fix: choose another --out")
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    if read_marker(out) is None:
        raise UserInputError(
            f"{out}: the folder is not empty and was not made by `tbps synth` (it has no {MARKER_NAME}), "
            "so it is left as it is: it may be a real dataset or your own files. Fix: generate into another "
            "folder (--out; in the workflow, `datasets: synthetic: raw:` in config/config.yaml), or delete "
            "this folder yourself if it can go (`tbps synth --force` replaces it)"
        )


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished folder into place (replacing ``out`` only if allowed)."""
    _check_out(out, overwrite)
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = out.parent / f"{temp_prefix(out)}synth-old"
            os.replace(out, old)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)


def count_splits(records: list[dict]) -> dict[str, dict[str, int]]:
    """Per-split identities, images and captions of annotation records."""
    counts: dict[str, dict[str, int]] = {}
    person_ids: dict[str, set[int]] = {}
    for record in records:
        c = counts.setdefault(record["split"], {"ids": 0, "images": 0, "captions": 0})
        person_ids.setdefault(record["split"], set()).add(record["id"])
        c["images"] += 1
        c["captions"] += len(record["captions"])
    for split, c in counts.items():
        c["ids"] = len(person_ids[split])
    return counts


def generate_dataset(
    fmt: str,
    out: Path,
    *,
    ids: int = DEFAULT_IDS,
    seed: int = DEFAULT_SEED,
    images_per_id: int | tuple[int, int] | None = None,
    val_ids: int | None = None,
    test_ids: int | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
    overwrite: bool = False,
) -> dict[str, dict[str, int]]:
    """Write a synthetic dataset in ``fmt``'s published layout to ``out``.

    ``fmt`` is one of :data:`tbps.datasets.FORMATS`; ``ids`` is the number of
    train identities; ``images_per_id`` is K or an inclusive range (A, B);
    ``size`` is (width, height). Returns ``{split: {"ids", "images",
    "captions"}}`` for every split of the format. An existing non-empty ``out`` is replaced
    only when this generator made it (see :data:`MARKER_NAME`) or ``overwrite`` is set.
    """
    out = Path(out)
    width, height = size
    if width < MIN_SIZE[0] or height < MIN_SIZE[1]:
        raise UserInputError(
            f"tbps synth: --size {width}x{height} is too small to draw a person. "
            f"Fix: pass at least {MIN_SIZE[0]}x{MIN_SIZE[1]} (width x height)"
        )
    plan = plan_dataset(fmt, ids=ids, seed=seed, images_per_id=images_per_id, val_ids=val_ids, test_ids=test_ids)
    _check_out(out, overwrite)
    if (made := read_marker(out)) is not None:
        log.info("%s was generated by tbps synth (%s): regenerating it in place", out,
                 ", ".join(f"{k} {v}" for k, v in made.items() if k != "generator"))
    style = CAPTION_STYLES[fmt]
    dataset = info(fmt)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # folders of killed runs: a kill -9 cannot clean up after itself
    tmp = out.parent / f"{temp_prefix(out)}synth"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crashed run of a process with the same pid
    tmp.mkdir()
    try:
        records = []
        made_dirs: set[Path] = set()
        people = {}
        for item in progress(plan, desc=f"synth {fmt}", unit="img"):
            person = people.get(item.identity)
            if person is None:
                people.clear()  # images of one identity are consecutive; keep memory flat
                person = people[item.identity] = person_attributes(seed, item.identity)
            photo = render_photo(person, _rng(seed, _STREAM_IMAGE, item.identity, item.shot), size)
            caption_rng = _rng(seed, _STREAM_CAPTION, item.identity, item.shot)
            captions = [write_caption(person, caption_rng, style, photo.hidden) for _ in range(item.n_captions)]
            path = tmp / "imgs" / item.path
            if path.parent not in made_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                made_dirs.add(path.parent)
            if path.suffix == ".png":
                photo.image.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            else:
                photo.image.save(path, format="JPEG", quality=JPEG_QUALITY)
            records.append(_record(fmt, item, captions))
        # The annotation file is written last: a folder without it is visibly unfinished.
        write_text_atomic(tmp / dataset.annotation_files[0], json.dumps(records, ensure_ascii=False) + "\n")
        marker = {"generator": "tbps synth", "generator_version": GENERATOR_VERSION, "format": fmt, "ids": ids,
                  "seed": seed, "images_per_id": images_per_id, "val_ids": val_ids, "test_ids": test_ids,
                  "size": list(size)}
        write_text_atomic(tmp / MARKER_NAME, json.dumps(marker, indent=2) + "\n")
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = count_splits(records)
    result = {split: counts.get(split, {"ids": 0, "images": 0, "captions": 0}) for split in dataset.splits}
    log.info("wrote %s (%s format, seed %d): %s", out, dataset.title, seed,
             "; ".join(f"{s} {c['ids']} ids / {c['images']} images / {c['captions']} captions"
                       for s, c in result.items()))
    return result
