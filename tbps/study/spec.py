"""The study file (config/study.yaml), read and checked.

A study has tables (each a list of row ids in print order) and rows. A row is either a root, which
starts from an experiment preset (``experiment:``), or builds on another row (``inherit:``); its
``set:`` holds overrides in the shape of an experiment file. The paper's numbers a row carries must be
those of :mod:`tbps.published` (the one place the code reads them from), so the file cannot drift from
it unnoticed. Everything a user can get wrong is reported with the file, the row and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tbps.config import load_yaml
from tbps.datasets import DATASET_KEYS
from tbps.errors import UserInputError, input_error
from tbps.published import parse_values, study_numbers

ROW_ID = re.compile(r"^[a-z0-9]+(_[a-z0-9]+)*$")
"""Row and table ids: lowercase letters, digits and single underscores (run names and file names)."""
DECISION = re.compile(r"^D[0-9]+$")
METRICS4 = ("R1", "R5", "R10", "mAP")

_ROW_KEYS = {"name", "experiment", "inherit", "set", "backbone", "base", "decisions", "faithful", "reason", "paper"}
_TABLE_KEYS = {"paper", "title", "anchor", "rows"}
_TOP_KEYS = {"defaults", "tables", "rows"}
_DEFAULT_KEYS = {"backbone"}


@dataclass(frozen=True)
class StudyRow:
    """One row of the study file, as written (``backbone`` and ``base`` resolved along ``inherit``)."""

    id: str
    name: str
    experiment: str | None
    """The preset a root row starts from (None for a row that inherits)."""
    inherit: str | None
    overrides: dict
    backbone: str
    base: str | None
    decisions: tuple[str, ...] = ()
    faithful: bool = True
    reason: str | None = None
    paper: dict[str, str] = field(default_factory=dict)
    """dataset -> "R1/R5/R10/mAP" as printed ("–" = not printed)."""


@dataclass(frozen=True)
class StudyTable:
    key: str
    paper: str
    """Where the paper prints it ("Table 1", ...)."""
    title: str
    anchor: str
    """Its numbers in docs/method.md (``docs/method.md#<anchor>``)."""
    rows: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    path: Path
    tables: dict[str, StudyTable]
    rows: dict[str, StudyRow]

    def chain(self, row_id: str) -> list[StudyRow]:
        """The rows from the root down to ``row_id`` (the order their ``set:`` apply in)."""
        chain = []
        row = self.rows[row_id]
        while True:
            chain.append(row)
            if row.inherit is None:
                return chain[::-1]
            row = self.rows[row.inherit]

    def table_rows(self, tables: list[str] | None = None) -> list[str]:
        """Row ids of ``tables`` (all by default), each once, in table order."""
        keys = list(self.tables) if tables is None else tables
        return list(dict.fromkeys(r for key in keys for r in self.tables[key].rows))

    def base_in_table(self, table: str, row_id: str) -> str | None:
        """The row ``row_id`` is compared with in ``table``: its base, when that row is in the table."""
        base = self.rows[row_id].base
        return base if base is not None and base in self.tables[table].rows else None


def _fail(path: Path, where: str, problem: str, fix: str) -> UserInputError:
    return input_error(path, f"{where}: {problem}", fix)


def _mapping(value, path: Path, where: str, keys: set[str], required: set[str]) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, where, f"expected a mapping, got {value!r}", "write it as `key: value` lines")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise _fail(path, where, f"unknown key(s) {unknown}", f"use only {sorted(keys)}")
    missing = sorted(required - set(value))
    if missing:
        raise _fail(path, where, f"missing key(s) {missing}", "add them (the top of config/study.yaml says what each means)")
    return value


def _text(value, path: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, where, f"expected a non-empty text, got {value!r}", "write it as text")
    return value


def _identifier(value, path: Path, where: str) -> str:
    if not isinstance(value, str) or not ROW_ID.match(value):
        raise _fail(path, where, f"{value!r} is not an id", "use lowercase letters, digits and single underscores")
    return value


