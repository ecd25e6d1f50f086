"""Atomic file writes and content hashes.

Every output of the pipeline is written to a temporary name in the same
folder and renamed into place, so an interrupted run never leaves a file that
looks finished (Snakemake and users only ever see complete files).

A temporary is named ``.NAME.HOST~PID~RANDOM[SUFFIX].tmp``: the host and process
that write it. A process killed with SIGKILL cannot remove its temporary (a
ViT-B/16 checkpoint leaves ~1 GB), so the next write of the same output removes
the temporaries of that output whose writer is gone: same host, PID not alive.
A live writer's temporary (a concurrent run, or another host on a shared file
system) is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tbps.errors import UserInputError, input_error

log = logging.getLogger(__name__)

# Only [A-Za-z0-9_-]: the name of another output (``NAME.x``) can then never parse as ours.
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def temp_prefix(path: str | os.PathLike) -> str:
    """Start of the name of this process's temporaries for ``path`` (see the module docstring)."""
    return f".{Path(path).name}.{_HOST}~{os.getpid()}~"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` (files or folders) whose writing process is gone.

    Only temporaries named by :func:`temp_prefix` on this host are candidates; a PID that is
    alive (or reused since) keeps its temporary. Returns what was removed.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        host, sep, rest = entry.name[len(prefix):].partition("~")
        pid, sep2, _ = rest.partition("~")
        if not (sep and sep2 and host == _HOST and pid.isdigit()) or _pid_alive(int(pid)):
            continue
        stale = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(stale)
            else:
                stale.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it first
        log.info("removed %s, left by process %s that no longer runs", stale, pid)
        removed.append(stale)
    return removed


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def disk_full_error(path: Path, needed: int | None, cause: BaseException) -> UserInputError | None:
    """A clear error when a failed write is explained by a full disk, else None.

    ``needed`` is the expected size of the file. Writers that hide ``errno`` (torch.save
    reports "basic_ios::clear: iostream error" or "file write failed") are recognised by
    comparing the free space with ``needed``.
    """
    folder = path.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    no_space = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
    short = free is not None and needed is not None and free < needed
    if not (no_space or short):
        return None
    need = f"about {_bytes(needed)}" if needed is not None else "more space"
    have = f"{_bytes(free)} free" if free is not None else "free space unknown"
    return UserInputError(
        f"{path}: cannot write it, the disk holding {folder} is full ({have}; this file needs {need}; "
        f"{type(cause).__name__}: {cause}). Fix: free space there (e.g. old runs under results/ or "
        "checkpoints you no longer need) or write the output to another disk, then rerun the same command"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file is removed if the body raises; a failure explained by a full disk
    becomes a :class:`UserInputError` saying where and how much (``expected_bytes``: the
    size the output will have, when the caller knows it). Stale temporaries of ``path``
    left by killed processes are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):
            full = disk_full_error(path, expected_bytes, e)
            if full is not None:
                raise full from e
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
