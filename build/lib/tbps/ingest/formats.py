"""Read and validate the three published annotation formats (spec §2.1-§2.2).

Anything wrong with the *structure* of the annotation file is fatal: a
mistyped field or a broken id convention means the file is not the release it
claims to be, and guessing would silently change the dataset. All problems
(up to :data:`MAX_REPORTED`) are reported in one error so the file can be
fixed in one pass. Problems with what the file points to (missing images,
empty captions) are counted skips, handled in :mod:`tbps.ingest.annotations`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tbps.datasets import FORMATS, REAL_DATASETS, SYNTHETIC, DatasetInfo
from tbps.errors import UserInputError, input_error

MAX_REPORTED = 20
"""Fatal problems listed in one error; the rest are counted ("and N more")."""

IMAGES_DIR = "imgs"

_SPLIT_SUGGESTIONS = {
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "training": "train",
    "testing": "test",
}


@dataclass(frozen=True)
class ImageRecord:
    """One validated image record of the annotation file."""

    index: int
    """Position in the JSON list (the record index users see in messages)."""
    split: str
    person_id: int
    path: str
    """Normalised path relative to ``imgs/``, as in the JSON."""
    captions: tuple[str, ...]

    @property
    def image_path(self) -> str:
        """Path relative to the raw folder."""
        return f"{IMAGES_DIR}/{self.path}"


class ProblemCollector:
    """Collects fatal problems of one file and raises them together."""

    def __init__(self, path: Path):
        self.path = path
        self.problems: list[tuple[int | None, str, str]] = []
        self.total = 0

    def add(self, record: int | None, problem: str, fix: str) -> None:
        self.total += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append((record, problem, fix))

    def raise_if_any(self) -> None:
        if not self.total:
            return
        if self.total == 1:
            record, problem, fix = self.problems[0]
            raise input_error(self.path, problem, fix, record)
        lines = [f"{self.path}: {self.total} problems in the annotation file; fix them all, then rerun:"]
        for record, problem, fix in self.problems:
            where = f"record {record}: " if record is not None else ""
            lines.append(f"  {where}{problem}. Fix: {fix}")
        if self.total > len(self.problems):
            lines.append(f"  ... and {self.total - len(self.problems)} more")
        raise UserInputError("\n".join(lines))


# --- finding the annotation file --------------------------------------------------------------


def synthetic_info(fmt: DatasetInfo) -> DatasetInfo:
    """Registry entry for generated data in ``fmt``'s layout: same rules, no published statistics."""
    return dataclasses.replace(
        fmt,
        key=SYNTHETIC,
        title=f"synthetic data ({fmt.title} format)",
        published={},
        download="generate it with `tbps synth` (see `tbps synth --help`)",
    )


def where_to_get(dataset_key: str, raw: Path) -> str:
    """The 'Fix:' text for a missing raw folder or annotation file."""
    check = f"then check it with `tbps check-raw --dataset {dataset_key} --raw {raw}`"
    if dataset_key == SYNTHETIC:
        return (
            f"generate it with `tbps synth` (see `tbps synth --help`) writing to {raw}; "
            f"the folder must hold one annotation file (one of {', '.join(_all_annotation_names())}) "
            f"and {IMAGES_DIR}/; {check}"
        )
    info = REAL_DATASETS[dataset_key]
    return (
        f"download it: {info.download}. Put it at {raw} so that {raw} holds "
        f"{info.annotation_files[0]} and {IMAGES_DIR}/ (or pass --raw with the folder where it is); {check}"
    )


def _all_annotation_names() -> list[str]:
    return [name for key in FORMATS for name in REAL_DATASETS[key].annotation_files]


