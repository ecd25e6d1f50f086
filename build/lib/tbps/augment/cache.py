"""SQLite cache of augmented captions, so reruns only compute what is new.

An entry is keyed by the SHA-256 of (backend name, backend parameters that
change the output, caption text). The augment stage commits after every batch:
an interrupted run loses at most the batch in flight, and a rerun over more
captions computes only the new ones.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from tbps.errors import input_error

SCHEMA_VERSION = "1"
_QUERY_CHUNK = 500  # well under SQLite's bound-parameter limit


def cache_key(backend: str, params: dict, text: str) -> str:
    blob = json.dumps([backend, params, text], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AugmentCache:
    """Key -> augmented text store; ``path=None`` keeps it in memory (nothing persists)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fix = "delete it or pass another --cache file (it only holds results that can be recomputed)"
        try:
            self._db = sqlite3.connect(self.path or ":memory:", timeout=60)
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, backend TEXT NOT NULL, "
                "source TEXT NOT NULL, result TEXT NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self._db.commit()
            (version,) = self._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        except sqlite3.DatabaseError as e:
            raise input_error(self.path, f"not a usable tbps augmentation cache ({e})", fix) from None
        if version != SCHEMA_VERSION:
            raise input_error(self.path, f"cache schema {version}, this tbps writes {SCHEMA_VERSION}", fix)

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), _QUERY_CHUNK):
            chunk = list(keys[i:i + _QUERY_CHUNK])
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT key, result FROM entries WHERE key IN ({marks})", chunk))
        return found

    def put_many(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """Store (key, backend, source, result) rows and commit."""
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AugmentCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
