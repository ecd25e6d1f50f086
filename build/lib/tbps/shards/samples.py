"""The samples of one shard: walking its tar members, with every check and every message.

The one reader of shard contents: the streaming reader (evaluation, search) and the
training index both walk shards with :func:`read_samples`, so a damaged shard gets the
same message in every stage. A shard written by ``tbps shards write`` holds, per sample,
adjacent members ``KEY.jpg|png``, ``KEY.json`` and ``KEY.txt`` with flat names, and ends
with the tar end-of-archive marker. Anything else is refused with a
:class:`~tbps.errors.UserInputError` naming the shard, the sample and how to rewrite it:
a file that is not a tar, an empty or truncated file, a member that is a path
(``../x.jpg``), a link or a folder, a sample without its image or JSON, invalid JSON or
metadata. Members of other types are never read (never unpickled), only counted.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbps.errors import UserInputError
from tbps.shards.layout import ALLOWED_MEMBERS, IMAGE_KEYS, rewrite_hint

log = logging.getLogger(__name__)

_END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE
_TAIL_CHECKED = 1 << 16
"""Bytes after the last member that must be zeros (the end marker and the record padding)."""
_META_TYPES = {"captions": list, "person_id": int, "image_path": str}


def damaged(shard: str | os.PathLike, problem: str, key: str | None = None) -> UserInputError:
    """The error for a shard whose contents cannot be used (the same words in every stage)."""
    where = f"{shard}, sample {key}" if key is not None else str(shard)
    return UserInputError(f"{where}: {problem}. Fix: {rewrite_hint(shard)}")


@dataclass(frozen=True)
class ShardSample:
    key: str
    image_ext: str
    image_offset: int
    """Where the image member's bytes start in the shard file."""
    image_size: int
    meta: dict[str, Any]
    """The decoded JSON member (checked: captions, person_id, image_path)."""
    image: bytes | None = None
    """The image member's bytes (only when read with ``with_images``)."""
    txt: str = ""


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if not member.isfile():
        kind = "folder" if member.isdir() else "link" if member.issym() or member.islnk() else "special file"
        return f"member {name!r} is a {kind}, not a regular file"
    if not name or "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        return f"member name {name!r} is a path, not a plain file name"
    if "." not in name:
        return f"member name {name!r} has no extension"
    return None


def _meta(shard: Path, key: str, data: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(shard, f"the json member is not valid JSON ({e})", key) from None
    if not isinstance(meta, dict):
        raise damaged(shard, f"the json member holds {type(meta).__name__}, not an object", key)
    for field, kind in _META_TYPES.items():
        if field not in meta:
            raise damaged(shard, f"the json member has no {field!r}", key)
        value = meta[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise damaged(shard, f"the json member's {field!r} is {value!r}, not {kind.__name__}", key)
    if not all(isinstance(c, str) for c in meta["captions"]):
        raise damaged(shard, "the json member's 'captions' are not all strings", key)
    return meta


class _Sample:
    """Members of one sample gathered while walking the tar."""

    def __init__(self, key: str):
        self.key = key
        self.image: tuple[str, int, int, bytes | None] | None = None
        self.meta: dict[str, Any] | None = None
        self.txt = ""

    def finished(self, shard: Path) -> ShardSample:
        if self.image is None:
            raise damaged(shard, "has no image member (jpg or png)", self.key)
        if self.meta is None:
            raise damaged(shard, "has no json member (its person id and captions)", self.key)
        ext, offset, size, data = self.image
        return ShardSample(self.key, ext, offset, size, self.meta, data, self.txt)


def read_samples(shard: str | os.PathLike, *, with_images: bool) -> Iterator[ShardSample]:
    """The samples of ``shard`` in file order; image bytes are read only ``with_images``.

    Raises :func:`damaged` errors (see the module docstring); ignored member types are logged.
    """
    shard = Path(shard)
    try:
        size = shard.stat().st_size
        tar = tarfile.open(shard, mode="r:")
    except FileNotFoundError:
        raise damaged(shard, "the shard file is missing") from None
    except (tarfile.TarError, OSError) as e:
        problem = "the file is empty" if shard.is_file() and shard.stat().st_size == 0 else f"not a tar file ({e})"
        raise damaged(shard, problem) from None
    ignored = 0
    with tar:
        current: _Sample | None = None
        seen: set[str] = set()
        try:
            for member in tar:
                problem = _member_problem(member)
                if problem is not None:
                    raise damaged(shard, problem)
                key, _, ext = member.name.partition(".")
                ext = ext.lower()
                if ext not in ALLOWED_MEMBERS:
                    ignored += 1
                    continue
                if current is None or key != current.key:
                    if current is not None:
                        yield current.finished(shard)
                    if key in seen:
                        raise damaged(shard, "its members are not together (or the sample appears twice)", key)
                    seen.add(key)
                    current = _Sample(key)
                if member.offset_data + member.size > size:
                    raise damaged(shard, f"member {member.name!r} is cut off: the file ends at byte {size} "
                                         "(truncated)", key)
                if ext in IMAGE_KEYS:
                    if current.image is not None:
                        raise damaged(shard, "has two image members", key)
                    data = tar.extractfile(member).read() if with_images else None
                    current.image = (ext, member.offset_data, member.size, data)
                elif ext == "json":
                    current.meta = _meta(shard, key, tar.extractfile(member).read())
                elif with_images:  # txt: the captions again, for people reading the tar
                    current.txt = tar.extractfile(member).read().decode("utf-8", errors="replace")
            end = tar.offset
        except (tarfile.TarError, EOFError, OSError) as e:
            raise damaged(shard, f"damaged tar data ({e})") from None
        if current is not None:
            yield current.finished(shard)
    with open(shard, "rb") as f:
        f.seek(end)
        rest = f.read(_TAIL_CHECKED)
    if size - end < _END_OF_ARCHIVE or rest.strip(b"\0"):
        raise damaged(shard, f"the tar data stops at byte {end} without the end-of-archive marker "
                             "(truncated or damaged)")
    if ignored:
        log.warning("%s: ignored %d members of unknown type (never read)", shard, ignored)
