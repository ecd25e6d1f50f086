"""Atomic file writes and content hashes.

Every output of the pipeline is written to a temporary name in the same
folder and renamed into place, so an interrupted run never leaves a file that
looks finished (Snakemake and users only ever see complete files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tbps.errors import input_error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file is removed if the body raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_parquet_atomic(df, path: str | os.PathLike) -> None:
    """Write a polars DataFrame (or pyarrow Table) to Parquet atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df if isinstance(df, pa.Table) else df.to_arrow()
    with atomic_path(path, suffix=".parquet") as tmp:
        # Fixed writer settings (no created_by timestamps exist in Parquet) keep outputs byte-stable.
        pq.write_table(table, tmp, compression="zstd")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_parquet_checked(path: str | os.PathLike, what: str, fix: str, required: Iterable[str] = ()):
    """Read a Parquet table another stage wrote, as a polars DataFrame.

    A missing file, bytes that are not Parquet, or a missing ``required`` column raise a
    UserInputError naming the file, the problem and ``fix``; never a reader traceback.
    """
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise input_error(path, f"{what} not found", fix)
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - polars raises several types for non-Parquet bytes
        raise input_error(path, f"not a readable Parquet file ({type(e).__name__}: {e})", fix) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise input_error(path, f"missing column(s) {', '.join(missing)}", fix)
    return df


def read_json_checked(path: str | os.PathLike, what: str, fix: str, required: Iterable[str] = ()) -> dict:
    """Read a JSON object another stage wrote; errors as :func:`read_parquet_checked`."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, f"{what} not found", fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise input_error(path, f"not valid JSON ({e})", fix) from None
    if not isinstance(data, dict):
        raise input_error(path, f"expected a JSON object, found {type(data).__name__}", fix)
    for key in required:
        if key not in data:
            raise input_error(path, f"missing key {key!r}", fix)
    return data