def find_annotation_file(dataset_key: str, raw: Path) -> tuple[DatasetInfo, str, Path]:
    """Locate the annotation file of ``dataset_key`` in ``raw``; detect the format for synthetic data.

    Returns the registry entry whose rules apply, the format's key and the file's path.
    """
    if dataset_key != SYNTHETIC and dataset_key not in REAL_DATASETS:
        raise UserInputError(
            f"unknown dataset {dataset_key!r}. Fix: use one of {', '.join((*FORMATS, SYNTHETIC))}"
        )
    if not raw.is_dir():
        what = "is not a folder" if raw.exists() else "does not exist"
        raise input_error(raw, f"the raw {dataset_key} folder {what}", where_to_get(dataset_key, raw))
    candidates = [
        (REAL_DATASETS[key], raw / name)
        for key in ((dataset_key,) if dataset_key != SYNTHETIC else FORMATS)
        for name in REAL_DATASETS[key].annotation_files
        if (raw / name).is_file()
    ]
    if not candidates:
        names = (
            _all_annotation_names()
            if dataset_key == SYNTHETIC
            else REAL_DATASETS[dataset_key].annotation_files
        )
        raise input_error(
            raw,
            f"no annotation file found (looked for {' / '.join(names)})",
            where_to_get(dataset_key, raw),
        )
    if len(candidates) > 1:
        found = ", ".join(p.name for _, p in candidates)
        raise input_error(
            raw,
            f"several annotation files found ({found}); it is ambiguous which one describes the images",
            "keep exactly one of them in the folder",
        )
    fmt, path = candidates[0]
    return (synthetic_info(fmt) if dataset_key == SYNTHETIC else fmt), fmt.key, path


# --- reading JSON -----------------------------------------------------------------------------


class _JsonObject(dict):
    """A JSON object that remembers keys which appeared more than once (json keeps only the last)."""

    duplicate_keys: tuple[str, ...] = ()


