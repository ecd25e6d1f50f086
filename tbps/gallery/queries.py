"""The descriptions a search answers: given on the command line, read from a file, or drawn from an index.

A queries file is either text, one description per line (blank lines and lines starting with
``#`` are ignored), or JSON (a file ending in ``.json``): a list whose items are descriptions
or objects ``{"query": "...", "person_id": 12}``. A person id marks which gallery images are
correct for that description (green and red frames on the results page).

An index built from a shard manifest holds every image's captions and person id;
``--captions N`` draws N of them (seeded, one per person) as descriptions with known answers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tbps.data.captions import clean_caption
from tbps.errors import UserInputError, input_error


@dataclass(frozen=True)
class Query:
    text: str
    person_id: int | None = None


_JSON_FIX = 'write a list of descriptions, or of {"query": "...", "person_id": 12} objects'


def read_queries_file(path: str | os.PathLike) -> list[Query]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise input_error(path, "queries file not found", "check the path given to --queries") from None
    except UnicodeDecodeError as e:
        raise input_error(path, f"not UTF-8 text ({e})", "save it as UTF-8") from None
    except OSError as e:
        raise input_error(path, f"cannot be read ({e.strerror or e})", "check the path given to --queries") from None
    if path.suffix.lower() != ".json":
        return [Query(line.strip()) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise input_error(path, f"not valid JSON ({e})", _JSON_FIX) from None
    if not isinstance(data, list):
        raise input_error(path, f"holds a JSON {type(data).__name__}, not a list", _JSON_FIX)
    queries = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            queries.append(Query(item))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("query"), str):
            raise input_error(path, f"item {item!r} is neither a description nor an object with a 'query' string",
                              _JSON_FIX, record=i)
        person_id = item.get("person_id")
        if person_id is not None and (isinstance(person_id, bool) or not isinstance(person_id, int)):
            raise input_error(path, f"person_id {person_id!r} is not an integer", _JSON_FIX, record=i)
        queries.append(Query(item["query"], person_id))
    return queries


def captions_from_index(entries, count: int, seed: int = 0) -> list[Query]:
    """``count`` captions of a manifest index, one per person (seeded), with their person ids."""
    if count == 0:
        return []
    if entries.height == 0 or entries["person_id"].null_count() > 0:
        raise UserInputError(f"--captions {count}: this index has no captions and person ids (it was not built from "
                             "a shard manifest). Fix: give descriptions instead (DESCRIPTION ... or --queries FILE)")
    first_per_person = entries.with_row_index("row").filter(entries["captions"].list.len() > 0) \
        .group_by("person_id", maintain_order=True).first().sort("person_id")
    rng = np.random.default_rng(seed)
    picked = rng.choice(first_per_person.height, size=min(count, first_per_person.height), replace=False)
    return [Query(first_per_person["captions"][int(i)][0], int(first_per_person["person_id"][int(i)]))
            for i in sorted(picked)]


def check_queries(queries: list[Query]) -> None:
    """Every description must keep a word after caption cleaning: an empty query ranks nothing."""
    if not queries:
        raise UserInputError("no description given. Fix: pass at least one, e.g. \"a man in a black jacket\" "
                             "(or --queries FILE)")
    for i, query in enumerate(queries, start=1):
        if not clean_caption(query.text):
            raise UserInputError(
                f"description {i} ({query.text!r}) is empty once punctuation is removed (captions are cleaned as in "
                "training). Fix: describe the person in words, e.g. \"a man in a black jacket\"")