def _paper(value, path: Path, where: str) -> dict[str, str]:
    value = _mapping(value, path, where, set(DATASET_KEYS), set())
    for dataset, text in value.items():
        try:
            numbers = parse_values(str(text))
        except ValueError:
            numbers = None
        if numbers is None or numbers[0] is None:
            raise _fail(path, f"{where}.{dataset}", f"{text!r} is not R1/R5/R10/mAP",
                        "write the four numbers as printed, '–' for one the paper does not print")
    return {dataset: str(text) for dataset, text in value.items()}


def _read_row(row_id: str, value, path: Path) -> dict:
    where = f"rows.{row_id}"
    _identifier(row_id, path, "rows")
    value = _mapping(value, path, where, _ROW_KEYS, {"name"})
    if ("experiment" in value) == ("inherit" in value):
        raise _fail(path, where, "needs exactly one of `experiment:` (a root row) and `inherit:`",
                    "start a root row from a preset with `experiment: <name>`, build any other on a row with "
                    "`inherit: <row id>`")
    overrides = value.get("set", {}) or {}
    if not isinstance(overrides, dict):
        raise _fail(path, f"{where}.set", f"expected a mapping of config sections, got {overrides!r}",
                    "write it like an experiment file, e.g. {loss: {mvs_i: true}}")
    decisions = value.get("decisions", []) or []
    if not isinstance(decisions, list) or not all(isinstance(d, str) and DECISION.match(d) for d in decisions):
        raise _fail(path, f"{where}.decisions", f"{decisions!r} is not a list of decisions",
                    "name docs/method.md's decisions, e.g. [D19, D20]")
    faithful = value.get("faithful", True)
    if not isinstance(faithful, bool):
        raise _fail(path, f"{where}.faithful", f"expected true/false, got {faithful!r}", "write true or false")
    reason = value.get("reason")
    if faithful != (reason is None):
        raise _fail(path, where, "`reason:` goes with `faithful: false` (and only with it)",
                    "say why the row cannot be reproduced as the paper describes it, or drop `reason:`")
    return {
        "name": _text(value["name"], path, f"{where}.name"),
        "experiment": _identifier(value["experiment"], path, f"{where}.experiment") if "experiment" in value
        else None,
        "inherit": _identifier(value["inherit"], path, f"{where}.inherit") if "inherit" in value else None,
        "overrides": overrides,
        "backbone": _text(value["backbone"], path, f"{where}.backbone") if "backbone" in value else None,
        "base": value.get("base", "inherit"),
        "decisions": tuple(decisions),
        "faithful": faithful,
        "reason": _text(reason, path, f"{where}.reason") if reason is not None else None,
        "paper": _paper(value.get("paper", {}) or {}, path, f"{where}.paper"),
    }


def _resolve_rows(raw: dict[str, dict], default_backbone: str, path: Path) -> dict[str, StudyRow]:
    """Follow ``inherit`` (no unknown rows, no cycles) to fill in each row's backbone and base."""
    resolved: dict[str, StudyRow] = {}

    def resolve(row_id: str, seen: tuple[str, ...]) -> StudyRow:
        if row_id in resolved:
            return resolved[row_id]
        if row_id in seen:
            raise _fail(path, f"rows.{seen[0]}", f"`inherit:` loops ({' -> '.join((*seen, row_id))})",
                        "make one row of the loop a root (`experiment:`)")
        spec = raw[row_id]
        parent = None
        if spec["inherit"] is not None:
            if spec["inherit"] not in raw:
                raise _fail(path, f"rows.{row_id}.inherit", f"no row {spec['inherit']!r}",
                            "name a row of this file")
            parent = resolve(spec["inherit"], (*seen, row_id))
        base = spec["inherit"] if spec["base"] == "inherit" else spec["base"]
        if base is not None and base not in raw:
            raise _fail(path, f"rows.{row_id}.base", f"no row {base!r}", "name a row of this file, or null for none")
        row = StudyRow(
            id=row_id, name=spec["name"], experiment=spec["experiment"], inherit=spec["inherit"],
            overrides=spec["overrides"],
            backbone=spec["backbone"] or (parent.backbone if parent else default_backbone),
            base=base, decisions=spec["decisions"], faithful=spec["faithful"], reason=spec["reason"],
            paper=spec["paper"],
        )
        resolved[row_id] = row
        return row

    for row_id in raw:
        resolve(row_id, ())
    return resolved