def _object_hook(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicates: dict[str, None] = {}
        for key, _ in pairs:
            if key in seen:
                duplicates[key] = None
            seen.add(key)
        obj.duplicate_keys = tuple(duplicates)
    return obj


class _HugeInteger:
    """An integer literal too long for Python to convert (over 4300 digits); kept as its digits so
    the record that holds it can be named."""

    def __init__(self, digits: str):
        self.digits = digits

    def __str__(self) -> str:
        return self.digits

    def __len__(self) -> int:
        return len(self.digits)


def _parse_int(digits: str) -> int | _HugeInteger:
    return int(digits) if len(digits) <= 4000 else _HugeInteger(digits)


def read_json(path: Path) -> Any:
    """Parse a JSON file; any failure is a :class:`UserInputError` naming the position."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise input_error(
            path, f"cannot read the file ({e.strerror or e})", "check that it exists and is readable"
        ) from None
    try:
        # utf-8-sig: a byte-order mark left by a Windows editor is harmless, so accept it.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise input_error(
            path,
            f"not UTF-8 text (invalid byte at offset {e.start})",
            "re-download the file; annotation files are UTF-8 JSON",
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_object_hook, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise input_error(
            path,
            f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}",
            "the file is truncated or was edited by hand; re-download it or repair the JSON at that position",
        ) from None
    except RecursionError:
        raise input_error(path, "JSON nested too deeply", "re-download the file") from None
    except ValueError as e:  # e.g. an integer literal longer than Python converts (4300 digits)
        raise input_error(path, f"a value cannot be read ({e})",
                          "the file was edited by hand or is not the release; re-download it") from None


# --- validating records -----------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if value is None:
        return "null"
    if isinstance(value, _HugeInteger):
        return f"an integer of {len(value)} digits"
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    for cls, name in names.items():
        if isinstance(value, cls):
            shown = json.dumps(value, ensure_ascii=False)
            return f"{name} ({shown[:40]}{'...' if len(shown) > 40 else ''})" if cls is not dict else name
    return type(value).__name__


INT64 = (-(2**63), 2**63 - 1)
"""Person ids are stored as 64-bit integers (Parquet int64)."""


def unicode_problem(text: str) -> str | None:
    """Why a string cannot be stored as UTF-8 (JSON allows lone surrogates such as "\\ud800"), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"contains a lone surrogate {text[e.start]!r} at character {e.start}, which is not valid Unicode"
    return None


def normalise_image_path(raw_path: str) -> tuple[str | None, str | None]:
    """Return ``(normalised path, None)`` or ``(None, problem)`` for a path relative to ``imgs/``.

    The problem reads after the field name: "'file_path' is empty".
    """
    if not raw_path.strip():
        return None, "is empty"
    if "\x00" in raw_path:
        return None, "contains a NUL character"
    surrogate = unicode_problem(raw_path)
    if surrogate:
        return None, f"{surrogate}"
    if "\\" in raw_path:
        return None, f"is {raw_path!r}, which contains a backslash (paths in annotation files use '/')"
    path = PurePosixPath(raw_path)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", raw_path):
        return None, f"is {raw_path!r}, an absolute path"
    if ".." in path.parts:
        return (
            None,
            f"is {raw_path!r}, which has a '..' component and would point outside the {IMAGES_DIR}/ folder",
        )
    normalised = path.as_posix()
    if normalised == ".":
        return None, "is empty"
    return normalised, None


def _split_fix(info: DatasetInfo, split: str) -> str:
    allowed = ", ".join(repr(s) for s in info.splits)
    suggestion = _SPLIT_SUGGESTIONS.get(split.strip().lower(), split.strip().lower())
    if suggestion == "val" and "val" not in info.splits:
        return f"{info.title} has no val split (its test split pools query and gallery); use one of {allowed}"
    if suggestion in info.splits:
        return f"write {suggestion!r}; {info.title} splits are {allowed}"
    return f"use one of {allowed}"


def _validate_record(
    info: DatasetInfo, index: int, record: Any, problems: ProblemCollector
) -> ImageRecord | None:
    """Check one record; report every problem found in it. Returns None if it has any."""
    if not isinstance(record, dict):
        problems.add(
            index,
            f"the record is {_json_type(record)}, not an object",
            f"each element of the list must be an object with the {info.title} fields "
            f"{_required_fields(info)}",
        )
        return None
    ok = True

    def bad(problem: str, fix: str) -> None:
        nonlocal ok
        ok = False
        problems.add(index, problem, fix)

    for key in getattr(record, "duplicate_keys", ()):
        bad(f"field {key!r} appears more than once", f"keep one {key!r} field in the record")

    missing = [f for f in _required_fields(info) if f not in record]
    for field in missing:
        fix = f"add the {field!r} field ({_FIELD_TYPES[_field_kind(info, field)]})"
        if field == info.path_field:
            other = next((f for f in ("file_path", "img_path") if f != field and f in record), None)
            if other:
                fix = (
                    f"the record has {other!r} instead of {field!r}: is this really a {info.title} file? "
                    f"Check --dataset, or rename the field to {field!r}"
                )
        bad(f"required field {field!r} is missing", fix)

    person_id = record.get("id")
    if isinstance(person_id, _HugeInteger) or (
        isinstance(person_id, int) and not isinstance(person_id, bool) and not INT64[0] <= person_id <= INT64[1]
    ):
        shown = str(person_id)
        bad(
            f"'id' is {shown[:30]}{f'... ({len(shown)} digits)' if len(shown) > 30 else ''}, beyond the 64-bit "
            "integer range the tables store",
            "use the original annotation file; person ids are small integers",
        )
    elif "id" in record and (isinstance(person_id, bool) or not isinstance(person_id, int)):
        bad(
            f"'id' is {_json_type(person_id)}, not an integer",
            'write the person id as a JSON integer, e.g. "id": 12',
        )
    elif isinstance(person_id, int) and person_id < min_id(info):
        base = "1-based" if min_id(info) == 1 else "non-negative"
        bad(
            f"'id' is {person_id}, but {info.title} person ids are {base} (>= {min_id(info)})",
            "use the original annotation file; ids must follow the dataset's numbering",
        )

    captions = record.get("captions")
    if "captions" in record:
        if not isinstance(captions, list):
            bad(
                f"'captions' is {_json_type(captions)}, not a list of strings",
                'write e.g. "captions": ["A man in ..."]',
            )
        else:
            for j, caption in enumerate(captions):
                if not isinstance(caption, str):
                    bad(
                        f"'captions'[{j}] is {_json_type(caption)}, not a string",
                        "every caption must be a JSON string",
                    )
                elif unicode_problem(caption):
                    bad(f"'captions'[{j}] {unicode_problem(caption)}", "re-download the file or correct the caption")

    path_value = record.get(info.path_field)
    path = None
    if info.path_field in record:
        if not isinstance(path_value, str):
            bad(
                f"{info.path_field!r} is {_json_type(path_value)}, not a string",
                f'write the image path relative to {IMAGES_DIR}/ as a string, e.g. "{_example_path(info)}"',
            )
        else:
            path, problem = normalise_image_path(path_value)
            if problem:
                bad(
                    f"{info.path_field!r} {problem}",
                    f'give a path relative to the {IMAGES_DIR}/ folder, e.g. "{_example_path(info)}"',
                )

    split = record.get("split")
    if "split" in record:
        if not isinstance(split, str):
            bad(
                f"'split' is {_json_type(split)}, not a string",
                f"use one of {', '.join(map(repr, info.splits))}",
            )
        elif split not in info.splits:
            bad(f"unknown split {split!r}", _split_fix(info, split))

    if not ok or path is None:
        return None
    return ImageRecord(index=index, split=split, person_id=person_id, path=path, captions=tuple(captions))


_FIELD_TYPES = {
    "id": "an integer person id",
    "captions": "a list of caption strings",
    "path": "the image path relative to imgs/, a string",
    "split": "a string: the split name",
}


def _field_kind(info: DatasetInfo, field: str) -> str:
    return "path" if field == info.path_field else field


def _required_fields(info: DatasetInfo) -> tuple[str, ...]:
    return ("id", "captions", info.path_field, "split")


def _example_path(info: DatasetInfo) -> str:
    return {"file_path": "CUHK01/0001001.png", "img_path": "0000_c14_0031.jpg"}[info.path_field]


def min_id(info: DatasetInfo) -> int:
    """Smallest valid person id in any split (CUHK-PEDES is 1-based, the others start at 0)."""
    return info.first_train_id


def _check_train_ids(info: DatasetInfo, first_record: dict[int, int], problems: ProblemCollector) -> None:
    """Train ids must be contiguous from the dataset's first id (spec §2.2).

    ``first_record`` maps each train id to the first record that has it.
    """
    ids = sorted(first_record)
    if not ids:
        return
    fix = (
        f"{info.title} train ids are contiguous from {info.first_train_id}; use the original annotation file, "
        "or renumber the train ids without gaps"
    )
    if ids[0] != info.first_train_id:
        problems.add(
            first_record[ids[0]],
            f"the smallest train id is {ids[0]}, not {info.first_train_id}",
            fix,
        )
    for prev, cur in zip(ids, ids[1:], strict=False):
        if cur != prev + 1:
            gap = f"{prev + 1}" if cur == prev + 2 else f"{prev + 1}..{cur - 1}"
            problems.add(
                first_record[cur],
                f"train ids jump from {prev} to {cur} (no train image has id {gap})",
                fix,
            )


def parse_records(info: DatasetInfo, path: Path, data: Any) -> list[ImageRecord]:
    """Validate the parsed JSON of an annotation file; raise one error listing every problem."""
    problems = ProblemCollector(path)
    if not isinstance(data, list):
        raise input_error(
            path,
            f"the top level is {_json_type(data)}, not a list of image records",
            f"use the original {info.annotation_files[0]} of the {info.title} release "
            "(a JSON list with one object per image)",
        )
    if not data:
        raise input_error(
            path, "the file holds no image records (an empty list)", "re-download the annotation file"
        )
    records: list[ImageRecord] = []
    first_use: dict[str, int] = {}
    # Gathered from every record with a usable id and split, even one with other problems, so a
    # broken record does not also show up as a spurious gap in the train ids.
    first_train_record: dict[int, int] = {}
    for index, raw_record in enumerate(data):
        if isinstance(raw_record, dict) and raw_record.get("split") == "train":
            person_id = raw_record.get("id")
            if isinstance(person_id, int) and not isinstance(person_id, bool) and min_id(info) <= person_id <= INT64[1]:
                first_train_record.setdefault(person_id, index)
        record = _validate_record(info, index, raw_record, problems)
        if record is None:
            continue
        if record.path in first_use:
            problems.add(
                index,
                f"image path {record.path!r} is already used by record {first_use[record.path]}",
                "each image must appear in exactly one record: remove the duplicate or correct its path",
            )
            continue
        first_use[record.path] = index
        records.append(record)
    _check_train_ids(info, first_train_record, problems)
    problems.raise_if_any()
    return records