def check_paper_numbers(row: StudyRow, path: Path) -> None:
    """A row's numbers must be :mod:`tbps.published`'s, metric by metric, for every dataset."""
    for dataset in DATASET_KEYS:
        published = study_numbers(row.id, dataset)
        written = row.paper.get(dataset)
        if published is None and written is None:
            continue
        fix = ("copy them from tbps/published.py (the paper's tables as printed), or add the row there first "
               "if it is a published row missing from it")
        if published is None:
            raise _fail(path, f"rows.{row.id}.paper.{dataset}", "tbps/published.py has no numbers for this row",
                        fix)
        if written is None:
            raise _fail(path, f"rows.{row.id}.paper", f"no numbers for {dataset}, but the paper published "
                        f"{_printed(published)} ({published.source})", fix)
        if parse_values(written) != tuple(published.metric(m) for m in METRICS4):
            raise _fail(path, f"rows.{row.id}.paper.{dataset}", f"{written} differs from tbps/published.py's "
                        f"{_printed(published)} ({published.source})", fix)


def _printed(published) -> str:
    return "/".join("–" if published.metric(m) is None else f"{published.metric(m):.2f}" for m in METRICS4)


def load_study(path: str | Path) -> Study:
    """Read and check a study file (keys, ids, references, the paper's numbers)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: study file not found. Fix: point `study: file:` in config/config.yaml "
                             "at the study file (config/study.yaml in the checkout), relative to the working "
                             "directory")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        problem = " ".join(str(e).split())
        raise input_error(path, f"not valid YAML ({problem})", "correct the syntax") from None
    data = _mapping(data, path, "top level", _TOP_KEYS, {"tables", "rows"})
    defaults = _mapping(data.get("defaults", {}) or {}, path, "defaults", _DEFAULT_KEYS, {"backbone"})
    default_backbone = _text(defaults["backbone"], path, "defaults.backbone")
    raw_rows = data["rows"]
    if not isinstance(raw_rows, dict) or not raw_rows:
        raise _fail(path, "rows", "expected a mapping of row id -> row", "define at least one row")
    rows = _resolve_rows({k: _read_row(k, v, path) for k, v in raw_rows.items()}, default_backbone, path)
    raw_tables = data["tables"]
    if not isinstance(raw_tables, dict) or not raw_tables:
        raise _fail(path, "tables", "expected a mapping of tables", "list at least one table")
    tables = {}
    for key, value in raw_tables.items():
        where = f"tables.{key}"
        _identifier(key, path, "tables")
        value = _mapping(value, path, where, _TABLE_KEYS, _TABLE_KEYS)
        ids = value["rows"]
        if not isinstance(ids, list) or not ids:
            raise _fail(path, f"{where}.rows", f"expected a list of row ids, got {ids!r}", "list the table's rows")
        unknown = [r for r in ids if r not in rows]
        if unknown:
            raise _fail(path, f"{where}.rows", f"no row(s) {unknown}", "define them under `rows:` or remove them")
        if len(set(ids)) != len(ids):
            raise _fail(path, f"{where}.rows", "a row is listed twice", "list each row once")
        tables[key] = StudyTable(key, _text(value["paper"], path, f"{where}.paper"),
                                 _text(value["title"], path, f"{where}.title"),
                                 _text(value["anchor"], path, f"{where}.anchor"), tuple(ids))
    used = {r for t in tables.values() for r in t.rows} | {r.inherit for r in rows.values() if r.inherit}
    unused = [r for r in rows if r not in used]
    if unused:
        raise _fail(path, "rows", f"row(s) {unused} are in no table and no row builds on them",
                    "list them in a table, or remove them")
    study = Study(path, tables, rows)
    for row in rows.values():
        check_paper_numbers(row, path)
    return study
